//! `TCPX_SOCK_SPREAD=all`: every send is cut into pieces of its size over the data sockets
//! (whole pages, at least 64 KiB) instead of chunk-size pieces, and the receiver cuts it the
//! same way from the header's SPREAD flag. Here in TCPX mode (bounce pages, shuffled), with
//! several requests in flight at once, small (inline), odd and 4 MiB sizes mixed; data is
//! rebuilt with the CPU reference unpack and must match.

mod common;

use common::*;
use tcpx_core::abi::result;
use tcpx_core::unpack::{slot_of, unpack_cpu, PAGE_SIZE};

const BOUNCE: usize = 32 << 20;

#[test]
fn spread_requests_in_flight_round_trip() {
    init_with(tcpx_sock::Config {
        unpack: true,
        shuffle: true,
        bounce_bytes: BOUNCE,
        spread: tcpx_sock::Spread::All,
        ..tcpx_sock::Config::default()
    });
    let (s, r, _) = pair();
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    // SAFETY: the bounce region lives as long as the comm; read only after test said done.
    let bounce = unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) };
    let mut sizes = vec![
        4 << 20,
        1,
        (1 << 20) + 5,
        64 << 10,
        (64 << 10) + 1,
        300 * 1024,
        3 * PAGE_SIZE + 17,
        (4 << 20) - 1,
    ];
    sizes.extend(rand_sizes(16, 4 << 20, 7));
    let mut k = 0u64;
    // Groups of four posted before any is waited for: their pieces share the sockets.
    for group in sizes.chunks(4) {
        let srcs: Vec<Vec<u8>> = group
            .iter()
            .enumerate()
            .map(|(i, &len)| pattern(len, 500 + k + i as u64))
            .collect();
        let mut unused: Vec<Vec<u8>> = group.iter().map(|&len| vec![0u8; len]).collect();
        let rrs: Vec<Ptr> = unused.iter_mut().map(|u| irecv(r, u).unwrap()).collect();
        let srs: Vec<Ptr> = srcs.iter().map(|src| isend(s, src).unwrap()).collect();
        for (i, (&rr, &sr)) in rrs.iter().zip(&srs).enumerate() {
            let len = group[i];
            assert_eq!(wait(sr), Ok(len));
            assert_eq!(wait(rr), Ok(len));
            // SAFETY: the meta table is live; the slot was published when the request completed.
            let e = unsafe { &*v.meta }.slot_entries(slot_of(k)).unwrap();
            let mut out = vec![0u8; len];
            assert_eq!(unpack_cpu(e, bounce, &mut out), Ok(len as u64));
            assert!(out == srcs[i], "receive {k} ({len} bytes) differs");
            k += 1;
        }
        for rr in rrs {
            assert_eq!(consumed(r, rr), result::SUCCESS);
        }
        assert!(unused.iter().all(|u| u.iter().all(|&b| b == 0)));
    }
    close_send(s);
    close_recv(r);
}
