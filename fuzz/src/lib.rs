//! Checks shared by the tcpx fuzz targets.
//!
//! Every wire target asserts the same contract: parsing never panics, a parse that succeeds
//! re-emits to exactly the input bytes, and the dispatcher and the per-kind parser agree.

pub mod input;

use core::fmt::Debug;

use tcpx_core::wire::{self, Header, Kind, Message, Repr, HEADER_LEN, MAX_FRAME};

/// Emits `m` into a buffer of exactly its `buffer_len`.
fn emit_message(m: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut out).expect("a parsed message must emit");
    assert_eq!(n, out.len(), "emit length disagrees with buffer_len");
    out
}

/// Any bytes through the dispatcher; a success must re-emit to the same bytes and be
/// accepted by the per-kind parser of its kind (and by no other).
pub fn dispatch_round_trip(data: &[u8]) {
    let parsed = wire::parse(data);
    let Ok(m) = parsed else {
        return;
    };
    assert!(data.len() <= MAX_FRAME);
    assert_eq!(emit_message(&m), data, "re-emit of {m:?}");
    assert_eq!(wire::peek_frame(data), Ok(Some(data.len())));
    let agrees = match m {
        Message::ConnInfo(x) => wire::ConnInfo::parse(data) == Ok(x),
        Message::RegionToken(x) => wire::RegionToken::parse(data) == Ok(x),
        Message::Hello(x) => wire::Hello::parse(data) == Ok(x),
        Message::ListenHandles(x) => wire::ListenHandles::parse(data) == Ok(x),
        Message::WriteAnnounce(x) => wire::WriteAnnounce::parse(data) == Ok(x),
        Message::ReadRequest(x) => wire::ReadRequest::parse(data) == Ok(x),
        Message::ReadAnnounce(x) => wire::ReadAnnounce::parse(data) == Ok(x),
        Message::Ack(x) => wire::Ack::parse(data) == Ok(x),
        Message::Notif(x) => wire::Notif::parse(data) == Ok(x),
        Message::Error(x) => wire::ErrorMsg::parse(data) == Ok(x),
        Message::ReadData(x) => wire::ReadData::parse(data) == Ok(x),
        Message::Limits(x) => wire::Limits::parse(data) == Ok(x),
        Message::Keepalive(x) => wire::Keepalive::parse(data) == Ok(x),
    };
    assert!(agrees, "per-kind parser disagrees with dispatcher on {m:?}");
}

/// Checks one per-kind parser on `data` as given, then on a copy whose header is rewritten
/// to be valid for `R` (so the fuzzer spends its time in the body checks).
pub fn kind_round_trip<'a, R>(data: &'a [u8])
where
    R: Repr<'a> + PartialEq + Debug,
{
    check_kind::<R>(data);
    if data.len() >= HEADER_LEN && data.len() <= MAX_FRAME {
        let mut fixed = data.to_vec();
        fixed[..HEADER_LEN].copy_from_slice(&header_bytes(R::KIND, data.len() as u32));
        // `R` is tied to the lifetime of `data`, so the copy goes through the dispatcher,
        // which runs the same per-kind parser under the same contract.
        dispatch_round_trip(&fixed);
        if let Ok(m) = wire::parse(&fixed) {
            assert_eq!(m.kind(), R::KIND);
        }
    }
}

fn check_kind<'a, R>(data: &'a [u8])
where
    R: Repr<'a> + PartialEq + Debug,
{
    let Ok(m) = R::parse(data) else {
        // The dispatcher must not accept as this kind what the per-kind parser refused.
        if let Ok(other) = wire::parse(data) {
            assert_ne!(other.kind(), R::KIND, "dispatcher accepted {other:?}");
        }
        return;
    };
    let mut out = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut out).expect("a parsed message must emit");
    assert_eq!(n, out.len());
    assert_eq!(out, data, "re-emit of {m:?}");
    assert_eq!(wire::check_header(data), Ok(R::KIND));
    assert_eq!(wire::parse(data).map(|x| x.kind()), Ok(R::KIND));
    // Emitting into a buffer one byte short must fail cleanly.
    if n > 0 {
        assert!(matches!(
            m.emit(&mut out[..n - 1]),
            Err(wire::Error::BufferTooSmall { .. })
        ));
    }
}

/// Treats `data` as a control stream: splits it into frames with `next_frame`, parses each,
/// and checks that framing never over-reads and that a prefix never contradicts the whole.
pub fn frame_stream(data: &[u8]) {
    let full = wire::peek_frame(data);
    for k in 0..data.len().min(HEADER_LEN) {
        let part = wire::peek_frame(&data[..k]);
        let both_magic = matches!(
            (part, full),
            (Err(wire::Error::BadMagic(_)), Err(wire::Error::BadMagic(_)))
        );
        assert!(
            part == Ok(None) || part == full || both_magic,
            "prefix {k}: {part:?}, whole: {full:?}"
        );
    }
    let mut rest = data;
    loop {
        match wire::next_frame(rest) {
            Ok(Some(frame)) => {
                assert!(frame.len() >= HEADER_LEN && frame.len() <= MAX_FRAME);
                assert!(frame.len() <= rest.len());
                assert_eq!(wire::peek_frame(rest), Ok(Some(frame.len())));
                dispatch_round_trip(frame);
                rest = &rest[frame.len()..];
            }
            Ok(None) => {
                // Only a short header or a frame still arriving may stop the reader.
                match wire::peek_frame(rest) {
                    Ok(None) => assert!(rest.len() < HEADER_LEN),
                    Ok(Some(n)) => assert!(n > rest.len()),
                    Err(e) => panic!("next_frame said wait, peek_frame said {e:?}"),
                }
                break;
            }
            Err(_) => break,
        }
    }
}

/// The bytes of a valid header for a `len`-byte frame of `kind`.
fn header_bytes(kind: Kind, len: u32) -> [u8; HEADER_LEN] {
    let h = Header::new(kind, len);
    let mut out = [0u8; HEADER_LEN];
    out[..4].copy_from_slice(&h.magic.get().to_le_bytes());
    out[4..6].copy_from_slice(&h.version.get().to_le_bytes());
    out[6..8].copy_from_slice(&h.kind.get().to_le_bytes());
    out[8..12].copy_from_slice(&h.len.get().to_le_bytes());
    out
}
