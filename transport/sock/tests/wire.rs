//! A hand-written sender that speaks tcpxsock's wire format through `tcpx_core::wire::sock`
//! (handle, hellos, request headers) to a real recv comm: the plugin and the core agree on
//! every byte, a hello with a reserved byte set is refused, a header for the wrong request
//! breaks the comm. Host mode only (a CUDA machine prints SKIP).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use common::*;
use tcpx_core::abi::result;
use tcpx_core::wire::sock::{SockHandle, SockHello, SockRequestHeader, HELLO_LEN};

fn hello(index: u8, nonce: u64) -> SockHello {
    SockHello {
        index,
        nsocks: 1,
        nonce,
        conn_id: 0x5eed_0000_0000_0001,
        chunk_bytes: 64 << 10,
    }
}

#[test]
fn a_hand_written_sender_over_the_core_wire_format() {
    init(false, false, 0);
    if !host_mode("a_hand_written_sender_over_the_core_wire_format") {
        return;
    }
    let (h, l) = listen();
    let handle = SockHandle::parse(&h).expect("the plugin's handle parses in core");
    assert_eq!(SockHandle::stage(&h), Ok(0));

    // A hello that is right in every field but a reserved byte, then the comm's real ones.
    let mut bad = TcpStream::connect(handle.addr).unwrap();
    let mut b = hello(1, handle.nonce).to_bytes().unwrap();
    b[HELLO_LEN - 1] = 1;
    bad.write_all(&b).unwrap();
    let mut ctrl = TcpStream::connect(handle.addr).unwrap();
    ctrl.write_all(&hello(0, handle.nonce).to_bytes().unwrap())
        .unwrap();
    let mut data = TcpStream::connect(handle.addr).unwrap();
    data.write_all(&hello(1, handle.nonce).to_bytes().unwrap())
        .unwrap();

    // The recv comm forms, and the listener closes the bad socket.
    bad.set_nonblocking(true).unwrap();
    let (mut r, mut bad_closed) = (None, false);
    let t0 = Instant::now();
    while r.is_none() || !bad_closed {
        assert!(
            t0.elapsed() < DEADLINE,
            "comm {} bad closed {bad_closed}",
            r.is_some()
        );
        if let Some((c, _)) = accept_step(l).unwrap() {
            assert!(r.is_none(), "one comm only");
            r = Some(c);
        }
        match bad.read(&mut [0u8; 1]) {
            Ok(0) => bad_closed = true,
            Ok(_) => panic!("the listener wrote to a rejected socket"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => bad_closed = true,
        }
        std::thread::yield_now();
    }
    let r = r.unwrap();

    // Request 0: five bytes inline on the control socket.
    let mut dst = vec![0u8; 64];
    let rr = irecv(r, &mut dst).unwrap();
    let hdr = SockRequestHeader::new(5, true, 0).unwrap();
    ctrl.write_all(&hdr.to_bytes().unwrap()).unwrap();
    ctrl.write_all(b"hello").unwrap();
    assert_eq!(wait(rr), Ok(5));
    assert_eq!(&dst[..6], b"hello\0");

    // Request 1 is a 64-byte receive: a header that says 300 bytes breaks the comm.
    let rr = irecv(r, &mut dst).unwrap();
    let hdr = SockRequestHeader::new(300, false, 1).unwrap();
    ctrl.write_all(&hdr.to_bytes().unwrap()).unwrap();
    assert_eq!(
        wait(rr),
        Err(result::INTERNAL_ERROR),
        "more bytes than posted"
    );
    drop(data);
    close_recv(r);
    close_listen(l);
}

#[test]
fn a_header_for_the_wrong_request_breaks_the_comm() {
    init(false, false, 0);
    if !host_mode("a_header_for_the_wrong_request_breaks_the_comm") {
        return;
    }
    let (h, l) = listen();
    let handle = SockHandle::parse(&h).unwrap();
    let mut ctrl = TcpStream::connect(handle.addr).unwrap();
    ctrl.write_all(&hello(0, handle.nonce).to_bytes().unwrap())
        .unwrap();
    let mut data = TcpStream::connect(handle.addr).unwrap();
    data.write_all(&hello(1, handle.nonce).to_bytes().unwrap())
        .unwrap();
    let r = accept_one(l).0;

    let src = pattern(300, 9);
    let mut dst = vec![0u8; 300];
    let rr = irecv(r, &mut dst).unwrap();
    ctrl.write_all(
        &SockRequestHeader::new(300, false, 0)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    data.write_all(&src).unwrap();
    assert_eq!(wait(rr), Ok(300));
    assert!(dst == src, "request 0 lands through the data socket");

    // Request 1's header claims to be request 2's.
    let rr = irecv(r, &mut dst).unwrap();
    ctrl.write_all(
        &SockRequestHeader::new(8, true, 2)
            .unwrap()
            .to_bytes()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(wait(rr), Err(result::REMOTE_ERROR));
    close_recv(r);
    close_listen(l);
}
