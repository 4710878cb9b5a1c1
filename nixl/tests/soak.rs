//! Soak: many small WRITEs between two in-process backends over the engine (tcpxsock on
//! loopback), sampling RSS and the fd count. `#[ignore]`d: `scripts/soak.sh` runs it in release
//! mode and `scripts/valgrind.sh` runs a 1,000-transfer version under memcheck.
//!
//! `TCPX_SOAK_N` transfers (default 100,000) of `TCPX_SOAK_BYTES` (default 4096) each; RSS and
//! fds are sampled at 10 %, 50 % and 100 %. Fails if RSS grows by more than 1 MiB between the
//! first and last sample or the fd count changes (only checked for N >= 10,000: below that the
//! allocator's warm-up dominates).

use std::time::{Duration, Instant};

use plugin_TCPX::backend::XferArgs;
use plugin_TCPX::registry::MEM_DRAM;
use plugin_TCPX::testing::{backend_pair, desc as d, poll_done, share};
use plugin_TCPX::xfer::Op;
use plugin_TCPX::Status;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
#[ignore = "long: run by scripts/soak.sh and scripts/valgrind.sh"]
fn soak_small_writes() {
    let n = env("TCPX_SOAK_N", 100_000);
    let len = env("TCPX_SOAK_BYTES", 4096);
    let (a, b) = backend_pair("a", "b", 10_000);
    let mut src = vec![0u8; len];
    let mut dst = vec![0u8; len];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = a.register_mem(&d(s, len as u64, 0), MEM_DRAM).unwrap();
    let (mt, rt) = share(&b, "b", &a, t, len as u64);
    a.connect("b").unwrap();
    let (l, r) = ([d(s, len as u64, ms)], [d(t, len as u64, rt)]);
    let args = XferArgs {
        op: Op::Write,
        local: &l,
        local_mem: MEM_DRAM,
        remote: &r,
        remote_mem: MEM_DRAM,
        agent: "b",
        notif: None,
    };
    // One prepared request, reposted: NIXL's steady-state pattern.
    let mut h = a.prep_xfer(&args).unwrap();
    let marks = [n / 10, n / 2, n];
    let mut samples = Vec::new();
    let start = Instant::now();
    for i in 1..=n {
        // A different first byte each time proves every transfer landed.
        let tag = (i % 251) as u8;
        // SAFETY: `src` is ours; the backend reads it only during the transfer below.
        unsafe { *(s as *mut u8) = tag };
        a.post_xfer(&args, &mut h).unwrap();
        assert_eq!(poll_done(&a, h), Status::Success, "transfer {i}");
        // SAFETY: the WRITE completed (Acked after the data landed).
        assert_eq!(unsafe { *(t as *const u8) }, tag, "transfer {i}");
        if marks.contains(&i) {
            let (rss, fd) = (rss_bytes(), fds());
            eprintln!(
                "SOAK {i:>7} transfers: rss {rss} B ({:.1} MiB), fds {fd}, {:.1} s",
                rss as f64 / (1 << 20) as f64,
                start.elapsed().as_secs_f64()
            );
            samples.push((rss, fd));
        }
    }
    a.release_req(h).unwrap();
    assert_eq!(dst[1..], src[1..]);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "SOAK done: {n} x {len} B WRITEs in {secs:.1} s ({:.0} transfers/s)",
        n as f64 / secs
    );
    if n >= 10_000 {
        let (first, last) = (samples[0], samples[samples.len() - 1]);
        let growth = last.0 as i64 - first.0 as i64;
        eprintln!(
            "SOAK rss growth 10%..100%: {growth} B; fds {} -> {}",
            first.1, last.1
        );
        assert!(
            growth <= 1 << 20,
            "RSS grew {growth} B between 10% and 100%"
        );
        assert!(
            samples.iter().all(|s| s.1 == first.1),
            "fd count changed: {samples:?}"
        );
    }
    a.unload_md(rt).unwrap();
    a.deregister_mem(ms).unwrap();
    b.deregister_mem(mt).unwrap();
    assert_eq!(a.live_requests(), 0);
}

/// Connection churn: `TCPX_SOAK_CONNS` peers (default 4,000) each complete a real handshake
/// with a target (control stream + engine session over tcpxsock: about 20 TCP connections),
/// send one `Notif` and go away; RSS and fds are sampled at 25 %, 50 % and 100 %, and a
/// well-behaved agent's WRITE + READ is verified at each sample. Fails if RSS grows by more
/// than 1 MiB over the second half or the fd count moves.
#[test]
#[ignore = "long: run by scripts/soak.sh"]
fn soak_connection_churn() {
    use plugin_TCPX::testing::{frame, handshake, World};
    use std::io::Write;
    use tcpx_core::wire::{Message, Notif};

    // One malloc arena, set before the process starts (a child runs the checks). Every
    // handshake runs on a thread of its own and its session allocates a few MiB (the engine
    // sizes every transfer slot up front); glibc hands such threads arenas of their own, up to
    // 8 per core, and each keeps a session's worth once freed: RSS then climbs for thousands
    // of connections while the arenas warm up, which reads as a leak. With one arena a real
    // leak still shows as growth per connection.
    if std::env::var_os("TCPX_SOAK_CHURN_CHILD").is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "soak_connection_churn",
                "--ignored",
                "--nocapture",
            ])
            .env("TCPX_SOAK_CHURN_CHILD", "1")
            .env("MALLOC_ARENA_MAX", "1")
            .status()
            .unwrap();
        assert!(out.success(), "the churn child failed: {out}");
        return;
    }
    let n = env("TCPX_SOAK_CONNS", 4_000);
    let mut w = World::new(10_000);
    w.good_roundtrip("start");
    let notif = frame(&Message::Notif(Notif { msg: b"churn" }));
    let t0 = Instant::now();
    let mut samples: Vec<(usize, usize, usize)> = Vec::new();
    for i in 1..=n {
        let (mut s, sess) = handshake(w.addr, "churn").expect("handshake");
        s.write_all(&notif).unwrap();
        drop(sess);
        drop(s);
        if i == n / 4 || i == n / 2 || i == n {
            // Let the target notice the last peer is gone before counting.
            let deadline = Instant::now() + Duration::from_secs(15);
            let base = samples.first().map(|x| x.2);
            while base.is_some_and(|b| fds() != b) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            w.good_roundtrip(&format!("after {i} peers"));
            let (rss, fd) = (rss_bytes(), fds());
            eprintln!(
                "CHURN {i:>6} peers: rss {rss} B ({:.1} MiB), fds {fd}, {:.1} s",
                rss as f64 / (1 << 20) as f64,
                t0.elapsed().as_secs_f64()
            );
            samples.push((i, rss, fd));
        }
    }
    // The first half warms the allocator up (every helper thread of every session is new,
    // and glibc gives threads arenas of their own until it has 8 per core); a leak shows as
    // growth that goes on in the second half.
    let (first, half, last) = (samples[0], samples[1], samples[2]);
    let growth = last.1.saturating_sub(half.1);
    eprintln!(
        "CHURN rss growth 50%..100%: {growth} B (25%..50%: {} B); fds {} -> {} -> {}",
        half.1.saturating_sub(first.1),
        first.2,
        half.2,
        last.2
    );
    assert!(
        growth < 1 << 20,
        "RSS grew {growth} B over the last {} connections",
        n / 2
    );
    assert_eq!((first.2, half.2), (last.2, last.2), "fd count changed");
}
