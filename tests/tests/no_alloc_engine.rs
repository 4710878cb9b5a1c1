//! Zero allocation on the engine's hot path: after warm-up, 1,000 transfers of 8 segments
//! each, and 1,000 lone 200 KB transfers (which the embedded plugin moves on the calling thread:
//! its direct requests), go through `post`, `poll` and `release` on both sessions with no heap
//! allocation on the polling thread (which also runs the plugin's isend/irecv/test calls).

use std::time::Duration;

use tcpx::engine::{Config, Memory, Segment, Session};
use tcpx_tests::{allocs, reset_allocs};

tcpx_tests::install_counting_alloc!();

#[path = "../../engine/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

fn pair() -> (Session, Session) {
    let cfg = Config {
        channels: 2,
        chunk_bytes: 64 * 1024,
        ..Config::default()
    };
    engine::loopback_pair(Default::default(), cfg)
}

fn run(a: &mut Session, b: &mut Session, send: &[Segment], recv: &[Segment]) -> bool {
    engine::transfer(a, b, send, recv, Duration::from_secs(20))
}

#[test]
fn thousand_transfers_allocate_nothing() {
    let (mut a, mut b) = pair();
    let n = 1 << 20;
    let mut src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![0u8; n];
    // SAFETY: the buffers outlive both sessions' use of them.
    let (sm, dm) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
        )
    };
    // 8 segments with odd sizes: small ones travel inline, larger ones over the helpers.
    let lens = [1u64, 4095, 4097, 65_536, 70_001, 100, 131_072, 9_999];
    let mut off = 0;
    let mut send = Vec::new();
    let mut recv = Vec::new();
    for len in lens {
        send.push(Segment {
            mem: sm,
            offset: off,
            remote_offset: off,
            len,
        });
        recv.push(Segment {
            mem: dm,
            offset: off,
            remote_offset: off,
            len,
        });
        off += len;
    }
    for _ in 0..50 {
        assert!(
            run(&mut a, &mut b, &send, &recv),
            "warm-up transfer timed out"
        );
    }
    reset_allocs();
    for i in 0..1000 {
        assert!(run(&mut a, &mut b, &send, &recv), "transfer {i} timed out");
    }
    let seen = allocs();
    assert_eq!(
        seen, 0,
        "the hot path allocated {seen} times over 1,000 transfers"
    );
    let total = off as usize;
    assert!(dst[..total] == src[..total], "data corrupted");

    // Lone one-chunk transfers: the plugin's direct requests.
    let (mut a, mut b) = engine::loopback_pair(
        Default::default(),
        Config {
            channels: 2,
            ..Config::default()
        },
    );
    let len = 200_000usize;
    dst[..len].fill(0);
    // SAFETY: the buffers outlive both sessions' use of them.
    let (sm, dm) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), len, Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), len, Memory::Host)
                .unwrap(),
        )
    };
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: len as u64,
    };
    let (send, recv) = ([seg(sm)], [seg(dm)]);
    for _ in 0..50 {
        assert!(
            run(&mut a, &mut b, &send, &recv),
            "warm-up transfer timed out"
        );
    }
    let direct_before = tcpx_sock::direct_requests().0;
    reset_allocs();
    for i in 0..1000 {
        assert!(
            run(&mut a, &mut b, &send, &recv),
            "lone transfer {i} timed out"
        );
    }
    let seen = allocs();
    let direct = tcpx_sock::direct_requests().0 - direct_before;
    assert_eq!(
        seen, 0,
        "the hot path allocated {seen} times over 1,000 lone transfers"
    );
    assert!(
        direct >= 2000,
        "lone transfers should go direct at both ends: {direct} direct requests in 1,000"
    );
    assert!(dst[..len] == src[..len], "data corrupted (lone transfers)");
}
