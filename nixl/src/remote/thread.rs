//! The backend thread: accepts peers, services every conn, and naps or sleeps on the control
//! sockets when idle.

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::conn::Conn;
use super::{lock, Shared, NAP, TIMER_SLACK_NS};

/// The backend thread: accepts peers, services every conn, backs off when idle.
pub(super) fn run(shared: &Arc<Shared>, listener: &TcpListener) {
    // SAFETY: PR_SET_TIMERSLACK takes a value and touches no memory; on failure the default
    // slack stays (naps end up to 50 µs late).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
    let mut idle = 0u32;
    // Reused every pass, so a busy backend thread does not allocate per pass.
    let mut conns: Vec<Arc<Conn>> = Vec::new();
    // Per conn of `conns`: left to `checkXfer` this pass.
    let mut skipped: Vec<bool> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut moved = false;
        // Only a listener with a peer waiting is asked: `accept` on an empty one makes and
        // frees a socket file in the kernel before it finds nobody (measured: nearly half of
        // a busy backend thread's CPU).
        match pending(listener).then(|| listener.accept()).transpose() {
            Ok(Some((s, _))) => {
                moved = true;
                let sh = shared.clone();
                // The handshake blocks until the peer's engine connects (bounded by the
                // timeout), so it must not stall the other conns.
                let spawned = std::thread::Builder::new()
                    .name("tcpx-nixl-accept".into())
                    .spawn(move || {
                        if let Err(e) = sh.accept(s) {
                            crate::log!(Warn, "accepting a peer: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    crate::log!(Warn, "accepting a peer: {e}");
                }
            }
            Ok(None) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => crate::log!(Warn, "control accept: {e}"),
        }
        conns.clear();
        conns.extend(lock(&shared.conns).iter().cloned());
        skipped.clear();
        let now = shared.now_ns();
        let mut holding = false;
        // The soonest a conn left to `checkXfer` comes back to this thread.
        let mut recheck: Option<Duration> = None;
        for c in &conns {
            // An initiator conn the application is polling: `checkXfer` reads its answers
            // and drives its session, so this thread neither services it nor wakes for it;
            // once the application stops checking it, this thread takes it back.
            if let Some(left) = shared.left_to_checks(c, now) {
                skipped.push(true);
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
                continue;
            }
            skipped.push(false);
            moved |= shared.service(c);
            holding |= lock(&c.rx).held;
        }
        if conns.iter().any(|c| c.dead().is_some()) {
            for c in conns.iter().filter(|c| c.dead().is_some()) {
                shared.release_reservations(c);
                shared.close(c);
            }
            lock(&shared.conns).retain(|c| c.dead().is_none());
            lock(&shared.outgoing).retain(|_, c| c.dead().is_none());
        }
        if moved {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            // Spin briefly for latency. Then, with transfers in flight either way (engine
            // progress is invisible to us), nap briefly; with none, sleep on the control
            // sockets so an idle agent costs no CPU. Either way an announce or answer wakes
            // the thread at once. A conn holding a frame back is retried (and keeps its peer
            // informed) every millisecond; its socket is left out of the poll, as it is
            // readable. So are conns left to `checkXfer`, until they come back.
            if idle < 64 {
                std::thread::yield_now();
            } else {
                let busy = conns.iter().zip(&skipped).any(|(c, &s)| {
                    !s && (!lock(&c.jobs).is_empty()
                        || !lock(&c.out).parts.is_empty()
                        || lock(&c.tx).pending())
                });
                let limit = if busy {
                    NAP
                } else if holding {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(10)
                };
                let limit = recheck.map_or(limit, |r| r.min(limit));
                wait_readable(listener, &conns, &skipped, &mut fds, limit);
            }
        }
    }
}

/// Whether a peer waits on the listener (a poll that returns at once).
fn pending(listener: &TcpListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor the borrowed listener keeps open; no wait.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    // A failed poll asks `accept`, which says why.
    n != 0 && (n < 0 || fd.revents != 0)
}

/// Blocks until the listener or a control stream is readable, or `limit` passes. Streams
/// holding a frame back (it waits for room; they stay readable) and those `skip` marks are
/// left out.
fn wait_readable(
    listener: &TcpListener,
    conns: &[Arc<Conn>],
    skip: &[bool],
    fds: &mut Vec<libc::pollfd>,
    limit: Duration,
) {
    use std::os::fd::AsRawFd;
    fds.clear();
    fds.push(libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    for (c, _) in conns
        .iter()
        .zip(skip)
        .filter(|(c, &s)| !s && c.dead().is_none() && !lock(&c.rx).held)
    {
        fds.push(libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` holds valid pollfd entries for descriptors that stay open during the
    // call (the listener and the conns are borrowed); `ts` outlives it; no signal mask.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Instant;

    #[test]
    fn pending_says_whether_a_peer_waits_to_be_accepted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        assert!(!pending(&listener));
        let _peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending(&listener) {
            assert!(
                Instant::now() < deadline,
                "a connected peer never showed as pending"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        listener.accept().unwrap();
        assert!(!pending(&listener));
    }
}
