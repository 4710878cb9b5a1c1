//! Per-stage timestamps for finding where a transfer's time goes (`TCPX_SOCK_TRACE=PREFIX`).
//!
//! Off (the default), [`mark`] is one relaxed load of a static and a branch. On, each mark
//! stores `(CLOCK_MONOTONIC ns, thread id, label, key)` into a ring allocated once at the
//! first mark (`TCPX_SOCK_TRACE_EVENTS`, default 4M events; later marks past it are counted,
//! not stored), without locks or allocation; at process exit the events go to `PREFIX.<pid>`,
//! one `ns tid label key` line each. The key ties the stages of one request together across
//! threads (tcpxsock's: [`request_key`]; 0 = none). CLOCK_MONOTONIC is the clock of Python's `time.perf_counter` and
//! is shared by every process of the machine, so the marks of two processes on one host (and
//! their callers' own timestamps) line up: `benches/nixl/nixl_bench.py --trace` reads them
//! per transfer.

use std::cell::Cell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

const UNKNOWN: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
const DEFAULT_EVENTS: usize = 4 << 20;

static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
static RING: OnceLock<Ring> = OnceLock::new();

struct Slot {
    ns: AtomicU64,
    key: AtomicU64,
    /// Thread id (low 32 bits) and label length (high 32 bits).
    tid_len: AtomicU64,
    label: AtomicUsize,
}

struct Ring {
    prefix: String,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

thread_local! {
    static TID: Cell<u32> = const { Cell::new(0) };
}

/// Whether marks are recorded (`TCPX_SOCK_TRACE` set and non-empty).
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => start(),
    }
}

/// Records that `label` happened now on this thread (nothing when tracing is off).
#[inline]
pub fn mark(label: &'static str) {
    mark_key(label, 0)
}

/// The key of request slot `idx` of the comm whose helper state lives at `comm`: the same
/// on the caller's thread and in the comm's helpers.
pub(crate) fn request_key<T>(comm: *const T, idx: usize) -> u64 {
    ((comm as usize as u64) << 4) | idx as u64
}

/// [`mark`] with a key naming what the stage belongs to.
#[inline]
pub fn mark_key(label: &'static str, key: u64) {
    match STATE.load(Ordering::Relaxed) {
        OFF => return,
        ON => {}
        _ if !start() => return,
        _ => {}
    }
    let Some(r) = RING.get() else { return };
    let i = r.next.fetch_add(1, Ordering::Relaxed);
    let Some(s) = r.slots.get(i) else { return };
    let tid = TID.with(|t| {
        if t.get() == 0 {
            // SAFETY: gettid has no preconditions.
            t.set(unsafe { libc::gettid() } as u32);
        }
        t.get()
    });
    s.ns.store(now_ns(), Ordering::Relaxed);
    s.key.store(key, Ordering::Relaxed);
    s.label.store(label.as_ptr() as usize, Ordering::Relaxed);
    // Stored last with Release: `dump` takes a slot whose length is set as complete.
    s.tid_len.store(
        u64::from(tid) | ((label.len() as u64) << 32),
        Ordering::Release,
    );
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Decides once whether tracing is on; allocates the ring and registers the exit dump.
#[cold]
fn start() -> bool {
    let mut on = false;
    RING.get_or_init(|| {
        let prefix = std::env::var("TCPX_SOCK_TRACE").unwrap_or_default();
        let n = crate::config::env_usize("TCPX_SOCK_TRACE_EVENTS")
            .map_or(DEFAULT_EVENTS, |n| n.clamp(1024, 1 << 28));
        let slots = if prefix.is_empty() {
            Box::default()
        } else {
            (0..n)
                .map(|_| Slot {
                    ns: AtomicU64::new(0),
                    key: AtomicU64::new(0),
                    tid_len: AtomicU64::new(0),
                    label: AtomicUsize::new(0),
                })
                .collect()
        };
        Ring {
            prefix,
            slots,
            next: AtomicUsize::new(0),
        }
    });
    if let Some(r) = RING.get() {
        on = !r.prefix.is_empty();
    }
    if STATE
        .compare_exchange(
            UNKNOWN,
            if on { ON } else { OFF },
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_ok()
        && on
    {
        // SAFETY: `dump_at_exit` is a plain extern "C" function that never unwinds.
        unsafe { libc::atexit(dump_at_exit) };
    }
    STATE.load(Ordering::Relaxed) == ON
}

extern "C" fn dump_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Err(e) = dump() {
            eprintln!("tcpxsock: TCPX_SOCK_TRACE: {e}");
        }
    });
}

/// Writes the events recorded so far to `PREFIX.<pid>` (at exit this runs by itself), one
/// `ns tid label key` line each;
/// returns the file's path, or `None` when tracing is off.
pub fn dump() -> std::io::Result<Option<String>> {
    let Some(r) = RING.get().filter(|r| !r.prefix.is_empty()) else {
        return Ok(None);
    };
    let path = format!("{}.{}", r.prefix, std::process::id());
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let n = r.next.load(Ordering::Acquire);
    for s in r.slots.iter().take(n) {
        let tl = s.tid_len.load(Ordering::Acquire);
        let len = (tl >> 32) as usize;
        if len == 0 {
            continue; // claimed, not yet written
        }
        let p = s.label.load(Ordering::Relaxed) as *const u8;
        // SAFETY: `p` and `len` come from a `&'static str` given to `mark`.
        let label = unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(p, len)) };
        let (ns, key) = (s.ns.load(Ordering::Relaxed), s.key.load(Ordering::Relaxed));
        writeln!(f, "{ns} {} {label} {key:#x}", tl as u32)?;
    }
    if n > r.slots.len() {
        writeln!(f, "# {} events not recorded (ring full)", n - r.slots.len())?;
    }
    f.flush()?;
    Ok(Some(path))
}
