//! Time in the control protocol, as an argument: how often a target holding its peer back says
//! it is alive, when a connection waiting on its peer has stalled, and when a peer that takes
//! none of our frames is given up on. `now` is a [`Duration`] since an origin the driver picks
//! (the same one for every call on a connection).

use core::time::Duration;

/// Longest gap between keepalives of a conn holding its peer back.
pub const KEEPALIVE_MAX: Duration = Duration::from_millis(100);

/// How often a conn holding its peer back says it is alive: a quarter of our own timeout, and
/// at least every 100 ms, which is well inside any timeout a peer is likely to run with (it
/// uses its own `timeout_ms`, which we do not know).
pub fn keepalive_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), KEEPALIVE_MAX)
}

/// Whether a conn holding its peer back (`held`) sends a `Keepalive` now: its last frame went
/// out at `last_frame` or longer ago than [`keepalive_every`].
pub fn keepalive_due(held: bool, last_frame: Duration, now: Duration, timeout: Duration) -> bool {
    held && now.saturating_sub(last_frame) >= keepalive_every(timeout)
}

/// Whether a peer has shown no sign of life (a frame read, bytes moved or written) since
/// `heard` for longer than `timeout`.
pub fn silent(heard: Duration, now: Duration, timeout: Duration) -> bool {
    now.saturating_sub(heard) > timeout
}

/// Whether our unsent frames have waited since `stuck` (the socket took none of them) and the
/// peer has been silent since `heard`, both for longer than `timeout`: the conn is given up.
pub fn stuck(stuck: Option<Duration>, heard: Duration, now: Duration, timeout: Duration) -> bool {
    stuck.is_some_and(|t| now.saturating_sub(t) > timeout) && silent(heard, now, timeout)
}

/// A target's stall clock: since when it has been waiting on the peer (a partial frame
/// buffered, or a job in flight) with nothing moving. Past the timeout the conn is closed, so
/// a peer that announces data it never sends, or stops mid-frame, cannot hold it forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    since: Option<Duration>,
}

/// What one pass over a target conn came to, for [`Stall::handle_pass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Nothing waits on the peer, or something moved: the clock stops.
    Moving,
    /// Something waits on the peer and nothing moved.
    Waiting,
}

impl Stall {
    /// A stopped clock.
    pub const fn new() -> Self {
        Stall { since: None }
    }

    /// Since when the conn has waited with nothing moving (`None`: it has not).
    pub fn since(&self) -> Option<Duration> {
        self.since
    }

    /// One pass at `now`: `true` when the conn has waited with nothing moving for longer than
    /// `timeout` (the driver closes it). The first waiting pass starts the clock.
    pub fn handle_pass(&mut self, pass: Pass, now: Duration, timeout: Duration) -> bool {
        match (pass, self.since) {
            (Pass::Moving, _) => {
                self.since = None;
                false
            }
            (Pass::Waiting, None) => {
                self.since = Some(now);
                false
            }
            (Pass::Waiting, Some(t)) => now.saturating_sub(t) > timeout,
        }
    }
}

/// What a target pass is, from what it saw: `partial` (a partial frame buffered), `jobs`
/// (jobs in flight or waiting), `moved` (the session or jobs moved), `framed` (whole frames
/// handled). Frames are progress for a partial frame, not for jobs waiting on announced data
/// (frames must not keep a stalled WRITE's conn open).
pub fn target_pass(partial: bool, jobs: bool, moved: bool, framed: bool) -> Pass {
    let waiting = partial || jobs;
    let progress = moved || (framed && !jobs);
    if progress || !waiting {
        Pass::Moving
    } else {
        Pass::Waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn keepalives_come_well_inside_the_timeout() {
        assert_eq!(keepalive_every(Duration::from_secs(10)), KEEPALIVE_MAX);
        assert_eq!(keepalive_every(200 * MS), 50 * MS);
        assert_eq!(keepalive_every(MS), MS);
        let t = Duration::from_secs(1);
        assert!(
            !keepalive_due(false, Duration::ZERO, 500 * MS, t),
            "only while holding"
        );
        assert!(!keepalive_due(true, Duration::ZERO, 99 * MS, t));
        assert!(keepalive_due(true, Duration::ZERO, 100 * MS, t));
    }

    #[test]
    fn a_stall_needs_waiting_passes_for_longer_than_the_timeout() {
        let t = 10 * MS;
        let mut s = Stall::new();
        assert!(!s.handle_pass(Pass::Waiting, 5 * MS, t));
        assert_eq!(s.since(), Some(5 * MS));
        assert!(
            !s.handle_pass(Pass::Waiting, 15 * MS, t),
            "exactly the timeout"
        );
        assert!(s.handle_pass(Pass::Waiting, 16 * MS, t));
        // Anything moving restarts it.
        assert!(!s.handle_pass(Pass::Moving, 17 * MS, t));
        assert_eq!(s.since(), None);
        assert!(!s.handle_pass(Pass::Waiting, 30 * MS, t));
        assert!(!s.handle_pass(Pass::Waiting, 40 * MS, t));
    }

    #[test]
    fn frames_are_progress_for_a_partial_frame_not_for_jobs() {
        assert_eq!(target_pass(true, false, false, true), Pass::Moving);
        assert_eq!(target_pass(false, true, false, true), Pass::Waiting);
        assert_eq!(target_pass(false, true, true, false), Pass::Moving);
        assert_eq!(target_pass(false, false, false, false), Pass::Moving);
        assert_eq!(target_pass(true, false, false, false), Pass::Waiting);
    }

    #[test]
    fn a_writer_is_stuck_only_while_the_peer_is_silent_too() {
        let t = 10 * MS;
        assert!(!stuck(None, Duration::ZERO, 100 * MS, t));
        assert!(stuck(Some(Duration::ZERO), Duration::ZERO, 11 * MS, t));
        assert!(
            !stuck(Some(Duration::ZERO), 5 * MS, 11 * MS, t),
            "heard from lately"
        );
        assert!(!stuck(Some(2 * MS), Duration::ZERO, 11 * MS, t));
        assert!(silent(Duration::ZERO, 11 * MS, t) && !silent(Duration::ZERO, 10 * MS, t));
    }
}
