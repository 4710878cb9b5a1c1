//! Both handshake machines driven against each other in memory: frames cross as wire bytes,
//! each side reads them as a stream driver does (a header, [`frame_len`], the body) and keeps
//! every frame it read in one buffer, which the outcomes' positions index.

extern crate std;

use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::wire::{Ack, ListenHandles, HEADER_LEN, MAGIC};

fn frame(m: &Message<'_>) -> Vec<u8> {
    let mut b = vec![0; m.buffer_len()];
    m.emit(&mut b).unwrap();
    b
}

/// An engine's conn info: a `ListenHandles` frame of `n` channels, handle bytes `fill`.
fn handles(n: usize, fill: u8) -> Vec<u8> {
    let hs = vec![[fill; crate::abi::HANDLE_MAX_SIZE]; n];
    frame(&Message::ListenHandles(ListenHandles {
        chunk_bytes: 1 << 20,
        split: 8,
        handles: &hs,
    }))
}

fn header(version: u16, kind: u16, len: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&MAGIC.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

/// One side's driver over a machine: what it sends, what it read.
trait Side {
    fn transmit(&mut self, buf: &mut [u8]) -> Option<Transmit>;
    fn take(&mut self, frame: &[u8]) -> Result<(), HandshakeError>;
    fn done(&self) -> bool;
}

impl Side for InitiatorHandshake<'_> {
    fn transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_transmit(buf).unwrap()
    }
    fn take(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        self.handle_frame(frame)
    }
    fn done(&self) -> bool {
        self.outcome().is_some()
    }
}

impl Side for TargetHandshake {
    fn transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_transmit(buf).unwrap()
    }
    fn take(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        self.handle_frame(frame)
    }
    fn done(&self) -> bool {
        self.outcome().is_some()
    }
}

/// Appends everything `side` sends now to `wire` (`conn_info` for its `ListenHandles`).
fn send(side: &mut dyn Side, conn_info: &[u8], wire: &mut Vec<u8>) {
    let mut buf = [0u8; EMIT_BUF];
    while let Some(t) = side.transmit(&mut buf) {
        match t {
            Transmit::Frame(n) => wire.extend_from_slice(&buf[..n]),
            Transmit::ListenHandles => wire.extend_from_slice(conn_info),
        }
    }
}

/// Reads whole frames from the front of `wire` into `side` (and onto `received`) until it is
/// done or `wire` runs out.
fn recv(
    side: &mut dyn Side,
    wire: &mut Vec<u8>,
    received: &mut Vec<u8>,
) -> Result<(), HandshakeError> {
    while !side.done() && wire.len() >= HEADER_LEN {
        let len = frame_len(&wire[..HEADER_LEN])?.unwrap();
        if wire.len() < len {
            break;
        }
        let start = received.len();
        received.extend(wire.drain(..len));
        side.take(&received[start..])?;
    }
    Ok(())
}

/// A whole handshake in memory: the initiator's and target's outcomes and what each read.
struct Run {
    i: InitiatorHandshake<'static>,
    t: TargetHandshake,
    i_read: Vec<u8>,
    t_read: Vec<u8>,
}

fn run(i_info: &[u8], t_info: &[u8]) -> Run {
    let mut r = Run {
        i: InitiatorHandshake::new(4, "alice"),
        t: TargetHandshake::new(4999),
        i_read: Vec::new(),
        t_read: Vec::new(),
    };
    let (mut to_t, mut to_i) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        send(&mut r.i, i_info, &mut to_t);
        recv(&mut r.t, &mut to_t, &mut r.t_read).unwrap();
        send(&mut r.t, t_info, &mut to_i);
        recv(&mut r.i, &mut to_i, &mut r.i_read).unwrap();
    }
    assert!(to_t.is_empty() && to_i.is_empty(), "every frame was read");
    r
}

/// A target fed `bytes` (as the initiator's stream): the error it refused them with.
fn target_refuses(bytes: &[u8]) -> HandshakeError {
    let mut t = TargetHandshake::new(4999);
    let (mut wire, mut read) = (bytes.to_vec(), Vec::new());
    let e = recv(&mut t, &mut wire, &mut read).unwrap_err();
    let mut buf = [0u8; EMIT_BUF];
    assert_eq!(
        t.poll_transmit(&mut buf),
        Ok(None),
        "a refused target sends nothing"
    );
    assert_eq!(t.outcome(), None);
    e
}

/// An initiator that sent its frames, fed `answer` (as the target's stream): the error.
fn initiator_refuses(answer: &[u8]) -> HandshakeError {
    let mut i = InitiatorHandshake::new(2, "alice");
    send(&mut i, &handles(2, 1), &mut Vec::new());
    let (mut wire, mut read) = (answer.to_vec(), Vec::new());
    let e = recv(&mut i, &mut wire, &mut read).unwrap_err();
    assert_eq!(i.outcome(), None);
    e
}

fn limits(max_notif: u32) -> Vec<u8> {
    frame(&Message::Limits(Limits { max_notif }))
}

fn hello(name: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello { channels: 2, name }))
}

#[test]
fn both_sides_finish_with_what_their_drivers_need() {
    let (i_info, t_info) = (handles(4, 0x11), handles(4, 0x22));
    let r = run(&i_info, &t_info);
    let a = r.i.outcome().expect("the initiator finished");
    assert_eq!(a.handles(&r.i_read), Some(&t_info[..]));
    assert_eq!(a.limits, Limits { max_notif: 4999 });
    let o = r.t.outcome().expect("the target finished");
    assert_eq!(o.name, "alice");
    assert_eq!(o.channels, 4);
    assert_eq!(o.handles(&r.t_read), Some(&i_info[..]));
    // What each read is exactly what the other sent, in order.
    assert_eq!(r.t_read, [hello_of(4, "alice"), i_info].concat());
    assert_eq!(r.i_read, [t_info, limits(4999)].concat());
}

fn hello_of(channels: u16, name: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello { channels, name }))
}

#[test]
fn each_side_sends_its_frames_in_order_and_only_at_its_turn() {
    let mut buf = [0u8; EMIT_BUF];
    let mut i = InitiatorHandshake::new(3, "bob");
    match i.poll_transmit(&mut buf) {
        Ok(Some(Transmit::Frame(n))) => assert_eq!(buf[..n], hello_of(3, "bob")),
        other => panic!("{other:?}"),
    }
    assert_eq!(i.poll_transmit(&mut buf), Ok(Some(Transmit::ListenHandles)));
    assert_eq!(i.poll_transmit(&mut buf), Ok(None));
    let mut t = TargetHandshake::new(77);
    assert_eq!(
        t.poll_transmit(&mut buf),
        Ok(None),
        "nothing before the Hello"
    );
    t.handle_frame(&hello("bob")).unwrap();
    assert_eq!(
        t.poll_transmit(&mut buf),
        Ok(None),
        "nothing before the handles"
    );
    assert_eq!(t.peer(), None);
    t.handle_frame(&handles(1, 9)).unwrap();
    assert_eq!(t.peer().map(|o| o.name.as_str()), Some("bob"));
    assert_eq!(t.outcome(), None, "not done before its answer is out");
    assert_eq!(t.poll_transmit(&mut buf), Ok(Some(Transmit::ListenHandles)));
    assert_eq!(t.poll_transmit(&mut buf), Ok(Some(Transmit::Frame(20))));
    assert_eq!(buf[..20], limits(77));
    assert_eq!(t.poll_transmit(&mut buf), Ok(None));
    assert!(t.outcome().is_some());
    // A frame once it is over is refused, and so is every later one.
    let e = t.handle_frame(&limits(1)).unwrap_err();
    assert_eq!(e, HandshakeError::Unexpected(Kind::Limits));
    assert_eq!(t.handle_frame(&hello("bob")), Err(e));
    assert_eq!(t.outcome(), None);
    // An initiator takes no frame before its own are out.
    let mut i = InitiatorHandshake::new(3, "bob");
    assert_eq!(
        i.handle_frame(&handles(1, 1)),
        Err(HandshakeError::Unexpected(Kind::ListenHandles))
    );
}

#[test]
fn a_stream_that_does_not_open_with_hello_is_refused() {
    let e = target_refuses(&handles(2, 1));
    assert_eq!(e, HandshakeError::NoHello(Kind::ListenHandles));
    assert_eq!(e.to_string(), "control stream did not open with Hello");
    let ack = frame(&Message::Ack(Ack { xfer: 1, status: 0 }));
    assert_eq!(target_refuses(&ack), HandshakeError::NoHello(Kind::Ack));
    // A Hello whose name is not UTF-8 is no Hello either.
    let mut bad = hello("ab");
    let n = bad.len();
    bad[n - 1] = 0xff;
    assert_eq!(target_refuses(&bad), HandshakeError::NoHello(Kind::Hello));
}

#[test]
fn a_hello_not_followed_by_listen_handles_is_refused() {
    let e = target_refuses(&[hello("alice"), limits(1)].concat());
    assert_eq!(e, HandshakeError::NoHandles(Kind::Limits));
    assert_eq!(
        e.to_string(),
        "control stream's Hello was followed by Limits, not ListenHandles"
    );
    assert_eq!(
        target_refuses(&[hello("alice"), hello("alice")].concat()),
        HandshakeError::NoHandles(Kind::Hello)
    );
    // The handles' body is the engine's to judge: a header of the right kind is enough here.
    let mut t = TargetHandshake::new(1);
    let garbage = [
        header(VERSION, Kind::ListenHandles as u16, 16),
        vec![2, 0, 0, 0],
    ]
    .concat();
    let (mut wire, mut read) = ([hello("x"), garbage.clone()].concat(), Vec::new());
    recv(&mut t, &mut wire, &mut read).unwrap();
    send(&mut t, &handles(1, 0), &mut Vec::new());
    assert_eq!(t.outcome().unwrap().handles(&read), Some(&garbage[..]));
}

#[test]
fn an_answer_without_listen_handles_then_limits_is_refused() {
    // Limits where the handles are due.
    let e = initiator_refuses(&limits(10));
    assert_eq!(
        e,
        HandshakeError::Unanswered {
            expected: Kind::ListenHandles,
            found: Kind::Limits
        }
    );
    assert_eq!(
        e.to_string(),
        "did not answer the handshake with its ListenHandles (it sent Limits)"
    );
    // Something else where the Limits are due.
    let ack = frame(&Message::Ack(Ack { xfer: 1, status: 0 }));
    let e = initiator_refuses(&[handles(2, 3), ack].concat());
    assert_eq!(
        e,
        HandshakeError::Unanswered {
            expected: Kind::Limits,
            found: Kind::Ack
        }
    );
    assert_eq!(
        e.to_string(),
        "did not answer the handshake with its Limits (it sent Ack)"
    );
    // A Limits frame that does not parse (its reserved word set).
    let mut bad = limits(10);
    bad[16] = 1;
    let e = initiator_refuses(&[handles(2, 3), bad].concat());
    assert_eq!(
        e.to_string(),
        "did not answer the handshake with its Limits"
    );
    // No Limits at all: the initiator waits (its driver's read times out).
    let mut i = InitiatorHandshake::new(2, "alice");
    send(&mut i, &handles(2, 1), &mut Vec::new());
    let (mut wire, mut read) = (handles(2, 3), Vec::new());
    recv(&mut i, &mut wire, &mut read).unwrap();
    assert_eq!(i.outcome(), None);
}

#[test]
fn a_peer_of_another_wire_version_is_refused_by_its_header() {
    let h = header(VERSION + 1, Kind::Hello as u16, 16);
    let e = frame_len(&h).unwrap_err();
    assert_eq!(e, HandshakeError::Version(VERSION + 1));
    assert_eq!(
        e.to_string(),
        std::format!(
            "the peer speaks wire version {}, this agent {VERSION}: every agent must run the \
             same tcpx-nixl wire version",
            VERSION + 1
        )
    );
    assert_eq!(target_refuses(&h), e);
    // A whole frame of another version handed in is refused the same way.
    let mut f = limits(1);
    f[4..6].copy_from_slice(&(VERSION - 1).to_le_bytes());
    let mut i = InitiatorHandshake::new(1, "a");
    send(&mut i, &handles(1, 1), &mut Vec::new());
    i.handle_frame(&handles(1, 1)).unwrap();
    assert_eq!(
        i.handle_frame(&f),
        Err(HandshakeError::Version(VERSION - 1))
    );
}

#[test]
fn oversized_and_garbled_frames_are_refused_before_their_body() {
    let big = header(VERSION, Kind::Hello as u16, MAX_CONTROL_FRAME as u32 + 1);
    assert!(matches!(
        frame_len(&big),
        Err(HandshakeError::Frame(wire::Error::FrameTooLarge { .. }))
    ));
    assert!(matches!(
        target_refuses(&header(VERSION, Kind::Hello as u16, u32::MAX)),
        HandshakeError::Frame(wire::Error::FrameTooLarge { .. })
    ));
    let mut magic = hello("a");
    magic[0] ^= 1;
    let e = target_refuses(&magic);
    assert!(matches!(e, HandshakeError::Frame(wire::Error::BadMagic(_))));
    assert!(e.to_string().contains("bad magic"), "{e}");
    assert_eq!(
        target_refuses(&header(VERSION, 99, 16)),
        HandshakeError::Frame(wire::Error::BadKind(99))
    );
    assert!(matches!(
        target_refuses(&header(VERSION, Kind::Hello as u16, 4)),
        HandshakeError::Frame(wire::Error::LengthMismatch { .. })
    ));
    // A half header: nothing to say yet.
    assert_eq!(frame_len(&hello("a")[..6]), Ok(None));
    // A whole frame handed in with bytes after it, or cut short.
    let mut t = TargetHandshake::new(1);
    let long = [hello("a"), vec![0]].concat();
    assert!(matches!(
        t.handle_frame(&long),
        Err(HandshakeError::Frame(wire::Error::TrailingBytes { .. }))
    ));
    let mut t = TargetHandshake::new(1);
    let h = hello("abc");
    assert!(matches!(
        t.handle_frame(&h[..h.len() - 1]),
        Err(HandshakeError::Frame(wire::Error::Truncated { .. }))
    ));
}

#[test]
fn the_emit_buffer_takes_the_longest_hello_and_a_bad_one_sends_nothing() {
    let name = "n".repeat(wire::MAX_NAME);
    let mut i = InitiatorHandshake::new(16, &name);
    let mut buf = [0u8; EMIT_BUF];
    assert_eq!(
        i.poll_transmit(&mut buf),
        Ok(Some(Transmit::Frame(EMIT_BUF)))
    );
    let long = "n".repeat(wire::MAX_NAME + 1);
    let mut i = InitiatorHandshake::new(16, &long);
    let mut big = [0u8; 2 * EMIT_BUF];
    assert!(i.poll_transmit(&mut big).is_err());
    let mut i = InitiatorHandshake::new(1, "a");
    assert!(matches!(
        i.poll_transmit(&mut buf[..8]),
        Err(wire::Error::BufferTooSmall { .. })
    ));
    // Nothing went out: the Hello is still first.
    assert!(matches!(
        i.poll_transmit(&mut buf),
        Ok(Some(Transmit::Frame(_)))
    ));
}
