//! Transfer requests: checking a NIXL descriptor-list pair against the metadata table, turning
//! it into segments, and moving bytes for transfers an agent makes to itself.
//!
//! Every byte a transfer touches is checked to lie inside a registration (ours) or a published
//! region (the peer's) before anything moves; nothing is ever truncated to fit.

use std::sync::Arc;

use tcpx::engine::Copier;
use tcpx_core::wire::RegionToken;

use crate::error::{Arg, Error};
use crate::registry::{MdId, MemTable, Span, Target};

/// One descriptor as the shim flattens it (C `TcpxDesc`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Start address (in the owner's address space).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// NIXL device id (CUDA ordinal for VRAM).
    pub dev_id: u64,
    /// Metadata handle the descriptor was matched to; 0 if none.
    pub md: MdId,
}

/// Direction of a transfer, from the initiator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Remote -> local.
    Read,
    /// Local -> remote.
    Write,
}

impl Op {
    /// Decodes NIXL's `nixl_xfer_op_t`.
    pub fn from_raw(v: i32) -> Result<Self, Error> {
        match v {
            0 => Ok(Op::Read),
            1 => Ok(Op::Write),
            other => Err(Error::invalid(
                Arg::Op,
                format!("{other} is neither READ nor WRITE"),
            )),
        }
    }
}

/// Where the other end of a segment lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Far {
    /// Our own memory at `addr`: host memory, or memory of CUDA device `dev`.
    Own { addr: u64, dev: Option<u32> },
    /// A peer's region: its token (for region id and key) and the address inside it.
    Peer {
        /// The region's published token.
        token: RegionToken,
        /// Start address in the peer's address space.
        addr: u64,
    },
}

/// One validated piece of a transfer: `len` bytes between local `local` and `far`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Start address in our memory.
    pub local: u64,
    /// The local registration `local` lies in (the engine registers per registration).
    pub md: MdId,
    /// `local`'s offset inside that registration.
    pub offset: u64,
    /// `local` is memory of this CUDA device; `None`: host memory.
    pub dev: Option<u32>,
    /// The other end.
    pub far: Far,
    /// Bytes.
    pub len: u64,
}

impl Segment {
    /// The CUDA device whose copier moves this segment of a transfer to ourselves (the local
    /// end's, else the far end's); `None` between host memories.
    pub fn own_device(&self) -> Option<u32> {
        match self.far {
            Far::Own { dev, .. } => self.dev.or(dev),
            Far::Peer { .. } => self.dev,
        }
    }
}

/// Checks a descriptor-list pair and resolves it into segments.
///
/// Lists must be non-empty, of equal count and pairwise equal lengths; each local descriptor
/// must lie in the local registration it names, each remote descriptor in the region (ours for
/// `agent == own`, else `agent`'s) its handle names.
pub fn plan(
    table: &MemTable,
    own: &str,
    agent: &str,
    local: &[Desc],
    remote: &[Desc],
) -> Result<Vec<Segment>, Error> {
    let mut out = Vec::with_capacity(local.len());
    visit(table, own, agent, local, remote, |s| {
        out.push(s);
        Ok(())
    })?;
    Ok(out)
}

/// [`plan`] without the `Vec`: checks the pair like [`plan`] and hands each segment to `each`
/// in order, stopping at the first error (`each`'s or the check's). Allocates nothing unless
/// `each` does or the check fails, so `postXfer` can revalidate on every repost.
///
/// Segments before a bad descriptor have already been handed out: a caller that must not act
/// on a partly valid request (the copy in `postXfer`) runs one checking pass first.
pub fn visit(
    table: &MemTable,
    own: &str,
    agent: &str,
    local: &[Desc],
    remote: &[Desc],
    mut each: impl FnMut(Segment) -> Result<(), Error>,
) -> Result<(), Error> {
    if local.is_empty() {
        return Err(Error::invalid(Arg::Descs, "empty descriptor list"));
    }
    if local.len() != remote.len() {
        return Err(Error::invalid(
            Arg::Descs,
            format!(
                "{} local vs {} remote descriptors",
                local.len(),
                remote.len()
            ),
        ));
    }
    for (i, (l, r)) in local.iter().zip(remote).enumerate() {
        if l.len != r.len {
            return Err(Error::invalid(
                Arg::Descs,
                format!("descriptor {i}: local length {} vs remote {}", l.len, r.len),
            ));
        }
        let region = table.local(l.md)?;
        if !region.span.contains(l.addr, l.len) {
            return Err(Error::OutOfRange {
                index: i,
                addr: l.addr,
                len: l.len,
            });
        }
        let (span, far) = match table.target(r.md, agent, own)? {
            Target::Own(region) => (
                region.span,
                Far::Own {
                    addr: r.addr,
                    dev: region.cuda_device(),
                },
            ),
            Target::Peer(token) => (
                // A parsed token's range never wraps (`RegionToken::parse`); one that did
                // would hold no range.
                Span::new(token.base, token.len).ok_or(Error::OutOfRange {
                    index: i,
                    addr: r.addr,
                    len: r.len,
                })?,
                Far::Peer {
                    token,
                    addr: r.addr,
                },
            ),
        };
        if !span.contains(r.addr, r.len) {
            return Err(Error::OutOfRange {
                index: i,
                addr: r.addr,
                len: r.len,
            });
        }
        each(Segment {
            local: l.addr,
            md: l.md,
            offset: l.addr - region.span.base(),
            dev: region.cuda_device(),
            far,
            len: l.len,
        })?;
    }
    Ok(())
}

/// Joins each segment to the one before it when it continues it at both ends (same local
/// registration, next local address; same peer region and key, next far address), and drops
/// segments of no bytes: fewer segments, the same bytes in the same order. Both ends of a
/// joined segment stay inside one registration, so the result is as valid as the input.
/// Transfers to ourselves are copied descriptor by descriptor and not joined.
pub fn merge(segments: Vec<Segment>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
    for s in segments.into_iter().filter(|s| s.len > 0) {
        match out.last_mut() {
            Some(last) if continues(last, &s) => last.len += s.len,
            _ => out.push(s),
        }
    }
    out
}

/// Whether `b` starts where `a` ends, at both ends of a transfer to a peer.
fn continues(a: &Segment, b: &Segment) -> bool {
    let far = match (a.far, b.far) {
        (
            Far::Peer {
                token: ta,
                addr: aa,
            },
            Far::Peer {
                token: tb,
                addr: ab,
            },
        ) => ta == tb && aa.checked_add(a.len) == Some(ab),
        _ => false,
    };
    far && a.md == b.md && a.dev == b.dev && a.local.checked_add(a.len) == Some(b.local)
}

/// The segment ranges of the parts a transfer of `count` segments travels in: `per` segments
/// each (the last one the rest), in order.
pub fn parts(count: usize, per: usize) -> Vec<std::ops::Range<usize>> {
    (0..count)
        .step_by(per.max(1))
        .map(|start| start..(start + per.max(1)).min(count))
        .collect()
}

/// Revalidates a transfer to ourselves against `table` and performs it, allocating nothing:
/// every descriptor is checked (a first pass) before any byte moves (a second pass over the
/// same, unchanged table). Device memory at either end is copied with the copier `copier`
/// returns for its device (a first-pass error when there is none).
///
/// # Safety
/// The caller holds `table` (a read guard) for the duration of the call, so no registration
/// can be dropped meanwhile; NIXL's contract keeps registered memory allocated while
/// registered.
pub unsafe fn revalidate_and_copy_own(
    table: &MemTable,
    own: &str,
    op: Op,
    local: &[Desc],
    remote: &[Desc],
    copier: impl Fn(u32) -> Option<Arc<Copier>>,
) -> Result<(), Error> {
    visit(table, own, own, local, remote, |s| {
        let (far, len) = own_range(&s)?;
        if own_copier(&s, &copier)?.is_some() && overlap(s.local, far, len) {
            return Err(Error::invalid(
                Arg::Descs,
                "overlapping source and destination in device memory",
            ));
        }
        Ok(())
    })?;
    visit(table, own, own, local, remote, |s| {
        // SAFETY: `s` was just checked (first pass) to lie inside live registrations of
        // `table`, which the caller holds.
        unsafe { copy_segment(op, &s, own_copier(&s, &copier)?.as_deref()) }
    })
}

/// Whether `len` bytes at `a` and at `b` share a byte.
fn overlap(a: u64, b: u64, len: usize) -> bool {
    len > 0 && a < b.saturating_add(len as u64) && b < a.saturating_add(len as u64)
}

/// A self-transfer segment's far address and length as a copy needs them.
fn own_range(s: &Segment) -> Result<(u64, usize), Error> {
    let Far::Own { addr, .. } = s.far else {
        return Err(Error::invalid(
            Arg::Descs,
            "peer segment in a transfer to ourselves",
        ));
    };
    let len = usize::try_from(s.len)
        .map_err(|_| Error::invalid(Arg::Descs, "length exceeds the address space"))?;
    Ok((addr, len))
}

/// The copier a self-transfer segment needs: `None` between host memories, else the one of the
/// device at either end (the local one first); an error when that device has none.
fn own_copier(
    s: &Segment,
    copier: &impl Fn(u32) -> Option<Arc<Copier>>,
) -> Result<Option<Arc<Copier>>, Error> {
    match s.own_device() {
        None => Ok(None),
        Some(d) => copier(d)
            .map(Some)
            .ok_or(Error::UnsupportedMem(crate::registry::MEM_VRAM)),
    }
}

/// Copies one [`Far::Own`] segment: between host memories with the CPU, else with `copier`.
///
/// # Safety
/// Both of the segment's ranges are live registered memory for the duration of the call (host
/// memory when `copier` is `None`, else memory the copier's device can reach, and then not
/// overlapping: [`revalidate_and_copy_own`] checks that before anything moves).
unsafe fn copy_segment(op: Op, s: &Segment, copier: Option<&Copier>) -> Result<(), Error> {
    let (far, len) = own_range(s)?;
    let (src, dst) = match op {
        Op::Write => (s.local, far),
        Op::Read => (far, s.local),
    };
    match copier {
        // SAFETY: the caller guarantees both ranges are live registered host memory; `copy`
        // (memmove) is correct even when source and destination overlap.
        None => unsafe { std::ptr::copy(src as usize as *const u8, dst as usize as *mut u8, len) },
        // SAFETY: the caller guarantees both ranges are live registered memory, one of them
        // of the copier's device, not overlapping.
        Some(c) => unsafe { c.copy(dst, src, len) }.map_err(Error::Engine)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Region;
    use tcpx_core::mem::MemKind;

    fn table_with(base: u64, len: u64) -> (MemTable, MdId, MdId) {
        let mut t = MemTable::default();
        let id = t.register(Region {
            span: Span::new(base, len).unwrap(),
            mem: MemKind::Host,
            device: 0,
            key: 1,
        });
        let alias = t.load_local(id).unwrap();
        (t, id, alias)
    }

    fn d(addr: u64, len: u64, md: MdId) -> Desc {
        Desc {
            addr,
            len,
            dev_id: 0,
            md,
        }
    }

    #[test]
    fn self_transfer_plans_and_checks_every_rule() {
        let (t, id, alias) = table_with(0x1000, 0x100);
        let segs = plan(
            &t,
            "me",
            "me",
            &[d(0x1000, 16, id)],
            &[d(0x1080, 16, alias)],
        )
        .unwrap();
        assert_eq!(
            segs,
            [Segment {
                local: 0x1000,
                md: id,
                offset: 0,
                dev: None,
                far: Far::Own {
                    addr: 0x1080,
                    dev: None
                },
                len: 16
            }]
        );
        let err = |r: Result<Vec<Segment>, Error>| r.unwrap_err().status();
        use crate::error::Status::InvalidParam;
        assert_eq!(err(plan(&t, "me", "me", &[], &[])), InvalidParam);
        assert_eq!(
            err(plan(&t, "me", "me", &[d(0x1000, 16, id)], &[])),
            InvalidParam
        );
        assert_eq!(
            err(plan(
                &t,
                "me",
                "me",
                &[d(0x1000, 16, id)],
                &[d(0x1080, 8, alias)]
            )),
            InvalidParam
        );
        assert_eq!(
            err(plan(
                &t,
                "me",
                "me",
                &[d(0x10f8, 16, id)],
                &[d(0x1000, 16, alias)]
            )),
            InvalidParam
        );
        assert_eq!(
            err(plan(
                &t,
                "me",
                "me",
                &[d(0x1000, 16, id)],
                &[d(0x10f8, 16, alias)]
            )),
            InvalidParam
        );
        assert_eq!(
            err(plan(
                &t,
                "me",
                "me",
                &[d(0x1000, 16, 999)],
                &[d(0x1000, 16, alias)]
            )),
            InvalidParam
        );
    }

    #[test]
    fn copy_own_moves_bytes_in_the_requested_direction() {
        let mut buf = [0u8; 64];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8;
        }
        let base = buf.as_mut_ptr() as u64;
        let seg = Segment {
            local: base,
            md: 1,
            offset: 0,
            dev: None,
            far: Far::Own {
                addr: base + 32,
                dev: None,
            },
            len: 8,
        };
        // SAFETY: both ranges lie inside `buf`, which outlives the calls.
        unsafe { copy_segment(Op::Write, &seg, None).unwrap() };
        assert_eq!(&buf[32..40], &[0, 1, 2, 3, 4, 5, 6, 7]);
        buf[32..40].copy_from_slice(&[9; 8]);
        // SAFETY: as above.
        unsafe { copy_segment(Op::Read, &seg, None).unwrap() };
        assert_eq!(&buf[0..8], &[9; 8]);
    }

    fn peer_seg(local: u64, md: MdId, region: u64, addr: u64, len: u64) -> Segment {
        Segment {
            local,
            md,
            offset: local - 0x1000,
            dev: None,
            far: Far::Peer {
                token: RegionToken {
                    base: 0x9000,
                    len: 1 << 20,
                    mem: tcpx_core::mem::MemKind::Host,
                    device: 0,
                    region,
                    key: 5,
                },
                addr,
            },
            len,
        }
    }

    #[test]
    fn neighbours_at_both_ends_are_joined_and_nothing_else() {
        let segs = vec![
            peer_seg(0x1000, 1, 7, 0x9000, 16),
            peer_seg(0x1010, 1, 7, 0x9010, 16), // continues both ends: joined
            peer_seg(0x1020, 1, 7, 0x9040, 16), // far side jumps
            peer_seg(0x1030, 2, 7, 0x9050, 16), // another local registration
            peer_seg(0x1040, 2, 8, 0x9060, 16), // another peer region
            peer_seg(0x1050, 2, 8, 0x9070, 0),  // no bytes: dropped
            peer_seg(0x1050, 2, 8, 0x9070, 8),  // continues the one before the empty one
            peer_seg(0x1070, 2, 8, 0x9078, 8),  // local side jumps
        ];
        let m = merge(segs);
        let lens: Vec<u64> = m.iter().map(|s| s.len).collect();
        assert_eq!(lens, [32, 16, 16, 24, 8]);
        assert_eq!(
            (m[0].local, m[3].local, m[4].local),
            (0x1000, 0x1040, 0x1070)
        );
        assert_eq!(m.iter().map(|s| s.len).sum::<u64>(), 16 * 5 + 8 + 8);
        assert!(merge(vec![peer_seg(0x1000, 1, 7, 0x9000, 0)]).is_empty());
    }

    #[test]
    fn parts_cover_the_list_in_order() {
        assert_eq!(parts(0, 1024), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(parts(1, 1024), vec![std::ops::Range { start: 0, end: 1 }]);
        assert_eq!(parts(2048, 1024), [0..1024, 1024..2048]);
        assert_eq!(parts(2500, 1024), [0..1024, 1024..2048, 2048..2500]);
    }

    #[test]
    fn op_decodes_only_nixl_values() {
        assert_eq!(Op::from_raw(0).unwrap(), Op::Read);
        assert_eq!(Op::from_raw(1).unwrap(), Op::Write);
        assert!(Op::from_raw(2).is_err());
    }
}
