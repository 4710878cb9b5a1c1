//! The NIXL backend's control protocol between two agents, sans-IO: the decisions of one
//! connection of either role, with no socket, lock, clock, engine or allocator.
//!
//! The shape is that of a sans-IO protocol machine: the driver (the backend, `nixl/src/remote/`)
//! feeds it what happened — a control frame from the peer, an engine transfer of a part that
//! finished, the application posting or releasing a transfer, time passing (always an argument,
//! a [`Duration`](core::time::Duration) since an origin the driver picks) — and carries out
//! what it answers or hands out: which frame to send, which part to post, which job finished
//! (an Ack and a notification to deliver), which frame closes the connection and why.
//!
//! - here: which frames each role takes ([`inbound`]), a peer's segments checked against our
//!   registrations ([`check_segment`]), the frames that close a conn ([`Violation`]).
//! - [`target`]: the target's jobs in arrival order ([`Jobs`]): WRITEs still landing hold back
//!   the Acks and notifications of everything that arrived after them; which READs are
//!   answered inline; the chunks a refused WRITE's data is dropped in.
//! - [`initiator`]: one posted transfer's parts ([`Flight`]): sent, answered, moved, settled,
//!   and the answers a peer may send about them; which transfers go inline.
//! - [`pace`]: keepalives, stall and stuck-writer detection, with time as an argument.
//! - [`handshake`]: the frames that open a connection, one machine per role
//!   ([`InitiatorHandshake`], [`TargetHandshake`]): what to send next, the peer's frames
//!   checked in order, and what the driver needs to connect the engines.
//!
//! The unit tests drive an initiator and a target against each other in memory (`sim.rs`, a
//! simulated pair also driven by the `control` fuzz target).
//!
//! Storage is the caller's: the parts of a flight are any `[Part]` the caller owns, the jobs
//! of a target any [`JobStore`] (a fixed [`heapless::Deque`] here and in tests; the backend's
//! own deque), so nothing here allocates.
//!
//! Texts (refusals, violations) are the ones the backend logs and reports: their `Display`
//! is the wire's and the log's wording.

use core::fmt;

use crate::span::Span;

use crate::wire::{
    Ack, ErrorMsg, Kind, Message, ReadAnnounce, ReadData, ReadRequest, Segment, WriteAnnounce,
    MAX_ERROR_TEXT,
};

pub mod handshake;
pub mod initiator;
pub mod pace;
pub mod target;

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;

pub use handshake::{HandshakeError, InitiatorHandshake, TargetHandshake, Transmit};
pub use initiator::{Completion, Failure, Flight, Part};
pub use target::{Finished, FixedStore, Job, JobStore, Jobs};

/// The direction of a transfer, as the initiator names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The initiator's bytes go to the target.
    Write,
    /// The target's bytes come to the initiator.
    Read,
}

/// What a target knows of one of its registrations when a peer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionView {
    /// The key the region's token carries.
    pub key: u64,
    /// The registered bytes.
    pub span: Span,
}

impl RegionView {
    /// The view of `len` bytes at `base` under `key`, or `None` when the range would wrap.
    pub const fn new(key: u64, base: u64, len: u64) -> Option<RegionView> {
        match Span::new(base, len) {
            Some(span) => Some(RegionView { key, span }),
            None => None,
        }
    }
}

/// Why a target refuses a segment a peer named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFault {
    /// No registration of ours has that id.
    UnknownRegion,
    /// The key is not the region's.
    WrongKey,
    /// The range does not lie inside the registration (or its end overflows).
    OutOfRange,
}

/// A segment refused: its index in the frame and why. `Display`: "segment {i}: {why}".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRefused {
    /// Index of the segment in its frame.
    pub index: usize,
    /// Why.
    pub fault: SegmentFault,
}

impl fmt::Display for SegmentRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.fault {
            SegmentFault::UnknownRegion => "unknown region",
            SegmentFault::WrongKey => "wrong key",
            SegmentFault::OutOfRange => "range outside the registration",
        };
        write!(f, "segment {}: {why}", self.index)
    }
}

/// Checks segment `index` of a peer's frame against the registration its region id names
/// (`region`: `None` when there is none): the offset of its range inside the region, or the
/// refusal to answer with.
pub fn check_segment(
    index: usize,
    s: &Segment,
    region: Option<RegionView>,
) -> Result<u64, SegmentRefused> {
    let bad = |fault| SegmentRefused { index, fault };
    let r = region.ok_or(bad(SegmentFault::UnknownRegion))?;
    if r.key != s.key() {
        return Err(bad(SegmentFault::WrongKey));
    }
    r.span
        .offset_of(s.addr(), s.len())
        .ok_or(bad(SegmentFault::OutOfRange))
}

/// A frame the protocol does not allow from the peer: the connection closes. `Display` is
/// the reason logged and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// An answer (`Ack`, `ReadData`, `ReadAnnounce`) naming no part we have outstanding.
    UnknownAnswer {
        /// The answer's kind, as logged.
        what: &'static str,
        /// The wire id it named.
        xfer: u64,
    },
    /// A wire id that is not a part of the flight's current post.
    NotCurrent {
        /// The wire id named.
        xfer: u64,
        /// The current post's first wire id.
        first: u64,
        /// One past its last sent part.
        end: u64,
    },
    /// A part answered twice.
    SecondAnswer(u64),
    /// An `Ack` with a status: refusals come as `Error` frames in this wire version.
    NegativeAck {
        /// The status it carried.
        status: i32,
        /// The wire id it named.
        xfer: u64,
    },
    /// A `ReadData` whose length is not the READ's, or for a READ that did not offer inline.
    ReadDataSize {
        /// Bytes it carried.
        len: u64,
        /// Bytes the READ asked for inline (0 when it did not offer).
        want: u64,
        /// Whether the READ offered to take its data inline.
        offered: bool,
    },
    /// A notification longer than we told the peer we take (`Limits`).
    NotifTooLong {
        /// Its length.
        len: usize,
        /// Our limit.
        max: u32,
    },
    /// A frame this role never receives.
    Unexpected {
        /// Its kind.
        kind: Kind,
        /// Whether we are the connection's initiator.
        initiator: bool,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::UnknownAnswer { what, xfer } => write!(f, "{what} for unknown {xfer}"),
            Violation::NotCurrent { xfer, first, end } => write!(
                f,
                "message for transfer {xfer}, which is not a part of the current post \
                 ({first}..{end})"
            ),
            Violation::SecondAnswer(xfer) => write!(f, "second answer to {xfer}"),
            Violation::NegativeAck { status, xfer } => write!(
                f,
                "negative Ack {status} for {xfer}: not this wire version's protocol"
            ),
            Violation::ReadDataSize { len, want, offered } => write!(
                f,
                "ReadData of {len} bytes for {} {want}",
                if offered {
                    "a READ of"
                } else {
                    "a READ that did not offer inline, of"
                }
            ),
            Violation::NotifTooLong { len, max } => write!(
                f,
                "a notification of {len} bytes, above the {max} this agent told the peer it \
                 takes"
            ),
            Violation::Unexpected { kind, initiator } => write!(
                f,
                "unexpected {kind:?} on a {} stream",
                if initiator { "initiator" } else { "target" }
            ),
        }
    }
}

/// Checks a notification's length against what we told the peer we take (`max`).
pub fn check_notif(notif: Option<&[u8]>, max: u32) -> Result<(), Violation> {
    match notif {
        Some(m) if m.len() > max as usize => Err(Violation::NotifTooLong { len: m.len(), max }),
        _ => Ok(()),
    }
}

/// `why` cut to the longest prefix an `Error` frame carries, at a character boundary.
pub fn error_text(why: &str) -> &str {
    let mut n = why.len().min(MAX_ERROR_TEXT);
    while !why.is_char_boundary(n) {
        n -= 1;
    }
    &why[..n]
}

/// Whether the `n`-th refusal (from 1) from one peer gets a log line: the first few, then
/// only powers of two, so a peer that keeps sending refused requests cannot flood the log
/// (10,000 refusals: 15 lines).
pub fn log_refusal(n: u64) -> bool {
    n <= 4 || n.is_power_of_two()
}

/// A frame from the peer, sorted by what the receiving role does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Target: a WRITE carrying its data.
    InlineWrite(WriteAnnounce<'a>),
    /// Target: a WRITE whose data comes through the data session.
    Write(WriteAnnounce<'a>),
    /// Target: a READ.
    Read(ReadRequest<'a>),
    /// Target: a notification of the peer's application.
    Notif(&'a [u8]),
    /// Initiator: a WRITE part landed.
    Ack(Ack),
    /// Initiator: a READ part's data, inline.
    ReadData(ReadData<'a>),
    /// Initiator: a READ part's data is coming through the data session.
    ReadAnnounce(ReadAnnounce),
    /// Initiator: a part refused (or, naming none of ours, an answer to a released one).
    Error(ErrorMsg<'a>),
    /// Initiator: the target holds us back and is alive.
    Keepalive,
}

/// What a role does with a frame from its peer: the frames it takes, with notifications
/// checked against what we told the peer we take (`max_notif`); any other frame (or a
/// notification too long) is a violation and closes the conn.
pub fn inbound(
    initiator: bool,
    msg: Message<'_>,
    max_notif: u32,
) -> Result<Inbound<'_>, Violation> {
    Ok(match (initiator, msg) {
        (false, Message::WriteAnnounce(w)) => {
            check_notif(w.notif, max_notif)?;
            if w.data.is_some() {
                Inbound::InlineWrite(w)
            } else {
                Inbound::Write(w)
            }
        }
        (false, Message::ReadRequest(r)) => Inbound::Read(r),
        (false, Message::Notif(n)) => {
            check_notif(Some(n.msg), max_notif)?;
            Inbound::Notif(n.msg)
        }
        (true, Message::Ack(a)) => Inbound::Ack(a),
        (true, Message::ReadData(d)) => Inbound::ReadData(d),
        (true, Message::ReadAnnounce(r)) => Inbound::ReadAnnounce(r),
        (true, Message::Error(e)) => Inbound::Error(e),
        (true, Message::Keepalive(_)) => Inbound::Keepalive,
        (_, m) => {
            return Err(Violation::Unexpected {
                kind: m.kind(),
                initiator,
            })
        }
    })
}
