//! tcpxsock's `TCPX_SOCK_UNPACK=1` test mode lands host receives in bounce pages, which the
//! engine never copies out (TCPX receives host buffers in place). The engine refuses such
//! receives with a clear error instead of completing them with the buffer untouched. Its own
//! process: the plugin configuration is process-wide.

use std::time::Duration;

use tcpx::engine::{Config, Direction, Memory, Segment};
use tcpx::Error;

mod common;

#[test]
fn host_receives_are_refused_when_tcpxsock_bounces_them() {
    // One transfer slot: a refused post that took it would make the next post fail.
    let cfg = Config {
        channels: 1,
        max_transfers: 1,
        timeout: Duration::from_secs(20),
        ..Config::default()
    };
    let sock = tcpx_sock::config::Config {
        unpack: true,
        ..Default::default()
    };
    let (a, mut b) = common::engine::loopback_pair(sock, cfg);
    let mut dst = vec![0u8; 8192];
    // SAFETY: the buffer outlives the registration (the sessions drop first).
    let md = unsafe {
        b.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
            .unwrap()
    };
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: 8192,
    };
    let e = b.post(Direction::Recv, &[seg(md)]);
    match e {
        Err(Error::Unsupported(why)) => assert!(why.contains("TCPX_SOCK_UNPACK"), "{why}"),
        other => panic!("a host receive into bounce pages must be refused, got {other:?}"),
    }
    assert!(
        b.broken().is_none(),
        "a refused post must not break the session"
    );
    // The refused post took no slot: with one slot per session, a send from the same host
    // region is accepted next (it would fail with "max_transfers ... live" otherwise).
    let x = b.post(Direction::Send, &[seg(md)]).unwrap();
    b.release(x).unwrap();
    assert!(dst.iter().all(|&v| v == 0));
    drop(a);
    drop(b);
}
