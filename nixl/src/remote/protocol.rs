//! Protocol rules that need no socket, lock or engine: how a part of a transfer stands, the order
//! in which a target finishes its jobs, where a peer's segment lies in our registrations, what an
//! `Error` frame carries, and the pace of keepalives and of refusal logging.

use std::time::Duration;

use tcpx::engine::XferId;
use tcpx_core::wire::{self, Segment as WireSegment};

use crate::error::Status;
use crate::registry::MemTable;

/// How often a conn holding its peer back says it is alive: a quarter of our own timeout, and
/// at least every 100 ms, which is well inside any timeout a peer is likely to run with (it
/// uses its own `timeout_ms`, which we do not know).
pub(super) fn keepalive_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), KEEPALIVE_MAX)
}

/// Longest gap between keepalives of a conn holding its peer back.
const KEEPALIVE_MAX: Duration = Duration::from_millis(100);

/// The arrival order of the first WRITE whose data is still landing, among jobs given as
/// [`Job::state`](super::target::Job::state): it holds back the Acks of the WRITEs after it.
/// READ data we still send holds back nothing.
pub(super) fn first_landing(jobs: impl Iterator<Item = (u64, bool, bool)>) -> Option<u64> {
    jobs.filter(|&(_, moving, write)| moving && write)
        .map(|(seq, ..)| seq)
        .min()
}

/// Whether a job ([`Job::state`](super::target::Job::state)) may finish now: its transfer is
/// done and no WRITE that arrived before it is still landing.
pub(super) fn may_finish((seq, moving, _): (u64, bool, bool), first_landing: Option<u64>) -> bool {
    !moving && first_landing.is_none_or(|f| seq < f)
}

/// Where wire segment `i` of a peer's request lies in our registrations: (md, offset inside
/// it, CUDA device of the memory or `None` for host memory), or the refusal to answer with.
pub(super) fn locate(
    table: &MemTable,
    i: usize,
    s: &WireSegment,
) -> Result<(usize, u64, Option<u32>), (Status, String)> {
    let bad = |why: &str| (Status::InvalidParam, format!("segment {i}: {why}"));
    let md = usize::try_from(s.region()).map_err(|_| bad("unknown region"))?;
    let r = table.local(md).map_err(|_| bad("unknown region"))?;
    if r.key != s.key() {
        return Err(bad("wrong key"));
    }
    if !r.span.contains(s.addr(), s.len()) {
        return Err(bad("range outside the registration"));
    }
    Ok((md, s.addr() - r.span.base, r.cuda_device()))
}

/// `why` cut to the longest prefix an `Error` frame carries, at a character boundary.
pub(super) fn error_text(why: &str) -> &str {
    let mut n = why.len().min(wire::MAX_ERROR_TEXT);
    while !why.is_char_boundary(n) {
        n -= 1;
    }
    &why[..n]
}

/// Whether the `n`-th refusal (from 1) from one peer gets a log line: the first few, then
/// only powers of two, so a peer that keeps sending refused requests cannot flood the log
/// (10,000 refusals: 15 lines).
pub(super) fn log_refusal(n: u64) -> bool {
    n <= 4 || n.is_power_of_two()
}

/// Where one part of a posted transfer stands.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Part {
    /// Our engine transfer for it (WRITE: the sends, posted with the announce; READ: the
    /// receives, posted when the target's `ReadAnnounce` arrives).
    pub(super) engine: Option<XferId>,
    /// Our side is done with the data: the engine transfer finished (or was abandoned), the
    /// inline data was copied, or there is none to move (a refused READ).
    pub(super) moved: bool,
    /// The target answered (Ack, ReadAnnounce, ReadData or Error).
    pub(super) answered: bool,
}

impl Part {
    pub(super) fn settled(&self) -> bool {
        self.moved && self.answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_cut_at_a_character_boundary() {
        assert_eq!(error_text("short"), "short");
        let ascii = "x".repeat(wire::MAX_ERROR_TEXT + 10);
        assert_eq!(error_text(&ascii).len(), wire::MAX_ERROR_TEXT);
        // A two-byte character straddling the limit is left out whole.
        let straddle = format!("{}é", "x".repeat(wire::MAX_ERROR_TEXT - 1));
        assert_eq!(error_text(&straddle), &straddle[..wire::MAX_ERROR_TEXT - 1]);
    }

    #[test]
    fn refusal_logging_is_bounded() {
        let lines = |n: u64| (1..=n).filter(|&k| log_refusal(k)).count();
        assert_eq!(lines(4), 4, "the first refusals are all logged");
        assert_eq!(lines(10_000), 15);
        assert_eq!(lines(1 << 20), 4 + 18, "logarithmic in the count");
        assert!(log_refusal(1024) && !log_refusal(1025));
    }

    #[test]
    fn acks_wait_only_for_earlier_writes_still_landing() {
        // (arrival order, still moving, is a WRITE)
        let read_moving = (0, true, false);
        let write_landing = (1, true, true);
        let write_done = |seq| (seq, false, true);
        // A READ still sending holds back nothing.
        let f = first_landing([read_moving, write_done(2)].into_iter());
        assert_eq!(f, None);
        assert!(may_finish(write_done(2), f));
        // A WRITE still landing holds back the WRITEs after it, not those before it.
        let f =
            first_landing([read_moving, write_landing, write_done(2), write_done(0)].into_iter());
        assert_eq!(f, Some(1));
        assert!(!may_finish(write_done(2), f));
        assert!(may_finish(write_done(0), f));
        assert!(
            !may_finish(write_landing, f),
            "a job still moving never finishes"
        );
        // The earliest of several.
        assert_eq!(
            first_landing([(7, true, true), (4, true, true), (9, true, true)].into_iter()),
            Some(4)
        );
    }

    #[test]
    fn keepalives_come_well_inside_the_timeout() {
        assert_eq!(keepalive_every(Duration::from_secs(10)), KEEPALIVE_MAX);
        assert_eq!(
            keepalive_every(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(
            keepalive_every(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }
}
