//! Host mode with the sender in a separate process (this binary re-executed), handle
//! passed over a pipe; and a peer killed mid-transfer.

mod common;

use common::*;
use std::time::Instant;
use tcpx_core::abi::result;

fn setup() {
    init(false, false, 0);
}

/// Entry point of the re-executed peer; a no-op when run as a normal test.
#[test]
#[ignore = "runs only as the peer of another test"]
fn peer_entry() {
    setup();
    peer_main();
}

#[test]
fn two_processes_round_trip() {
    setup();
    if !host_mode("two_processes_round_trip") {
        return;
    }
    let (h, l) = listen();
    let mut child = spawn_peer("send", &h);
    let (r, _) = accept_one(l);
    for (i, len) in peer_sizes().into_iter().enumerate() {
        let mut dst = vec![0u8; len];
        let rr = irecv(r, &mut dst).unwrap();
        assert_eq!(wait(rr), Ok(len));
        assert!(dst == pattern(len, 500 + i as u64), "size {len}");
    }
    let st = child.wait().unwrap();
    assert!(st.success());
    close_recv(r);
    close_listen(l);
}

#[test]
fn killed_peer_fails_the_receive_in_bounded_time() {
    setup();
    if !host_mode("killed_peer_fails_the_receive_in_bounded_time") {
        return;
    }
    let (h, l) = listen();
    let mut child = spawn_peer("stream", &h);
    let (r, _) = accept_one(l);
    let mut dst = vec![0u8; 4 << 20];
    for _ in 0..2 {
        let rr = irecv(r, &mut dst).unwrap();
        assert_eq!(wait(rr), Ok(4 << 20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let t0 = Instant::now();
    // Data already in flight may still land; the error must come within the deadline.
    let err = loop {
        match irecv(r, &mut dst) {
            Err(e) => break e,
            Ok(rr) => match wait(rr) {
                Ok(_) => continue,
                Err(e) => break e,
            },
        }
    };
    assert!(
        err == result::REMOTE_ERROR || err == result::SYSTEM_ERROR,
        "got {err}"
    );
    assert!(t0.elapsed() < DEADLINE);
    close_recv(r);
    close_listen(l);
}
