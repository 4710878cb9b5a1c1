//! TCPX mode (host receives through bounce pages) with the pool in its default order (not shuffled): a request's bounce pages
//! come in runs of consecutive pages, which the data sockets fill with one iovec per run
//! (received straight into the pages: `stream_bounce` off here; `tests/tcpx.rs` covers the
//! streamed path).
//! Requests held across others make runs break mid-request; data is rebuilt with the CPU
//! reference unpack and must match either way.

mod common;

use common::*;
use tcpx_core::abi::result;
use tcpx_core::unpack::{slot_of, unpack_cpu, PAGE_SIZE};

const BOUNCE: usize = 8 << 20;

#[test]
fn page_runs_and_broken_runs_round_trip() {
    init_with(tcpx_sock::Config {
        host_bounce: true,
        bounce_bytes: BOUNCE,
        stream_bounce: false,
        ..tcpx_sock::Config::default()
    });
    let (s, r, _) = pair();
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    // SAFETY: the bounce region lives as long as the comm and is only read here after test
    // reported the request done.
    let bounce = unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) };
    let sizes = [
        8 * PAGE_SIZE,
        8 * PAGE_SIZE,
        12 * PAGE_SIZE + 100,
        1 << 20,
        3 * PAGE_SIZE + 1,
        (2 << 20) + 5,
        4 << 20,
        PAGE_SIZE * 200 - 7,
    ];
    let (mut multi_page_runs, mut broken) = (false, false);
    // Each receive is consumed only after the next one landed, so freed pages come back
    // between other requests' pages.
    let mut held: Option<Ptr> = None;
    for (k, &len) in sizes.iter().enumerate() {
        let k = k as u64;
        let src = pattern(len, 4000 + k);
        let mut unused = vec![0u8; len];
        let rr = irecv(r, &mut unused).unwrap();
        let sr = isend(s, &src).unwrap();
        assert_eq!(wait(sr), Ok(UNTOUCHED));
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        let runs = check(&v, bounce, k, &src);
        multi_page_runs |= runs < len.div_ceil(PAGE_SIZE);
        broken |= runs > 1;
        if let Some(h) = held.replace(rr) {
            assert_eq!(consumed(r, h), result::SUCCESS);
        }
        // Keep `unused` alive until its request is done: TCPX mode never writes it.
        assert!(unused.iter().all(|b| *b == 0));
    }
    assert_eq!(consumed(r, held.unwrap()), result::SUCCESS);
    assert!(multi_page_runs, "some request should get consecutive pages");
    assert!(broken, "some request should get more than one run");
    close_send(s);
    close_recv(r);
}

/// Rebuilds receive `k` from its slot, compares it with `src`, and returns its number of runs
/// of consecutive bounce pages.
fn check(v: &tcpx_sock::UnpackView, bounce: &[u8], k: u64, src: &[u8]) -> usize {
    // SAFETY: the meta table is live and slot k was published when its request completed.
    let e = unsafe { &*v.meta }.slot_entries(slot_of(k)).unwrap();
    let mut out = vec![0u8; src.len()];
    assert_eq!(unpack_cpu(e, bounce, &mut out), Ok(src.len() as u64));
    assert!(out == src, "receive {k} ({} bytes)", src.len());
    1 + e
        .windows(2)
        .filter(|w| w[1].src_off != w[0].src_off + PAGE_SIZE as u32)
        .count()
}
