//! Registered memory: regions named by [`MemId`], each registered on every comm.
//!
//! A region is registered once per channel on both the send and the receive comm, because
//! ncclNet memory handles belong to one comm. Chunks hold a count on their region so a
//! region with bytes in flight cannot be deregistered underneath the plugin.

use crate::error::{Error, Result};
use crate::net::MemReg;

/// A registered region, valid until `deregister`. Stale ids are detected (generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl MemId {
    /// A single integer for C callers.
    pub fn to_raw(self) -> u64 {
        (u64::from(self.gen) << 32) | u64::from(self.index)
    }

    /// Inverse of [`MemId::to_raw`].
    pub fn from_raw(raw: u64) -> MemId {
        MemId {
            index: raw as u32,
            gen: (raw >> 32) as u32,
        }
    }
}

/// Where a region lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    Host,
    Cuda { device: i32 },
}

pub(crate) struct Region {
    pub base: *mut u8,
    pub len: u64,
    pub memory: Memory,
    /// (send comm registration, recv comm registration) per channel.
    pub regs: Vec<(MemReg, MemReg)>,
    /// Chunks posted on this region and not yet retired.
    pub in_flight: u64,
}

// SAFETY: `base` is an address the caller promised stays valid while registered; the
// region is only touched by the session that owns it, on whichever thread holds it.
unsafe impl Send for Region {}

pub(crate) struct Slot {
    gen: u32,
    region: Option<Region>,
}

/// All regions of a session. Lookups are by index + generation, no hashing.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Slot>,
}

impl Registry {
    pub fn insert(&mut self, region: Region) -> MemId {
        if let Some((i, s)) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.region.is_none())
        {
            s.gen = s.gen.wrapping_add(1);
            s.region = Some(region);
            return MemId {
                index: i as u32,
                gen: s.gen,
            };
        }
        self.slots.push(Slot {
            gen: 0,
            region: Some(region),
        });
        MemId {
            index: (self.slots.len() - 1) as u32,
            gen: 0,
        }
    }

    pub fn get(&self, id: MemId) -> Result<&Region> {
        match self.slots.get(id.index as usize) {
            Some(Slot {
                gen,
                region: Some(r),
            }) if *gen == id.gen => Ok(r),
            _ => Err(Error::Invalid("unknown or deregistered MemId")),
        }
    }

    /// By index alone, for chunks that already validated their id at post time.
    pub fn by_index(&mut self, index: u32) -> &mut Region {
        self.slots[index as usize]
            .region
            .as_mut()
            .expect("a region with chunks in flight cannot be removed")
    }

    pub fn remove(&mut self, id: MemId) -> Result<Region> {
        let r = self.get(id)?;
        if r.in_flight > 0 {
            return Err(Error::Invalid(
                "deregister: the region still has chunks in flight",
            ));
        }
        Ok(self.slots[id.index as usize]
            .region
            .take()
            .expect("checked above"))
    }
}
