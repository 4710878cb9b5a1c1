//! Transfers: what a caller posts, how it is tracked, and what `poll` reports.
//!
//! A transfer's segments are copied into a preallocated slot at `post`, planned by
//! `tcpx_core::plan`, and fed chunk by chunk into the channel windows. Slots are reused;
//! ids carry a generation so a stale id is an error, never another transfer.

use tcpx_core::id::{GenId, Generation};
use tcpx_core::plan::{self, Cursor, PlanConfig};

use super::registry::MemId;
use crate::error::{Error, Result};

/// Which way the bytes go. Both peers post the mirror image: a `Send` here, a `Recv` there,
/// with the same segment lengths in the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Send,
    Recv,
}

/// One contiguous piece of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment {
    /// Local region.
    pub mem: MemId,
    /// Offset inside the local region.
    pub offset: u64,
    /// Offset at the peer (carried for the caller's bookkeeping; matching is by order).
    pub remote_offset: u64,
    /// Bytes; zero-length segments move nothing.
    pub len: u64,
}

/// Marker of transfer ids ([`XferId`]).
#[derive(Debug)]
pub enum Xfer {}

/// A posted transfer. Copy it freely; it names a slot of its session (stale ids are detected:
/// generation); `to_raw`/`from_raw` give the single integer C callers hold.
pub type XferId = GenId<Xfer>;

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Chunks are still moving.
    Pending { bytes_done: u64, bytes_total: u64 },
    /// Every byte is in place (for receives: in the destination memory).
    Done { bytes: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Free,
    Active,
    Done,
    Failed,
}

/// A transfer slot, allocated once with room for `max_segments`.
pub(crate) struct Slot {
    pub gen: Generation,
    pub state: State,
    /// Released by the caller while in flight: free it when the last chunk retires.
    pub abandoned: bool,
    pub dir: Direction,
    pub segments: Vec<plan::Segment>,
    /// Region index (already validated) of each segment.
    pub regions: Vec<u32>,
    pub plan_cfg: PlanConfig,
    /// Next chunk to post, per channel; `None` once that channel has posted all its chunks.
    pub cursors: Vec<Option<Cursor>>,
    pub chunks_left: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

impl Slot {
    pub fn new(max_segments: usize, channels: usize) -> Slot {
        Slot {
            gen: Generation::default(),
            state: State::Free,
            abandoned: false,
            dir: Direction::Send,
            segments: Vec::with_capacity(max_segments),
            regions: Vec::with_capacity(max_segments),
            plan_cfg: PlanConfig::new(plan::DEFAULT_CHUNK_BYTES, 1),
            cursors: vec![None; channels],
            chunks_left: 0,
            bytes_total: 0,
            bytes_done: 0,
        }
    }

    pub fn progress(&self) -> Result<Progress> {
        match self.state {
            State::Active => Ok(Progress::Pending {
                bytes_done: self.bytes_done,
                bytes_total: self.bytes_total,
            }),
            State::Done => Ok(Progress::Done {
                bytes: self.bytes_total,
            }),
            State::Failed => Err(Error::Invalid(
                "transfer failed: the session broke (see the session error)",
            )),
            State::Free => Err(Error::Invalid("unknown or released transfer id")),
        }
    }
}
