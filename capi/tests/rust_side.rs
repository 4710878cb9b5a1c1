//! The C API called from Rust with live sessions: post, poll and release allocate nothing
//! on the calling thread, and NULL out-pointers on a live session are rejected without
//! side effects. Its own binary because it installs a counting global allocator.

use std::ffi::CStr;
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use tcpx_p2p::*;
use tcpx_tests::count_allocs;

tcpx_tests::install_counting_alloc!();

struct Handle(*mut tcpx_session_t);
// SAFETY: a session handle may move between threads; each is used by one thread at a time.
unsafe impl Send for Handle {}

fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated.
    unsafe { CStr::from_ptr(tcpx_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Two sessions connected through the C API, each handshake on its own thread.
fn pair() -> (*mut tcpx_session_t, *mut tcpx_session_t) {
    // The environment's TCPX_SOCK_* settings apply (CI runs this in tcpxsock's TCPX mode too).
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..tcpx_sock::config::Config::from_env()
    });
    let mut cfg = std::mem::MaybeUninit::uninit();
    // SAFETY: every pointer below is a live local; handles come from the calls themselves.
    unsafe {
        assert_eq!(tcpx_config_default(cfg.as_mut_ptr()), TCPX_OK);
        let mut cfg = cfg.assume_init();
        cfg.chunk_bytes = 64 * 1024;
        cfg.timeout_ms = 30_000;
        let (mut la, mut lb) = (null_mut(), null_mut());
        assert_eq!(tcpx_listen(&cfg, &mut la), TCPX_OK, "{}", last_error());
        assert_eq!(tcpx_listen(&cfg, &mut lb), TCPX_OK, "{}", last_error());
        let info = |l| {
            let (mut p, mut n) = (null(), 0);
            assert_eq!(tcpx_listener_conn_info(l, &mut p, &mut n), TCPX_OK);
            std::slice::from_raw_parts(p, n).to_vec()
        };
        let (ia, ib) = (info(la), info(lb));
        let la = Handle(la.cast());
        let t = std::thread::spawn(move || {
            let la = la;
            let mut s = null_mut();
            let rc = tcpx_listener_connect(la.0.cast(), ib.as_ptr(), ib.len(), &mut s);
            assert_eq!(rc, TCPX_OK, "{}", last_error());
            Handle(s)
        });
        let mut sb = null_mut();
        let rc = tcpx_listener_connect(lb, ia.as_ptr(), ia.len(), &mut sb);
        assert_eq!(rc, TCPX_OK, "{}", last_error());
        (t.join().unwrap().0, sb)
    }
}

/// Posts the mirror-image transfers and polls both until done (bounded).
///
/// # Safety
/// `a` and `b` are live, connected sessions.
unsafe fn round(
    a: *mut tcpx_session_t,
    b: *mut tcpx_session_t,
    send: &[tcpx_segment_t],
    recv: &[tcpx_segment_t],
) -> bool {
    let (mut xa, mut xb) = (0, 0);
    // SAFETY: forwarded contract; slices and out-pointers are live.
    unsafe {
        assert_eq!(
            tcpx_transfer_post(a, TCPX_SEND, send.as_ptr(), send.len(), &mut xa),
            0
        );
        assert_eq!(
            tcpx_transfer_post(b, TCPX_RECV, recv.as_ptr(), recv.len(), &mut xb),
            0
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut da, mut db) = (0, 0);
        let (mut d, mut t) = (0, 0);
        while da != 1 || db != 1 {
            if Instant::now() > deadline {
                return false;
            }
            if da != 1 {
                da = tcpx_transfer_poll(a, xa, &mut d, &mut t);
            }
            if db != 1 {
                db = tcpx_transfer_poll(b, xb, &mut d, &mut t);
            }
            assert!(da >= 0 && db >= 0, "{}", last_error());
        }
        assert_eq!(tcpx_transfer_release(a, xa), 0);
        assert_eq!(tcpx_transfer_release(b, xb), 0);
    }
    true
}

#[test]
fn post_poll_release_allocate_nothing_and_null_outs_are_rejected() {
    let (a, b) = pair();
    let n = 1 << 20;
    let mut src: Vec<u8> = (0..n).map(|i| (i * 13 + 5) as u8).collect();
    let mut dst = vec![0u8; n];
    let (mut ma, mut mb) = (0, 0);
    // SAFETY: the buffers outlive their registrations; handles are live.
    unsafe {
        assert_eq!(
            tcpx_register(a, src.as_mut_ptr().cast(), n, TCPX_MEM_HOST, 0, &mut ma),
            0
        );
        assert_eq!(
            tcpx_register(b, dst.as_mut_ptr().cast(), n, TCPX_MEM_HOST, 0, &mut mb),
            0
        );
    }
    let lens = [1u64, 4095, 4097, 65_536, 70_001, 100, 131_072, 9_999];
    let mut off = 0;
    let (mut send, mut recv) = (Vec::new(), Vec::new());
    for len in lens {
        let seg = |mem| tcpx_segment_t {
            mem,
            offset: off,
            remote_offset: off,
            len,
        };
        send.push(seg(ma));
        recv.push(seg(mb));
        off += len + 11;
    }
    // Warm-up: first uses may size plugin-side or lazily initialised state.
    for _ in 0..20 {
        // SAFETY: live sessions.
        assert!(unsafe { round(a, b, &send, &recv) }, "warm-up timed out");
    }
    let mut ok = true;
    let allocs = count_allocs(|| {
        for _ in 0..1000 {
            // SAFETY: live sessions.
            ok &= unsafe { round(a, b, &send, &recv) };
        }
    });
    assert!(ok, "a transfer timed out");
    assert_eq!(allocs, 0, "post/poll/release allocated on the hot path");
    for s in &recv {
        let r = s.offset as usize..(s.offset + s.len) as usize;
        assert!(src[r.clone()] == dst[r], "segment at {} differs", s.offset);
    }

    // NULL out-pointers on a live session: rejected, named, nothing queued.
    let (mut v, mut w) = (0u64, 0u64);
    // SAFETY: live sessions; NULLs are what is under test.
    unsafe {
        assert_eq!(
            tcpx_register(a, src.as_mut_ptr().cast(), 8, TCPX_MEM_HOST, 0, null_mut()),
            TCPX_ERR_INVALID
        );
        assert!(last_error().contains("mem_id"), "{}", last_error());
        assert_eq!(
            tcpx_transfer_post(a, TCPX_SEND, send.as_ptr(), 1, null_mut()),
            TCPX_ERR_INVALID
        );
        assert_eq!(
            tcpx_transfer_post(a, TCPX_SEND, null(), 1, &mut v),
            TCPX_ERR_INVALID
        );
        let mut x = 0;
        assert_eq!(tcpx_transfer_post(a, TCPX_SEND, null(), 0, &mut x), TCPX_OK);
        assert_eq!(
            tcpx_transfer_poll(a, x, null_mut(), &mut w),
            TCPX_ERR_INVALID
        );
        assert_eq!(
            tcpx_transfer_poll(a, x, &mut v, null_mut()),
            TCPX_ERR_INVALID
        );
        assert_eq!(tcpx_transfer_wait(a, x, 1000, null_mut()), TCPX_ERR_INVALID);
        assert_eq!(
            tcpx_transfer_poll(a, x, &mut v, &mut w),
            1,
            "empty transfer is done"
        );
        assert_eq!((v, w), (0, 0));
        assert_eq!(tcpx_transfer_release(a, x), TCPX_OK);
        assert_eq!(tcpx_transfer_release(a, x), TCPX_ERR_INVALID, "stale id");
        // The rejected posts queued nothing: the session still moves data.
        assert!(round(a, b, &send, &recv));
        assert_eq!(tcpx_deregister(a, ma), TCPX_OK);
        assert_eq!(tcpx_deregister(b, mb), TCPX_OK);
        tcpx_session_destroy(a);
        tcpx_session_destroy(b);
    }
}

/// A 3 GiB host region on each side through the C API (over TCPX's `int` registration size):
/// transfers both ways into the last MiB and across 2^31 arrive intact, nothing around them is
/// written. Only the pages the transfers touch are ever faulted in.
#[test]
fn regions_over_2_gib_through_the_c_api() {
    const REGION: usize = 3 << 30;
    const MIB: u64 = 1 << 20;
    let (a, b) = pair();
    let mut ra = vec![0u8; REGION];
    let mut rb = vec![0u8; REGION];
    let (mut ma, mut mb) = (0, 0);
    // SAFETY: the buffers outlive their registrations; handles are live.
    unsafe {
        let rc = tcpx_register(a, ra.as_mut_ptr().cast(), REGION, TCPX_MEM_HOST, 0, &mut ma);
        assert_eq!(rc, TCPX_OK, "{}", last_error());
        let rc = tcpx_register(b, rb.as_mut_ptr().cast(), REGION, TCPX_MEM_HOST, 0, &mut mb);
        assert_eq!(rc, TCPX_OK, "{}", last_error());
    }
    let ranges = [(REGION as u64 - MIB, MIB), ((1 << 31) - 4097, MIB + 3)];
    let segs = |mem| -> Vec<tcpx_segment_t> {
        ranges
            .iter()
            .map(|&(offset, len)| tcpx_segment_t {
                mem,
                offset,
                remote_offset: offset,
                len,
            })
            .collect()
    };
    for (from, to, seed) in [(0, 1, 7u8), (1, 0, 9u8)] {
        let bufs: [&mut Vec<u8>; 2] = [&mut ra, &mut rb];
        let [ba, bb] = bufs;
        let (src, dst) = if from == 0 { (ba, bb) } else { (bb, ba) };
        for &(off, len) in &ranges {
            for i in off..off + len {
                src[i as usize] = (i as u8) ^ seed;
            }
            dst[off as usize..(off + len) as usize].fill(0);
        }
        let (s, d) = [(a, ma), (b, mb)][from];
        let (r, e) = [(a, ma), (b, mb)][to];
        // SAFETY: live sessions.
        assert!(unsafe { round(s, r, &segs(d), &segs(e)) }, "timed out");
        for &(off, len) in &ranges {
            for i in off..off + len {
                assert_eq!(dst[i as usize], (i as u8) ^ seed, "byte {i:#x}");
            }
            assert_eq!(dst[off as usize - 1], 0, "byte before {off:#x} written");
            if let Some(&after) = dst.get((off + len) as usize) {
                assert_eq!(after, 0, "byte after [{off:#x}, +{len}) written");
            }
        }
    }
    // SAFETY: live sessions, idle regions.
    unsafe {
        assert_eq!(tcpx_deregister(a, ma), TCPX_OK);
        assert_eq!(tcpx_deregister(b, mb), TCPX_OK);
        tcpx_session_destroy(a);
        tcpx_session_destroy(b);
    }
}
