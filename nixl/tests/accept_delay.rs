//! Handshakes under TCPX's accept delay (tcpxsock's `accept_delay_ms`): GPUDirect-TCPX's accept
//! completes at least 5 s after the connection. Four peers connecting to one agent at once, and
//! one agent connecting to four peers at once, with a 1 s delay, all connect and move data; a
//! pair under the full 5 s delay connects within the default `timeout_ms` (10 s).
//!
//! That the handshakes overlap is shown structurally in `handshakes.rs`; the times here are
//! printed, not asserted.

use std::time::Instant;

use plugin_TCPX::backend::XferArgs;
use plugin_TCPX::registry::MEM_DRAM;
use plugin_TCPX::testing::{desc as d, poll_done, share, sock_config};
use plugin_TCPX::xfer::Op;
use plugin_TCPX::{Backend, Status};

/// Over the inline limit, so the data session carries it.
const N: usize = 256 * 1024;

/// tcpxsock's accept delay for every handshake that starts after this call (one setting per
/// process: this file's single test runs its phases in order).
fn accept_delay(ms: usize) {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        accept_delay_ms: ms,
        ..sock_config()
    });
}

/// A backend with default options (`timeout_ms` 10 s) on loopback.
fn agent(name: &str) -> Backend {
    Backend::new(name, [("listen_addr", "127.0.0.1:0")])
        .unwrap_or_else(|e| panic!("backend {name}: {e}"))
}

/// `from` WRITEs `src` into `to`'s `dst` with notification `tag` (opening its conn first if it
/// has none), then drops both registrations.
fn write(from: &Backend, to: (&Backend, &str), src: &mut [u8], dst: &mut [u8], tag: &[u8]) {
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = from.register_mem(&d(s, N as u64, 0), MEM_DRAM).unwrap();
    let (mt, rt) = share(to.0, to.1, from, t, N as u64);
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    let x = XferArgs {
        op: Op::Write,
        local: &l,
        local_mem: MEM_DRAM,
        remote: &r,
        remote_mem: MEM_DRAM,
        agent: to.1,
        notif: Some(tag),
    };
    let mut h = 0;
    from.post_xfer(&x, &mut h).expect("post_xfer");
    assert_eq!(poll_done(from, h), Status::Success);
    from.release_req(h).unwrap();
    from.unload_md(rt).unwrap();
    from.deregister_mem(ms).unwrap();
    to.0.deregister_mem(mt).unwrap();
}

fn notifs(b: &Backend) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    b.take_notifs(|from, m| {
        got.push((from.to_owned(), m.to_vec()));
        true
    })
    .unwrap();
    got
}

#[test]
fn handshakes_under_tcpx_accept_delays() {
    const K: usize = 4;
    accept_delay(1000);
    let hub = agent("hub");
    let peers: Vec<Backend> = (0..K).map(|i| agent(&format!("p{i}"))).collect();
    for (i, p) in peers.iter().enumerate() {
        p.load_remote_conn_info("hub", hub.conn_info()).unwrap();
        hub.load_remote_conn_info(&format!("p{i}"), p.conn_info())
            .unwrap();
    }
    let pattern = |i: usize| (0..N).map(move |j| (j * 31 + i * 7) as u8);

    // Four peers open conns to the hub at once (the hub serves each handshake on its thread),
    // then the hub opens its own conn to each of them at once (its handshakes on the callers'
    // threads, none holding up another).
    for hub_initiates in [false, true] {
        let mut srcs: Vec<Vec<u8>> = (0..K).map(|i| pattern(i).collect()).collect();
        let mut dsts: Vec<Vec<u8>> = (0..K).map(|_| vec![0u8; N]).collect();
        let start = Instant::now();
        std::thread::scope(|s| {
            for (i, ((p, src), dst)) in peers.iter().zip(&mut srcs).zip(&mut dsts).enumerate() {
                let hub = &hub;
                s.spawn(move || {
                    let name = format!("p{i}");
                    if hub_initiates {
                        write(hub, (p, &name), src, dst, name.as_bytes());
                    } else {
                        write(p, (hub, "hub"), src, dst, name.as_bytes());
                    }
                });
            }
        });
        eprintln!(
            "{K} new conns ({}) with a 1 s accept delay: {:.2} s in all",
            if hub_initiates {
                "the hub to each peer"
            } else {
                "each peer to the hub"
            },
            start.elapsed().as_secs_f64()
        );
        assert!(srcs == dsts, "every WRITE landed");
        let mut got: Vec<(String, Vec<u8>)> = if hub_initiates {
            peers.iter().flat_map(notifs).collect()
        } else {
            notifs(&hub)
        };
        got.sort();
        let want: Vec<(String, Vec<u8>)> = (0..K)
            .map(|i| {
                let from = if hub_initiates {
                    "hub".to_owned()
                } else {
                    format!("p{i}")
                };
                (from, format!("p{i}").into_bytes())
            })
            .collect();
        assert_eq!(got, want);
    }
    drop((hub, peers));

    // TCPX's full 5 s, under the default 10 s bound.
    accept_delay(5000);
    let b = agent("b");
    let a = agent("a");
    assert_eq!(
        a.config().timeout,
        std::time::Duration::from_secs(10),
        "the default"
    );
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    let start = Instant::now();
    a.connect("b").unwrap();
    eprintln!(
        "a handshake with a 5 s accept delay: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let (mut src, mut dst) = (pattern(9).collect::<Vec<u8>>(), vec![0u8; N]);
    write(&a, (&b, "b"), &mut src, &mut dst, b"full");
    assert!(src == dst);
    assert_eq!(notifs(&b), [("a".to_owned(), b"full".to_vec())]);
    accept_delay(0);
}
