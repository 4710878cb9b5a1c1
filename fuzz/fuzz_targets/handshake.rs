//! Fuzzes the NIXL handshake's sans-IO machines (`tcpx_core::nixl::handshake`): no backend, no
//! sockets. The first byte picks the role (bit 0: an initiator, else a target) and how the
//! rest is cut into frames (bit 1: by a length byte before each, so garbled, truncated and
//! overlong frames reach `handle_frame`; else by `frame_len`, as the backend reads a stream);
//! the rest is the peer's side of the stream. Between frames the machine is asked what to send.
//!
//! Asserts: no panic; frames go out only in the protocol's order (initiator: `Hello`, then our
//! `ListenHandles`; target: our `ListenHandles`, then `Limits`, and only once both of the
//! initiator's frames are in) and every frame written parses as the one due; a refusal is
//! final (the next frame gets the same error and nothing more is sent); a finished handshake's
//! outcome agrees with the frames it was handed: the peer's `ListenHandles` frame is one whole
//! frame of that kind at the position given, a target's name and channels are its `Hello`'s,
//! an initiator's `Limits` the frame's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::nixl::handshake::{
    frame_len, HandshakeError, InitiatorHandshake, TargetHandshake, Transmit, EMIT_BUF,
};
use tcpx_core::wire::{self, Hello, Kind, Limits, HEADER_LEN, MAX_CONTROL_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let frames = cut(rest, sel & 2 != 0);
    if sel & 1 == 0 {
        target(&frames);
    } else {
        initiator(&frames);
    }
});

/// The peer's frames: by a length byte each, or as a stream reader frames them (a header it
/// refuses ends the stream, handed over whole so the machine refuses it too; a frame cut short
/// by the end of the input is handed over as it is).
fn cut(mut rest: &[u8], by_byte: bool) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while !rest.is_empty() && out.len() < 8 {
        let n = if by_byte {
            let n = usize::from(rest[0]) * 3;
            rest = &rest[1..];
            n
        } else {
            match frame_len(&rest[..rest.len().min(HEADER_LEN)]) {
                Ok(Some(n)) => n,
                Ok(None) | Err(_) => rest.len().min(HEADER_LEN),
            }
        };
        let (f, tail) = rest.split_at(n.min(rest.len()));
        out.push(f);
        rest = tail;
    }
    out
}

/// Everything the machine sends now, checked against what is due next (`due`, in order).
fn sent(
    mut poll: impl FnMut(&mut [u8]) -> Result<Option<Transmit>, wire::Error>,
    due: &mut &[Kind],
) -> usize {
    let mut buf = [0u8; EMIT_BUF];
    let mut n = 0;
    while let Some(t) = poll(&mut buf).expect("the emit buffer takes every frame") {
        let (&want, rest) = due.split_first().expect("nothing more is due");
        match t {
            Transmit::ListenHandles => assert_eq!(want, Kind::ListenHandles),
            Transmit::Frame(len) => {
                let m = wire::parse(&buf[..len]).expect("every frame written parses");
                assert_eq!(m.kind(), want);
            }
        }
        *due = rest;
        n += 1;
    }
    n
}

/// The kind a handed frame's header names if it is a whole current frame a handshake may
/// carry (at most `MAX_CONTROL_FRAME` bytes).
fn whole(f: &[u8]) -> Option<Kind> {
    wire::check_header(f)
        .ok()
        .filter(|_| f.len() <= MAX_CONTROL_FRAME)
}

fn target(frames: &[&[u8]]) {
    let mut t = TargetHandshake::new(4999);
    let mut due: &[Kind] = &[Kind::ListenHandles, Kind::Limits];
    let mut received = Vec::new();
    let mut took = 0;
    let mut failed: Option<HandshakeError> = None;
    for f in frames {
        assert_eq!(
            sent(|b| t.poll_transmit(b), &mut due),
            0,
            "nothing to say yet"
        );
        let start = received.len();
        received.extend_from_slice(f);
        match t.handle_frame(f) {
            Ok(()) => {
                took += 1;
                assert!(took <= 2, "a target takes two frames");
                let kind = whole(f).expect("a frame taken is whole");
                if took == 1 {
                    assert_eq!(kind, Kind::Hello);
                    Hello::parse(f).expect("the first frame taken is a Hello");
                    assert_eq!(start, 0);
                    assert!(t.peer().is_none());
                } else {
                    assert_eq!(kind, Kind::ListenHandles);
                    let p = t.peer().expect("both frames in").clone();
                    assert_eq!(p.handles, start..received.len());
                    let h = Hello::parse(frames[0]).unwrap();
                    assert_eq!((p.name.as_str(), p.channels), (h.name, h.channels));
                    assert_eq!(sent(|b| t.poll_transmit(b), &mut due), 2);
                    assert_eq!(t.outcome(), Some(&p));
                }
            }
            Err(e) => {
                failed = Some(e);
                if took == 0 {
                    if let Some(k) = whole(f).filter(|k| *k != Kind::Hello) {
                        assert_eq!(e, HandshakeError::NoHello(k));
                    }
                }
                break;
            }
        }
    }
    if let Some(e) = failed {
        assert_eq!(t.handle_frame(frames[0]), Err(e), "a refusal is final");
        assert_eq!(sent(|b| t.poll_transmit(b), &mut due), 0);
        assert!(t.outcome().is_none() && t.peer().is_none());
    }
}

fn initiator(frames: &[&[u8]]) {
    let mut i = InitiatorHandshake::new(4, "fuzz");
    let mut due: &[Kind] = &[Kind::Hello, Kind::ListenHandles];
    assert_eq!(sent(|b| i.poll_transmit(b), &mut due), 2);
    let mut received = Vec::new();
    let mut took = 0;
    for f in frames {
        let start = received.len();
        received.extend_from_slice(f);
        match i.handle_frame(f) {
            Ok(()) => {
                took += 1;
                let kind = whole(f).expect("a frame taken is whole");
                if took == 1 {
                    assert_eq!(kind, Kind::ListenHandles);
                    assert!(i.outcome().is_none());
                } else {
                    assert_eq!(took, 2, "an initiator takes two frames");
                    let a = i.outcome().expect("done").clone();
                    assert_eq!(Ok(a.limits), Limits::parse(f));
                    assert_eq!(a.handles(&received), Some(frames[0]));
                    assert_eq!(a.handles.start, 0);
                    assert!(start > 0);
                }
            }
            Err(e) => {
                if let HandshakeError::Unanswered { expected, found } = e {
                    assert_eq!(
                        expected,
                        if took == 0 {
                            Kind::ListenHandles
                        } else {
                            Kind::Limits
                        }
                    );
                    assert_eq!(Some(found), whole(f));
                }
                assert_eq!(i.handle_frame(f), Err(e), "a refusal is final");
                assert!(i.outcome().is_none());
                break;
            }
        }
        assert_eq!(sent(|b| i.poll_transmit(b), &mut due), 0);
    }
}
