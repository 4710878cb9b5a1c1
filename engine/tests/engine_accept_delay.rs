//! GPUDirect-TCPX's `accept` completes at least 5 s after the connection (it waits for flow
//! steering). The engine's default handshake bound allows for it, and all channels' accepts
//! wait together rather than one after another. Its own process: tcpxsock's configuration is
//! process-wide.

use std::time::{Duration, Instant};

use tcpx::engine::{Config, Memory, Segment};

mod common;

#[test]
fn a_handshake_with_tcpx_s_5_s_accept_succeeds_under_the_default_bound() {
    let sock = tcpx_sock::config::Config {
        unpack: true,
        accept_delay_ms: 5000,
        ..Default::default()
    };
    // Four channels: accepted one after another they would need 20 s, twice the bound.
    let cfg = Config {
        channels: 4,
        ..Config::default()
    };
    assert_eq!(cfg.timeout, Duration::from_secs(10), "the default bound");
    let t0 = Instant::now();
    let (mut a, mut b) = common::engine::loopback_pair(sock, cfg);
    // The delay was honoured (tcpxsock's own tests check it returns no comm before it).
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    let mut src: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; src.len()];
    // SAFETY: the buffers outlive the sessions' use of them.
    let (ma, mb) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), src.len(), Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
                .unwrap(),
        )
    };
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: src.len() as u64,
    };
    assert!(common::engine::transfer(
        &mut a,
        &mut b,
        &[seg(ma)],
        &[seg(mb)],
        Duration::from_secs(30)
    ));
    assert!(dst == src);
}
