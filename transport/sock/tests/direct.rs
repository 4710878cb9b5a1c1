//! Direct requests (`Config::direct_bytes`): a one-chunk host request on an idle comm is moved
//! on its data socket by the calling thread. `isend` writes what the socket takes and hands
//! the rest to the helper at once; a receive is read as it comes until a request behind it
//! makes the calling thread hand the rest to the helper. Host mode over 127.0.0.1 with small
//! socket buffers. This file is its own process with one test, so the process-wide counters
//! are exact.

mod common;

use common::*;
use tcpx_core::abi::result;

#[test]
fn lone_requests_go_direct_and_queued_ones_hand_over() {
    init_with(tcpx_sock::Config {
        sock_buf_bytes: 16 << 10,
        ..tcpx_sock::Config::default()
    });
    if !host_mode("lone_requests_go_direct_and_queued_ones_hand_over") {
        return;
    }
    let cfg = tcpx_sock::Config::default();
    let (s, r, _) = pair();
    let mid = 200_000;
    assert!(cfg.inline_bytes < mid && mid <= cfg.direct_bytes);
    let count = || tcpx_sock::direct_requests().0;
    let handoffs = || tcpx_sock::direct_requests().1;

    // One request at a time: each finds both ends idle, so its send and its receive go direct
    // (two per request), unless it is inline or larger than `direct_bytes`; the send writes one
    // 64 KiB piece itself and hands the rest to the helper (one per request: every direct size
    // is above `inline_bytes`, 64 KiB).
    for (k, (len, direct)) in [
        (mid, 2),
        (cfg.inline_bytes, 0),
        (cfg.inline_bytes + 1, 2),
        (cfg.direct_bytes, 2),
        (cfg.direct_bytes + 1, 0),
        (mid + 7, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let (before, handed_before) = (count(), handoffs());
        round_trip(s, r, &pattern(len, k as u64), 5);
        assert_eq!(
            count() - before,
            direct,
            "direct requests for a lone {len}-byte transfer"
        );
        assert_eq!(
            handoffs() - handed_before,
            direct / 2,
            "hand-offs for a lone {len}-byte transfer"
        );
    }

    // Sixteen of every kind, all receives posted first, then all sends, nothing waited for in
    // between: the first goes direct at each end. Its send hands the rest (beyond one piece) to
    // the helper at once; its receive hands over the moment the receiver reads the second's
    // header, which is there by the receiver's first call after the sends. Every byte must still
    // land in order.
    let (before, handed_before) = (count(), handoffs());
    let lens: Vec<usize> = (0..16)
        .map(|i| [mid, 700_000, 10, mid + 1][i % 4] + i)
        .collect();
    let srcs: Vec<Vec<u8>> = lens.iter().map(|&l| pattern(l, 50 + l as u64)).collect();
    let mut dsts: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
    let rreqs: Vec<Ptr> = dsts.iter_mut().map(|d| irecv(r, d).unwrap()).collect();
    let sreqs: Vec<Ptr> = srcs.iter().map(|b| isend(s, b).unwrap()).collect();
    let t = std::thread::spawn(move || sreqs.into_iter().map(wait).collect::<Vec<_>>());
    for (i, q) in rreqs.into_iter().enumerate() {
        assert_eq!(wait(q), Ok(lens[i]), "request {i}");
    }
    assert!(t.join().unwrap().iter().all(Result::is_ok));
    assert!(
        dsts == srcs,
        "requests behind a direct one delivered out of place"
    );
    assert_eq!(
        count() - before,
        2,
        "only the first of the queued requests goes direct"
    );
    assert_eq!(
        handoffs() - handed_before,
        2,
        "the sender and the receiver each hand the direct request's rest to its helper"
    );
    close_send(s);
    close_recv(r);

    // A sender with smaller chunks than the receiver's own: a request of two such chunks
    // travels on two sockets, so the receiver must judge it by the sender's chunk size (the
    // comm's), not by its own `direct_bytes`.
    let base = tcpx_sock::config::current();
    let (h, l) = listen();
    tcpx_sock::configure(tcpx_sock::Config {
        chunk_bytes: 128 << 10,
        ..base.clone()
    });
    let (s, r, _) = connect_accept(h, l);
    tcpx_sock::configure(base);
    for (k, (len, direct)) in [(100_000, 2), (200_000, 0), (100_001, 2)]
        .into_iter()
        .enumerate()
    {
        let before = count();
        round_trip(s, r, &pattern(len, 90 + k as u64), 0);
        assert_eq!(
            count() - before,
            direct,
            "direct requests for a lone {len}-byte transfer in 128 KiB chunks"
        );
    }
    close_send(s);
    close_recv(r);

    // Nothing inline: a small direct send fits the socket buffer and completes inside `isend`
    // with no hand-off; its receive is direct too.
    let base = tcpx_sock::config::current();
    tcpx_sock::configure(tcpx_sock::Config {
        inline_bytes: 0,
        ..base.clone()
    });
    let (s, r, _) = pair();
    tcpx_sock::configure(base);
    let (before, handed_before) = (count(), handoffs());
    let src = pattern(8000, 8);
    let mut dst = vec![0u8; 8000];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert_eq!(
        wait(sr),
        Ok(8000),
        "a send written whole by isend is done at once"
    );
    assert_eq!(wait(rr), Ok(8000));
    assert!(dst == src, "payload differs (8000 bytes, direct)");
    assert_eq!(
        count() - before,
        2,
        "the send and the receive both went direct"
    );
    assert_eq!(handoffs() - handed_before, 0, "nothing left for a helper");
    close_send(s);
    close_recv(r);

    // The sender closes with a direct transfer half sent (16 KiB socket buffers hold far less
    // than it): the receive, read by the calling thread, fails instead of waiting forever.
    let (s, r, _) = pair();
    let before = count();
    let src = pattern(mid, 7);
    let mut dst = vec![0u8; mid];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert!(
        test_once(sr).unwrap().is_none(),
        "a half-sent request cannot be done"
    );
    close_send(s);
    let e = wait(rr).unwrap_err();
    assert!(
        e == result::REMOTE_ERROR || e == result::SYSTEM_ERROR,
        "got {e}"
    );
    assert_eq!(
        count() - before,
        2,
        "the send and the receive both went direct"
    );
    close_recv(r);
}
