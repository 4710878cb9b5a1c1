//! Memory metadata the backend hands NIXL as `nixlBackendMD*`: local registrations, aliases of
//! them for transfers to ourselves, and regions other agents published.
//!
//! NIXL never dereferences these pointers, so each is just a non-zero id into one table; a
//! stale or foreign id is an argument error, never a wild pointer.

use std::collections::HashMap;

use tcpx_core::mem::MemKind;
pub use tcpx_core::span::Span;
use tcpx_core::wire::RegionToken;

use crate::error::{Arg, Error};

/// NIXL's `nixl_mem_t` value for host memory.
pub const MEM_DRAM: i32 = 0;
/// NIXL's `nixl_mem_t` value for GPU memory.
pub const MEM_VRAM: i32 = 1;

/// `DRAM` or `VRAM`: a memory kind as NIXL's users spell it.
pub fn mem_name(kind: MemKind) -> &'static str {
    match kind {
        MemKind::Host => "DRAM",
        MemKind::Device => "VRAM",
    }
}

/// The value NIXL holds as an `nixlBackendMD*`: never 0.
pub type MdId = usize;

/// One local registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The registered bytes.
    pub span: Span,
    /// Host or GPU memory.
    pub mem: MemKind,
    /// CUDA device for VRAM (NIXL's `devId`).
    pub device: u32,
    /// Random key peers must present when naming this region.
    pub key: u64,
}

impl Region {
    /// The CUDA device of the registered memory; `None` for host memory.
    pub fn cuda_device(&self) -> Option<u32> {
        (self.mem == MemKind::Device).then_some(self.device)
    }
}

#[derive(Debug, Clone)]
enum Md {
    /// A local registration (`registerMem`), and how many `registerMem` calls made it: an
    /// identical registration (same range, memory and device) is the same one, so it has one
    /// token however many times it is registered, and lives until the last `deregisterMem`.
    Local(Region, usize),
    /// `loadLocalMD` of a local registration: the target side of transfers to ourselves.
    SelfAlias(MdId),
    /// A region another agent published (`loadRemoteMD`).
    Remote { agent: String, token: RegionToken },
}

/// All metadata ids handed out and not yet released.
#[derive(Debug, Default)]
pub struct MemTable {
    last: MdId,
    mds: HashMap<MdId, Md>,
    /// Local registrations by (base, length, memory, device), to find an identical one.
    by_range: HashMap<(u64, u64, MemKind, u32), MdId>,
}

/// Where the target side of one descriptor lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Our own registration (transfers to ourselves).
    Own(Region),
    /// Another agent's published region.
    Peer(RegionToken),
}

impl MemTable {
    fn insert(&mut self, md: Md) -> MdId {
        self.last += 1;
        self.mds.insert(self.last, md);
        self.last
    }

    fn get(&self, id: MdId) -> Result<&Md, Error> {
        self.mds.get(&id).ok_or_else(|| {
            Error::invalid(Arg::Metadata, format!("unknown metadata handle {id:#x}"))
        })
    }

    /// Records a local registration: `region` under a new id, or the id of an identical one
    /// already recorded (its key is kept), counted once more.
    pub fn register(&mut self, region: Region) -> MdId {
        if let Some(id) = self.find(&region) {
            if let Some(Md::Local(_, n)) = self.mds.get_mut(&id) {
                *n += 1;
            }
            return id;
        }
        let id = self.insert(Md::Local(region, 1));
        self.by_range.insert(Self::range_key(&region), id);
        id
    }

    fn range_key(r: &Region) -> (u64, u64, MemKind, u32) {
        (r.span.base(), r.span.len(), r.mem, r.device)
    }

    /// The id an identical registration of `region` (same range, memory and device) already
    /// has, if any.
    pub fn find(&self, region: &Region) -> Option<MdId> {
        self.by_range.get(&Self::range_key(region)).copied()
    }

    /// Drops one count of a local registration; `Some` with the region once the last is gone
    /// (aliases of it stop resolving then), `None` while identical registrations remain.
    pub fn deregister(&mut self, id: MdId) -> Result<Option<Region>, Error> {
        match self.mds.get_mut(&id) {
            Some(Md::Local(_, n)) if *n > 1 => {
                *n -= 1;
                Ok(None)
            }
            Some(Md::Local(r, _)) => {
                let r = *r;
                self.mds.remove(&id);
                self.by_range.remove(&Self::range_key(&r));
                Ok(Some(r))
            }
            None => Err(Error::invalid(
                Arg::Metadata,
                format!("unknown metadata handle {id:#x}"),
            )),
            _ => Err(Error::invalid(
                Arg::Metadata,
                format!("{id:#x} is not a local registration"),
            )),
        }
    }

    /// A local registration by id.
    pub fn local(&self, id: MdId) -> Result<&Region, Error> {
        match self.get(id)? {
            Md::Local(r, _) => Ok(r),
            _ => Err(Error::invalid(
                Arg::Metadata,
                format!("{id:#x} is not a local registration"),
            )),
        }
    }

    /// Every local registration (new peer sessions register them all).
    pub fn locals(&self) -> impl Iterator<Item = (MdId, &Region)> {
        self.mds.iter().filter_map(|(id, md)| match md {
            Md::Local(r, _) => Some((*id, r)),
            _ => None,
        })
    }

    /// The token peers use to name local registration `id`.
    pub fn token(&self, id: MdId) -> Result<RegionToken, Error> {
        let r = self.local(id)?;
        Ok(RegionToken {
            base: r.span.base(),
            len: r.span.len(),
            mem: r.mem,
            device: r.device,
            region: id as u64,
            key: r.key,
        })
    }

    /// Makes a target-side handle for a local registration (transfers to ourselves).
    pub fn load_local(&mut self, id: MdId) -> Result<MdId, Error> {
        self.local(id)?;
        Ok(self.insert(Md::SelfAlias(id)))
    }

    /// Records a region `agent` published.
    pub fn load_remote(&mut self, agent: &str, token: RegionToken) -> MdId {
        self.insert(Md::Remote {
            agent: agent.to_owned(),
            token,
        })
    }

    /// Releases a handle from [`MemTable::load_local`] or [`MemTable::load_remote`].
    pub fn unload(&mut self, id: MdId) -> Result<(), Error> {
        match self.get(id)? {
            Md::SelfAlias(_) | Md::Remote { .. } => {
                self.mds.remove(&id);
                Ok(())
            }
            Md::Local(..) => Err(Error::invalid(
                Arg::Metadata,
                format!("{id:#x} is a local registration: deregister it instead"),
            )),
        }
    }

    /// Resolves the target-side handle of a descriptor addressed to `agent`; `own` is our
    /// agent name.
    pub fn target(&self, id: MdId, agent: &str, own: &str) -> Result<Target, Error> {
        match (self.get(id)?, agent == own) {
            (Md::SelfAlias(local), true) => Ok(Target::Own(*self.local(*local).map_err(|_| {
                Error::invalid(Arg::Metadata, format!("{id:#x}: its registration is gone"))
            })?)),
            (Md::Local(r, _), true) => Ok(Target::Own(*r)),
            (
                Md::Remote {
                    agent: owner,
                    token,
                },
                false,
            ) if owner == agent => Ok(Target::Peer(*token)),
            _ => Err(Error::invalid(
                Arg::Metadata,
                format!("{id:#x} does not name memory of agent {agent:?}"),
            )),
        }
    }

    /// Number of live handles (for tests and leak checks).
    pub fn len(&self) -> usize {
        self.mds.len()
    }

    /// Whether no handle is live.
    pub fn is_empty(&self) -> bool {
        self.mds.is_empty()
    }
}

/// A 64-bit key from the OS's random source (`getrandom(2)`: no file to open on every
/// registration), falling back to std's randomly seeded hasher.
pub fn random_key() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        return u64::from_le_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(base: u64, len: u64) -> Region {
        Region {
            span: Span::new(base, len).unwrap(),
            mem: MemKind::Host,
            device: 0,
            key: 7,
        }
    }

    #[test]
    fn token_carries_the_registration() {
        let mut t = MemTable::default();
        let id = t.register(region(0x1000, 64));
        let tok = t.token(id).unwrap();
        assert_eq!((tok.base, tok.len, tok.key), (0x1000, 64, 7));
        assert_eq!(tok.region, id as u64);
    }

    #[test]
    fn identical_registrations_share_one_id_until_the_last_goes() {
        let mut t = MemTable::default();
        let a = t.register(region(0x1000, 64));
        let again = Region {
            key: 99,
            ..region(0x1000, 64)
        };
        assert_eq!(t.find(&again), Some(a));
        let b = t.register(again);
        assert_eq!(
            a, b,
            "the same range, memory and device: the same registration"
        );
        assert_eq!(t.token(b).unwrap().key, 7, "the first key stays");
        // A different length, memory or device is another registration.
        let c = t.register(region(0x1000, 65));
        assert_ne!(c, a);
        let vram = t.register(Region {
            mem: MemKind::Device,
            ..region(0x1000, 64)
        });
        assert_ne!(vram, a);
        assert_eq!(t.deregister(a).unwrap(), None, "one registration remains");
        assert!(t.token(a).is_ok());
        assert_eq!(t.deregister(b).unwrap(), Some(region(0x1000, 64)));
        assert!(t.token(a).is_err());
        assert!(t.deregister(a).is_err());
    }

    #[test]
    fn aliases_resolve_only_for_self_and_die_with_the_registration() {
        let mut t = MemTable::default();
        let id = t.register(region(0x1000, 64));
        let alias = t.load_local(id).unwrap();
        assert_eq!(
            t.target(alias, "me", "me").unwrap(),
            Target::Own(region(0x1000, 64))
        );
        assert!(t.target(alias, "peer", "me").is_err());
        t.deregister(id).unwrap();
        assert!(t.target(alias, "me", "me").is_err());
        t.unload(alias).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn remote_regions_resolve_only_for_their_owner() {
        let mut t = MemTable::default();
        let tok = RegionToken {
            base: 0x2000,
            len: 8,
            mem: MemKind::Host,
            device: 0,
            region: 3,
            key: 9,
        };
        let id = t.load_remote("b", tok);
        assert_eq!(t.target(id, "b", "me").unwrap(), Target::Peer(tok));
        assert!(t.target(id, "c", "me").is_err());
        assert!(
            t.deregister(id).is_err(),
            "remote handles are unloaded, not deregistered"
        );
        t.unload(id).unwrap();
        assert!(t.unload(id).is_err());
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(random_key(), random_key());
    }
}
