//! Inline transfers: small READs answered with one `ReadData` and small WRITEs carrying their data
//! in the announce, copied to and from our memory by the CPU or a device's copier.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use tcpx::engine::Copier;
use tcpx_core::nixl::target::answers_inline;
use tcpx_core::wire::{Segment as WireSegment, WriteAnnounce};

use crate::error::{Error, Status};
use crate::registry::MemTable;
use crate::xfer::Segment;

use super::conn::{Conn, Handled};
use super::protocol::locate;
use super::{lock, Shared};

/// How an inline transfer reaches one of our ranges.
enum InlineEnd {
    /// Host memory: the CPU copies.
    Host,
    /// Device memory: its device's copier copies.
    Device(Arc<Copier>),
    /// Device memory of a device that could not be opened.
    NoCopier(u32),
}

impl InlineEnd {
    /// The copier that reaches range `i` (`None`: host memory); a device without one is an
    /// error (checked before any copy, so only a changed table could get here).
    fn copier(self, i: usize) -> Result<Option<Arc<Copier>>, (Status, String)> {
        match self {
            InlineEnd::Host => Ok(None),
            InlineEnd::Device(c) => Ok(Some(c)),
            InlineEnd::NoCopier(d) => {
                Err((Status::Backend, format!("segment {i}: device {d} is gone")))
            }
        }
    }
}

/// Copies `dst.len()` bytes of our memory at `addr` into `dst`: host memory with the CPU,
/// device memory with its device's `copier`.
///
/// # Safety
/// `addr..addr + dst.len()` is live memory of ours (host memory when `copier` is `None`, else
/// of the copier's device) that nothing writes meanwhile.
unsafe fn read_ours(copier: Option<&Copier>, addr: u64, dst: &mut [u8]) -> tcpx::Result<()> {
    match copier {
        // SAFETY: per the contract; `dst` is ours and does not overlap it.
        None => unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len());
            Ok(())
        },
        // SAFETY: per the contract.
        Some(c) => unsafe { c.to_host(addr, dst) },
    }
}

/// Copies `src` into our memory at `addr`, as [`read_ours`] the other way.
///
/// # Safety
/// `addr..addr + src.len()` is live memory of ours (as in [`read_ours`]) that nothing else
/// uses meanwhile.
pub(super) unsafe fn write_ours(
    copier: Option<&Copier>,
    addr: u64,
    src: &[u8],
) -> tcpx::Result<()> {
    match copier {
        // SAFETY: per the contract; `src` is ours and does not overlap it.
        None => unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len());
            Ok(())
        },
        // SAFETY: per the contract.
        Some(c) => unsafe { c.to_device(addr, src) },
    }
}

/// Copies our segments' bytes, in order, into `out`: an inline WRITE's data.
pub(super) fn gather_local(
    segs: &[Segment],
    copiers: &[Option<Arc<Copier>>],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let total = segs.iter().map(|s| s.len as usize).sum();
    out.clear();
    out.resize(total, 0);
    let mut at = 0;
    for (s, copier) in segs.iter().zip(copiers) {
        let len = s.len as usize;
        // SAFETY: `plan` put the range inside one of our registrations (device memory of the
        // copier's device when there is one), which NIXL's contract keeps allocated while the
        // transfer is posted.
        unsafe { read_ours(copier.as_deref(), s.local, &mut out[at..at + len]) }
            .map_err(Error::Engine)?;
        at += len;
    }
    Ok(())
}

impl Shared {
    /// An inline WRITE arrived. Room for its notif and a place among the conn's jobs come
    /// first (without them it waits: `Ok(Held)`), then its data is copied in and it joins the
    /// jobs as one whose transfer is done (`finish_jobs` acknowledges it after the WRITEs that
    /// arrived before it, in this same pass when none is still landing). A refusal (`Err`)
    /// wrote nothing.
    pub(super) fn take_inline_write(
        &self,
        c: &Conn,
        w: &WriteAnnounce<'_>,
    ) -> Result<Handled, (Status, String)> {
        if self.jobs_full(c) || !self.reserve(w.notif) {
            return Ok(Handled::Held);
        }
        if let Err(e) = self.scatter_inline(w.segments, w.data.unwrap_or(&[])) {
            self.unreserve(w.notif);
            return Err(e);
        }
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
        // The one allocation serving a WRITE: the notification the app receives.
        let _ = lock(&c.jobs).handle_write(None, w.xfer, w.notif.map(<[u8]>::to_vec));
        Ok(Handled::Done)
    }

    /// An inline WRITE: checks every range against our registrations, then copies the data
    /// in. A range we refuse, or a device copy that fails, is an `Err`; nothing was written
    /// for a refusal.
    fn scatter_inline(&self, segs: &[WireSegment], data: &[u8]) -> Result<(), (Status, String)> {
        let no_copier = self.inline_walk(segs, |i, s, span, copier| {
            // SAFETY: `locate` put the range inside a live registration of ours (device memory
            // of the copier's device when there is one), which the table's read lock keeps
            // registered until the copy is done; the frame buffer does not overlap it.
            unsafe { write_ours(copier, s.addr(), &data[span]) }.map_err(|e| {
                (
                    Status::Backend,
                    format!("segment {i}: writing device memory: {e}"),
                )
            })
        })?;
        match no_copier {
            Some((i, d)) => Err((
                Status::NotSupported,
                format!("segment {i}: device {d} cannot take inline data here"),
            )),
            None => Ok(()),
        }
    }

    /// Walks our ranges `segs`, packed back to back in an inline frame's data, under the
    /// table's read lock (so no registration goes away meanwhile): checks every range first —
    /// a refused one is an `Err`; device memory whose device has no copier stops the walk with
    /// `Ok(Some((range, device)))` before anything moved — then hands `copy` each range's
    /// index, segment, span of the packed data and copier (`None`: host memory).
    fn inline_walk(
        &self,
        segs: &[WireSegment],
        mut copy: impl FnMut(
            usize,
            &WireSegment,
            Range<usize>,
            Option<&Copier>,
        ) -> Result<(), (Status, String)>,
    ) -> Result<Option<(usize, u32)>, (Status, String)> {
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        for (i, s) in segs.iter().enumerate() {
            if let InlineEnd::NoCopier(d) = self.inline_end(&table, i, s)? {
                return Ok(Some((i, d)));
            }
        }
        let mut at = 0;
        for (i, s) in segs.iter().enumerate() {
            let len = s.len() as usize;
            let copier = self.inline_end(&table, i, s)?.copier(i)?;
            copy(i, s, at..at + len, copier.as_deref())?;
            at += len;
        }
        Ok(None)
    }

    /// Checks our range `i` against our registrations (a range we refuse is an `Err`) and says
    /// how an inline copy reaches it.
    fn inline_end(
        &self,
        table: &MemTable,
        i: usize,
        s: &WireSegment,
    ) -> Result<InlineEnd, (Status, String)> {
        let (_, _, device) = locate(table, i, s)?;
        Ok(match device {
            None => InlineEnd::Host,
            Some(d) => self
                .copier(d)
                .map_or(InlineEnd::NoCopier(d), InlineEnd::Device),
        })
    }

    /// A READ that offered to take its data inline: when the ranges are all our host memory
    /// or device memory with a copier, and no more than `inline_read_bytes`, gathers them
    /// into the conn's inline buffer (under the table's read lock, so no registration goes
    /// away meanwhile) and says so; `Ok(false)`: answer the usual way. A range we refuse is
    /// an `Err` either way.
    pub(super) fn gather_inline(
        &self,
        c: &Conn,
        segs: &[WireSegment],
    ) -> Result<bool, (Status, String)> {
        let total = segs
            .iter()
            .map(WireSegment::len)
            .fold(0u64, u64::saturating_add);
        if !answers_inline(self.inline_read_bytes, total) {
            return Ok(false);
        }
        let mut buf = lock(&c.inline_buf);
        buf.clear();
        buf.resize(total as usize, 0);
        let no_copier = self.inline_walk(segs, |i, s, span, copier| {
            // SAFETY: `locate` put the range inside a live registration of ours (device memory
            // of the copier's device when there is one), which the table's read lock keeps
            // registered until the copy is done.
            unsafe { read_ours(copier, s.addr(), &mut buf[span]) }.map_err(|e| {
                (
                    Status::Backend,
                    format!("segment {i}: reading device memory: {e}"),
                )
            })
        })?;
        Ok(no_copier.is_none())
    }
}
