//! One side of a measurement: its session, registered buffers and segments, how many
//! iterations a size gets, and the progress line.

use std::io::IsTerminal;
use std::thread;
use std::time::{Duration, Instant};

use tcpx::engine::{MemId, Memory, Progress, Segment, Session};
use tcpx::XferId;

use super::buffers::{Buf, Gpu};
use super::report::{secs, size_label};
use super::{err, BenchResult};

/// Adaptive iteration count aims at this much measured time per size.
pub(super) const TARGET_TIME: Duration = Duration::from_millis(750);
pub(super) const MIN_ITERS: usize = 5;
pub(super) const MAX_ITERS: usize = 100_000;
/// `--tail`: iterations per size up to `TAIL_MAX_BYTES` (p99.9 then rests on 10 samples
/// beyond it), and above it (p99.9 is then the largest but one).
pub(super) const TAIL_ITERS: usize = 10_000;
pub(super) const TAIL_ITERS_LARGE: usize = 1_000;
pub(super) const TAIL_MAX_BYTES: u64 = 1 << 20;
/// Warm-up traffic per size (TCP windows, page faults, caches), spread over 2..=200 iterations.
pub(super) const WARMUP_BYTES: u64 = 64 << 20;
/// A single transfer taking longer than this means the peer or the session is stuck.
pub(super) const MIN_TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// CPU time of this process, all threads (`CLOCK_PROCESS_CPUTIME_ID`): the plugin's helper
/// threads are part of what a transfer costs.
pub(super) fn process_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout); the clock id is the
    // Linux constant, which every Linux libc supports.
    if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// One side's registered memory and the segments of the current size.
pub(super) struct Endpoint {
    // Declared first so it drops (closing comms) before the memory it registered.
    pub(super) session: Session,
    pub(super) buf: Buf,
    pub(super) mem: MemId,
    pub(super) segs: Vec<Segment>,
    /// Two-host control messages: `[0, CTRL)` outgoing, `[CTRL, 2*CTRL)` incoming.
    pub(super) ctrl: Vec<u8>,
    pub(super) ctrl_mem: MemId,
}

pub(super) const CTRL: usize = 128;

impl Endpoint {
    /// `len` bytes of host memory, or device memory on `gpu`.
    pub(super) fn new(
        mut session: Session,
        len: u64,
        segments: usize,
        gpu: Option<&Gpu>,
    ) -> BenchResult<Endpoint> {
        let len = usize::try_from(len).map_err(|_| "size does not fit in memory".to_string())?;
        let mut buf = Buf::new(len, gpu)?;
        let mut ctrl = vec![0u8; 2 * CTRL];
        let (ptr, memory) = match &mut buf {
            Buf::Host(v) => (v.as_mut_ptr().cast(), Memory::Host),
            Buf::Cuda(d) => (
                d.ptr() as usize as *mut std::ffi::c_void,
                Memory::Cuda {
                    device: gpu.expect("device buffers come from a GPU").device,
                },
            ),
        };
        // SAFETY: both buffers live in the Endpoint, are never resized, and are deregistered
        // in `close` before they drop (on error paths the session drops first, closing comms).
        let (mem, ctrl_mem) = unsafe {
            (
                session
                    .register(ptr, len, memory)
                    .map_err(err("register"))?,
                session
                    .register(ctrl.as_mut_ptr().cast(), ctrl.len(), Memory::Host)
                    .map_err(err("register"))?,
            )
        };
        Ok(Endpoint {
            session,
            buf,
            mem,
            segs: Vec::with_capacity(segments),
            ctrl,
            ctrl_mem,
        })
    }

    /// `size` bytes in `n` equal segments (the last takes the remainder).
    pub(super) fn set_size(&mut self, size: u64, n: usize) {
        self.segs.clear();
        let each = size / n as u64;
        for k in 0..n as u64 {
            let offset = k * each;
            let len = if k + 1 == n as u64 {
                size - offset
            } else {
                each
            };
            self.segs.push(Segment {
                mem: self.mem,
                offset,
                remote_offset: offset,
                len,
            });
        }
    }

    pub(super) fn transfer_timeout(&self) -> Duration {
        self.session.config().timeout.max(MIN_TRANSFER_TIMEOUT)
    }

    /// Deregisters the buffers; the session stays usable.
    pub(super) fn close(mut self) -> BenchResult<Session> {
        self.session
            .deregister(self.mem)
            .map_err(err("deregister"))?;
        self.session
            .deregister(self.ctrl_mem)
            .map_err(err("deregister"))?;
        Ok(self.session)
    }
}

/// Drives `s` until every id is done; never allocates.
pub(super) fn wait_all(s: &mut Session, ids: &[XferId], timeout: Duration) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let moved = s.progress().map_err(err("progress"))?;
        let mut done = true;
        for &id in ids {
            done &= matches!(s.status(id), Ok(Progress::Done { .. }));
        }
        if done {
            for &id in ids {
                s.release(id).map_err(err("release"))?;
            }
            return Ok(());
        }
        if !moved {
            if Instant::now() >= deadline {
                return Err("a transfer did not complete in time (is the peer alive?)".into());
            }
            // The plugin's helper threads do the copying; give them the core.
            thread::yield_now();
        }
    }
}

/// How many iterations a size gets: `--iters`, else adaptive (at least the `--tail` minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Count {
    pub(super) fixed: Option<usize>,
    pub(super) tail: bool,
}

impl Count {
    /// Fixed warm-up by size (both peers must agree without talking).
    pub(super) fn warmups(self, size: u64) -> usize {
        if self.fixed.is_some() {
            return 1;
        }
        (WARMUP_BYTES / size).clamp(2, 200) as usize
    }

    /// Enough measured iterations for about `TARGET_TIME`; with `--tail`, at least enough
    /// for p99.9 to rest on ten samples beyond it (up to `TAIL_MAX_BYTES`) or on one.
    pub(super) fn iters(self, size: u64, warm: &[Duration]) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let min = match (self.tail, size <= TAIL_MAX_BYTES) {
            (false, _) => MIN_ITERS,
            (true, true) => TAIL_ITERS,
            (true, false) => TAIL_ITERS_LARGE,
        };
        let mean = secs(warm.iter().sum::<Duration>()) / warm.len().max(1) as f64;
        ((TARGET_TIME.as_secs_f64() / mean).ceil() as usize).clamp(min, MAX_ITERS)
    }
}

/// `\r[3/7] 4 MiB …` on stderr, only when someone watches it.
pub(super) struct Ticker {
    pub(super) tty: bool,
    pub(super) total: usize,
}

impl Ticker {
    pub(super) fn new(total: usize) -> Ticker {
        Ticker {
            tty: std::io::stderr().is_terminal(),
            total,
        }
    }

    pub(super) fn show(&self, i: usize, size: u64, what: &str) {
        if self.tty {
            eprint!(
                "\r[{}/{}] {} {what}…\x1b[K",
                i + 1,
                self.total,
                size_label(size)
            );
        }
    }

    pub(super) fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_adaptive_counts() {
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(256 << 20), "256 MiB");
        assert_eq!(size_label(1000), "1000 B");
        let c = |fixed, tail| Count { fixed, tail };
        assert_eq!(c(None, false).warmups(4096), 200);
        assert_eq!(c(None, false).warmups(256 << 20), 2);
        let warm = [Duration::from_millis(1); 4];
        let slow = [Duration::from_secs(1)];
        assert_eq!(c(None, false).iters(4096, &warm), 750);
        assert_eq!(c(None, false).iters(4096, &slow), MIN_ITERS);
        assert_eq!(
            c(None, false).iters(4096, &[Duration::from_nanos(1)]),
            MAX_ITERS
        );
        assert_eq!(c(Some(3), false).iters(4096, &warm), 3);
        assert_eq!(c(Some(3), true).iters(4096, &warm), 3, "--iters wins");
        assert_eq!(c(None, true).iters(1 << 20, &slow), TAIL_ITERS);
        assert_eq!(c(None, true).iters(4 << 20, &slow), TAIL_ITERS_LARGE);
        assert_eq!(
            c(None, true).iters(4096, &[Duration::from_nanos(1)]),
            MAX_ITERS
        );
    }
}
