//! Direct requests: a lone small host request whose data-socket bytes the calling thread moves
//! itself (`Config::direct_bytes`), handed to the helper when a request comes behind it.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sockets::Core;
use crate::error::Result;
use crate::sys::{self, Sock};
use crate::worker::{Job, JobKind};

/// Most bytes a direct request moves per call: a direct send's first piece (the helper sends
/// the rest), a direct receive's read per `irecv`/`test`.
const DIRECT_PIECE: usize = 64 << 10;

/// Requests (sends and receives) this process has started on the calling thread
/// (`Config::direct_bytes`) instead of handing them to a helper, and how many of those were
/// handed to a helper part way.
static DIRECT_REQUESTS: AtomicU64 = AtomicU64::new(0);
static DIRECT_HANDOFFS: AtomicU64 = AtomicU64::new(0);

/// How many requests went direct, sends and receives together, and how many of them a later
/// request made the calling thread hand to a helper part way: tests use it to tell the paths
/// apart (all deliver the same bytes).
pub fn direct_requests() -> (u64, u64) {
    (
        DIRECT_REQUESTS.load(Ordering::Relaxed),
        DIRECT_HANDOFFS.load(Ordering::Relaxed),
    )
}

/// A one-chunk host request whose data-socket bytes the calling thread moves itself: a receive
/// in progress (its slot's `remaining` stays 1 until it is done), or the rest of a send or
/// receive being handed to the helper.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    /// Request slot.
    idx: usize,
    /// Its buffer and size.
    base: *mut u8,
    size: usize,
    /// Bytes moved so far.
    off: usize,
    /// Its chunk's comm-lifetime index (the data socket is `chunk % nsocks`).
    chunk: u64,
}

impl Core {
    /// Whether a host request of `size` bytes may be moved by the calling thread now
    /// (`Config::direct_bytes`): small enough, and `idle`: every earlier request of the comm
    /// tested (not in the middle of a stream, where the helpers keep the sockets busier than
    /// the calling thread could). A tested request's helpers are done with their sockets, so
    /// none touches a data socket until a job is queued, which hands a direct receive over
    /// first.
    pub(super) fn direct_ok(&self, size: usize, idle: bool) -> bool {
        debug_assert!(
            !idle
                || self
                    .shared
                    .remaining
                    .iter()
                    .all(|r| r.load(Ordering::Acquire) == 0),
            "an idle comm has no helper work"
        );
        size > 0
            && size <= self.direct_bytes
            // One chunk of the comm's (the sender's) chunk size, which a receiver's own
            // `direct_bytes` does not bound: one socket carries all of it.
            && size <= self.shared.chunk_bytes
            && idle
    }

    /// Starts receive `idx` direct on its chunk's data socket.
    pub(super) fn start_direct(
        &self,
        idx: usize,
        base: *mut u8,
        size: usize,
        chunk: u64,
    ) -> Direct {
        self.shared.remaining[idx].store(1, Ordering::Relaxed);
        DIRECT_REQUESTS.fetch_add(1, Ordering::Relaxed);
        Direct {
            idx,
            base,
            size,
            off: 0,
            chunk,
        }
    }

    fn data_fd(&self, chunk: u64) -> i32 {
        self.data[(chunk % self.data.len() as u64) as usize].as_raw_fd()
    }

    /// Sends request `idx` direct: writes up to [`DIRECT_PIECE`] bytes that its chunk's data
    /// socket takes now, without blocking, and gives any rest to the socket's helper at once,
    /// so the request never waits for a later call, and the calling thread is soon free to
    /// post the requests behind it (writing a whole 256 KiB request first made a batch of 16
    /// such requests 30 % slower through NIXL on the H200; one piece did not). Returns whether
    /// it is complete.
    pub(super) fn send_direct(
        &self,
        idx: usize,
        base: *mut u8,
        size: usize,
        chunk: u64,
    ) -> Result<bool> {
        let fd = self.data_fd(chunk);
        // SAFETY: `base..base+size` is the caller's send buffer, live during the call.
        let piece = unsafe { core::slice::from_raw_parts(base, size.min(DIRECT_PIECE)) };
        let mut off = 0;
        while off < piece.len() {
            match sys::send_nb(fd, &[IoSlice::new(&piece[off..])], Sock::Data)? {
                Some(n) => off += n,
                None => break,
            }
        }
        DIRECT_REQUESTS.fetch_add(1, Ordering::Relaxed);
        if off == size {
            self.shared.remaining[idx].store(0, Ordering::Relaxed);
            return Ok(true);
        }
        self.hand_off_direct(
            Direct {
                idx,
                base,
                size,
                off,
                chunk,
            },
            JobKind::Send,
        )?;
        Ok(false)
    }

    /// Reads up to [`DIRECT_PIECE`] bytes of the direct receive `*d` that its data socket has
    /// now, without blocking; clears it and completes its request when all bytes are in.
    /// Returns true when a whole piece came and more is due (the caller checks the control
    /// socket, whose next header would hand the rest to the helper, before reading on).
    pub(super) fn advance_direct(&self, d: &mut Option<Direct>) -> Result<bool> {
        let Some(cur) = d.as_mut() else {
            return Ok(false);
        };
        let fd = self.data_fd(cur.chunk);
        let end = cur.size.min(cur.off + DIRECT_PIECE);
        while cur.off < end {
            // SAFETY: `base..base+size` is the request's live buffer (NCCL's contract) until
            // the request completes, which only this function reports.
            let dst =
                unsafe { core::slice::from_raw_parts_mut(cur.base.add(cur.off), end - cur.off) };
            match sys::recv_nb(fd, dst, Sock::Data)? {
                Some(n) => cur.off += n,
                None => return Ok(false),
            }
        }
        if cur.off < cur.size {
            return Ok(true);
        }
        self.shared.remaining[cur.idx].store(0, Ordering::Release);
        *d = None;
        Ok(false)
    }

    /// Gives the rest of direct request `cur` to its socket's helper, ahead of any job queued
    /// after this, so the socket's bytes stay in request order.
    pub(super) fn hand_off_direct(&self, cur: Direct, kind: JobKind) -> Result<()> {
        DIRECT_HANDOFFS.fetch_add(1, Ordering::Relaxed);
        // The chunk was counted when the request started; its remainder is that chunk's
        // tail (one chunk, so `dispatch` puts it on the chunk's socket).
        self.shared.dispatch(Job {
            kind,
            req: cur.idx,
            // SAFETY: off < size, inside the request's buffer.
            base: unsafe { cur.base.add(cur.off) },
            size: cur.size - cur.off,
            chunk_base: cur.chunk,
        })?;
        Ok(())
    }
}
