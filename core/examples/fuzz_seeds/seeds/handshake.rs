//! Seeds of `handshake`: the peer's side of a handshake stream, after a byte that picks the
//! role (bit 0: the machine is an initiator) and the cut (bit 1: a length byte, in units of 3
//! bytes, before each frame; else frames cut as a stream reader cuts them).

use super::*;
use tcpx_core::nixl::handshake::{frame_len, InitiatorHandshake, TargetHandshake, EMIT_BUF};

/// `handshake` inputs: whole handshakes of either role, and the refusals of each step.
pub(super) fn handshake() -> Named {
    let f = |m: Message<'_>| {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b).unwrap();
        b
    };
    let handle: ListenHandle = [0x5a; HANDLE_MAX_SIZE];
    let handles = |n: usize| {
        f(Message::ListenHandles(ListenHandles {
            chunk_bytes: 1 << 20,
            split: 8,
            handles: &vec![handle; n],
        }))
    };
    let hello = |name: &str| f(Message::Hello(Hello { channels: 2, name }));
    let limits = f(Message::Limits(Limits { max_notif: 4999 }));
    let ack = f(Message::Ack(Ack { xfer: 1, status: 0 }));
    let long_name = "a".repeat(MAX_NAME);
    let mut bad_version = hello("b");
    bad_version[4..6].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let mut too_long = hello("b")[..HEADER_LEN].to_vec();
    too_long[8..12].copy_from_slice(&(wire::MAX_CONTROL_FRAME as u32 + 1).to_le_bytes());
    let mut bad_limits = limits.clone();
    bad_limits[16] = 1;
    // Frames each preceded by a length byte (frames of a multiple of 3 bytes, 765 at most).
    let by_byte = |frames: &[&[u8]]| {
        let mut v = vec![];
        for fr in frames {
            assert!(fr.len() % 3 == 0 && fr.len() / 3 <= 255, "{}", fr.len());
            v.push((fr.len() / 3) as u8);
            v.extend_from_slice(fr);
        }
        v
    };
    let stream = |sel: u8, frames: &[&[u8]]| [&[sel][..], &frames.concat()].concat();
    let target = |frames: &[&[u8]]| stream(0, frames);
    let initiator = |frames: &[&[u8]]| stream(1, frames);
    let hello_b = hello("b");
    let hello_long = hello(&long_name);
    let (h1, h16) = (handles(1), handles(16));
    // `Hello` "bob" is 19 bytes: with a trailing byte, a multiple of 3 cut as one frame.
    let hello_trailing = [hello("bob"), vec![0, 0]].concat();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("target-whole", target(&[&hello_b, &h1])),
        ("target-longest", target(&[&hello_long, &h16])),
        ("target-extra-frame", target(&[&hello_b, &h1, &limits])),
        ("target-no-hello", target(&[&h1, &hello_b])),
        ("target-ack-first", target(&[&ack])),
        ("target-no-handles", target(&[&hello_b, &limits])),
        ("target-version", target(&[&bad_version, &h1])),
        ("target-too-long", target(&[&too_long])),
        (
            "target-garbled-cut",
            [vec![2], by_byte(&[&hello_trailing, &h1[..21]])].concat(),
        ),
        ("initiator-whole", initiator(&[&h1, &limits])),
        ("initiator-longest", initiator(&[&h16, &limits])),
        ("initiator-limits-first", initiator(&[&limits, &h1])),
        ("initiator-ack-for-limits", initiator(&[&h1, &ack])),
        ("initiator-bad-limits", initiator(&[&h1, &bad_limits])),
        ("initiator-version", initiator(&[&h1, &bad_version])),
        (
            "initiator-cut",
            [vec![3], by_byte(&[&h1[..h1.len() - 1], &limits[..18]])].concat(),
        ),
    ];
    // The whole handshakes finish, the others do not (each is refused, or waits for more).
    let mut buf = [0u8; EMIT_BUF];
    for (name, bytes) in &seeds {
        let frames = stream_frames(&bytes[1..]);
        let done = if bytes[0] & 1 == 0 {
            let mut t = TargetHandshake::new(4999);
            for fr in &frames {
                if t.handle_frame(fr).is_err() {
                    break;
                }
            }
            while let Ok(Some(_)) = t.poll_transmit(&mut buf) {}
            t.outcome().is_some()
        } else {
            let mut i = InitiatorHandshake::new(2, "seed");
            while let Ok(Some(_)) = i.poll_transmit(&mut buf) {}
            for fr in &frames {
                if i.handle_frame(fr).is_err() {
                    break;
                }
            }
            i.outcome().is_some()
        };
        let whole = name.ends_with("-whole") || name.ends_with("-longest");
        assert_eq!(done, whole && bytes[0] & 2 == 0, "{name}");
    }
    seeds.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}

/// Whole frames of a stream, cut as the backend reads it (stopping at a refused header or a
/// frame cut short).
fn stream_frames(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = vec![];
    while let Ok(Some(n)) = frame_len(&rest[..rest.len().min(HEADER_LEN)]) {
        let Some(fr) = rest.get(..n) else { break };
        out.push(fr);
        rest = &rest[n..];
    }
    out
}
