//! Wire tests: one unit test per error kind, emit→parse round trips of random messages, and
//! "any bytes (random or mutated valid frames) parse or error, and what parses re-emits
//! byte-identically".

extern crate std;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::mem::MemKind;

// ---------- helpers ----------

/// Emits `m` into a fresh vector of exactly `buffer_len` bytes.
fn emit_vec(m: &Message<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).expect("emit of a valid message");
    assert_eq!(n, v.len());
    v
}

fn set_u16(v: &mut [u8], off: usize, x: u16) {
    v[off..off + 2].copy_from_slice(&x.to_le_bytes());
}

fn set_u32(v: &mut [u8], off: usize, x: u32) {
    v[off..off + 4].copy_from_slice(&x.to_le_bytes());
}

fn set_u64(v: &mut [u8], off: usize, x: u64) {
    v[off..off + 8].copy_from_slice(&x.to_le_bytes());
}

/// Checks everything a parsed frame promises: each parser agrees, and re-emitting gives the
/// same bytes.
fn assert_reemits(buf: &[u8]) {
    let Ok(m) = parse(buf) else { return };
    assert_eq!(emit_vec(&m), buf, "re-emit of {m:?}");
    assert_eq!(peek_frame(buf), Ok(Some(buf.len())));
    assert_eq!(check_header(buf), Ok(m.kind()));
}

/// Runs every parser on `buf`; none may panic, and only the one for the header's kind may
/// succeed.
fn parse_all(buf: &[u8]) {
    let dispatched = parse(buf).ok().map(|m| m.kind());
    let per_kind = [
        ConnInfo::parse(buf).is_ok(),
        RegionToken::parse(buf).is_ok(),
        Hello::parse(buf).is_ok(),
        ListenHandles::parse(buf).is_ok(),
        WriteAnnounce::parse(buf).is_ok(),
        ReadRequest::parse(buf).is_ok(),
        ReadAnnounce::parse(buf).is_ok(),
        Ack::parse(buf).is_ok(),
        Notif::parse(buf).is_ok(),
        ErrorMsg::parse(buf).is_ok(),
        ReadData::parse(buf).is_ok(),
        Limits::parse(buf).is_ok(),
        Keepalive::parse(buf).is_ok(),
    ];
    for (kind, ok) in Kind::ALL.iter().zip(per_kind) {
        assert_eq!(ok, dispatched == Some(*kind), "{kind:?}");
    }
    let _ = peek_frame(buf);
    let _ = next_frame(buf);
    assert_reemits(buf);
}

/// Owned contents of any message, so proptest can generate them and tests can view them.
#[derive(Debug, Clone)]
enum Owned {
    ConnInfo {
        protocol: u16,
        addr: SocketAddr,
        channels: u16,
        name: String,
    },
    RegionToken(RegionToken),
    Hello {
        channels: u16,
        name: String,
    },
    ListenHandles(Vec<ListenHandle>),
    WriteAnnounce {
        xfer: u64,
        segs: Vec<Segment>,
        notif: Option<Vec<u8>>,
        data: Option<Vec<u8>>,
    },
    ReadRequest {
        xfer: u64,
        segs: Vec<Segment>,
        inline_ok: bool,
    },
    ReadData {
        xfer: u64,
        data: Vec<u8>,
    },
    ReadAnnounce(ReadAnnounce),
    Ack(Ack),
    Notif(Vec<u8>),
    Error {
        code: u32,
        xfer: u64,
        text: String,
    },
    Limits(Limits),
    Keepalive,
}

impl Owned {
    fn view(&self) -> Message<'_> {
        match self {
            Owned::ConnInfo {
                protocol,
                addr,
                channels,
                name,
            } => Message::ConnInfo(ConnInfo {
                protocol: *protocol,
                addr: *addr,
                channels: *channels,
                name,
            }),
            Owned::RegionToken(t) => Message::RegionToken(*t),
            Owned::Hello { channels, name } => Message::Hello(Hello {
                channels: *channels,
                name,
            }),
            Owned::ListenHandles(h) => Message::ListenHandles(ListenHandles {
                chunk_bytes: 512 * 1024,
                split: 8,
                handles: h,
            }),
            Owned::WriteAnnounce {
                xfer,
                segs,
                notif,
                data,
            } => Message::WriteAnnounce(WriteAnnounce {
                xfer: *xfer,
                segments: segs,
                notif: notif.as_deref(),
                data: data.as_deref(),
            }),
            Owned::ReadRequest {
                xfer,
                segs,
                inline_ok,
            } => Message::ReadRequest(ReadRequest {
                xfer: *xfer,
                segments: segs,
                inline_ok: *inline_ok,
            }),
            Owned::ReadData { xfer, data } => Message::ReadData(ReadData { xfer: *xfer, data }),
            Owned::ReadAnnounce(r) => Message::ReadAnnounce(*r),
            Owned::Ack(a) => Message::Ack(*a),
            Owned::Notif(n) => Message::Notif(Notif { msg: n }),
            Owned::Error { code, xfer, text } => Message::Error(ErrorMsg {
                code: *code,
                xfer: *xfer,
                text,
            }),
            Owned::Limits(l) => Message::Limits(*l),
            Owned::Keepalive => Message::Keepalive(Keepalive),
        }
    }
}

fn sample_segments(n: usize) -> Vec<Segment> {
    (0..n as u64)
        .map(|i| Segment::new(i % 3, 0xfeed_0000 + i, 0x7000_0000 + i * 4096, 4096))
        .collect()
}

/// One small valid message of each kind.
fn samples() -> Vec<Owned> {
    vec![
        Owned::ConnInfo {
            protocol: VERSION,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 47000),
            channels: 4,
            name: "prefill-0".to_string(),
        },
        Owned::ConnInfo {
            protocol: VERSION,
            addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 47001),
            channels: 2,
            name: "decode-ü".to_string(),
        },
        Owned::RegionToken(RegionToken {
            base: 0x7f00_0000_0000,
            len: 1 << 30,
            mem: MemKind::Device,
            device: 3,
            region: 17,
            key: 0x0123_4567_89ab_cdef,
        }),
        Owned::Hello {
            channels: 2,
            name: "prefill-0".to_string(),
        },
        Owned::ListenHandles(vec![[0xa5; 128], [0x5a; 128]]),
        Owned::WriteAnnounce {
            xfer: 42,
            segs: sample_segments(3),
            notif: Some(b"done".to_vec()),
            data: None,
        },
        Owned::WriteAnnounce {
            xfer: 43,
            segs: sample_segments(1),
            notif: None,
            data: None,
        },
        Owned::WriteAnnounce {
            xfer: 46,
            segs: sample_segments(2),
            notif: Some(b"inline".to_vec()),
            data: Some((0..8192u32).map(|i| (i * 13) as u8).collect()),
        },
        Owned::ReadRequest {
            xfer: 44,
            segs: sample_segments(2),
            inline_ok: false,
        },
        Owned::ReadRequest {
            xfer: 45,
            segs: sample_segments(1),
            inline_ok: true,
        },
        Owned::ReadData {
            xfer: 45,
            data: b"kv block".to_vec(),
        },
        Owned::ReadAnnounce(ReadAnnounce { xfer: 44 }),
        Owned::Ack(Ack {
            xfer: 42,
            status: -2,
        }),
        Owned::Notif(b"kv-ready".to_vec()),
        Owned::Error {
            code: 3,
            xfer: ErrorMsg::NO_XFER,
            text: "segment 2 outside region 17".to_string(),
        },
        Owned::Limits(Limits { max_notif: 1 << 20 }),
        Owned::Keepalive,
    ]
}

fn sample_bytes(kind: Kind) -> Vec<u8> {
    let s = samples();
    let o = s.iter().find(|o| o.view().kind() == kind).unwrap();
    emit_vec(&o.view())
}

// ---------- unit tests: valid frames ----------

#[test]
fn samples_round_trip() {
    for o in samples() {
        let m = o.view();
        let bytes = emit_vec(&m);
        assert_eq!(parse(&bytes), Ok(m));
        assert_eq!(&bytes[..4], b"TCPX");
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            bytes.len()
        );
    }
}

#[test]
fn layout_of_an_ack_is_as_documented() {
    let bytes = emit_vec(&Message::Ack(Ack {
        xfer: 0x0102_0304_0506_0708,
        status: -1,
    }));
    let want: [u8; 24] = [
        b'T',
        b'C',
        b'P',
        b'X',
        VERSION as u8,
        0,
        8,
        0,
        24,
        0,
        0,
        0, // header
        8,
        7,
        6,
        5,
        4,
        3,
        2,
        1, // xfer
        0xff,
        0xff,
        0xff,
        0xff, // status
    ];
    assert_eq!(bytes, want);
}

#[test]
fn max_sized_messages_round_trip() {
    let segs = sample_segments(MAX_SEGMENTS);
    let notif = vec![7u8; MAX_NOTIF];
    let w = Message::WriteAnnounce(WriteAnnounce {
        xfer: 1,
        segments: &segs,
        notif: Some(&notif),
        data: None,
    });
    let bytes = emit_vec(&w);
    assert!(bytes.len() <= MAX_FRAME);
    assert_eq!(parse(&bytes), Ok(w));
    // Inline data at its limit over the most segments, with the longest notification.
    let per = (MAX_INLINE_WRITE / MAX_SEGMENTS) as u64;
    let small: Vec<Segment> = (0..MAX_SEGMENTS as u64)
        .map(|i| Segment::new(1, 2, i * 4096, per))
        .collect();
    let data = vec![9u8; MAX_INLINE_WRITE];
    let w = Message::WriteAnnounce(WriteAnnounce {
        xfer: 2,
        segments: &small,
        notif: Some(&notif),
        data: Some(&data),
    });
    let bytes = emit_vec(&w);
    assert!(bytes.len() <= MAX_FRAME);
    assert_eq!(parse(&bytes), Ok(w));
    // Without the notification every announce fits the control bound.
    let w = Message::WriteAnnounce(WriteAnnounce {
        xfer: 3,
        segments: &small,
        notif: None,
        data: Some(&data),
    });
    assert!(emit_vec(&w).len() <= MAX_CONTROL_FRAME);
    let n = Message::Notif(Notif { msg: &notif });
    assert_eq!(emit_vec(&n).len(), 16 + MAX_NOTIF);
    let l = Message::Limits(Limits {
        max_notif: MAX_NOTIF as u32,
    });
    assert_eq!(parse(&emit_vec(&l)), Ok(l));
    let handles = [[1u8; 128]; MAX_CHANNELS];
    let l = Message::ListenHandles(ListenHandles {
        chunk_bytes: crate::plan::MAX_CHUNK_BYTES,
        split: crate::plan::MAX_SPLIT_CHUNKS,
        handles: &handles,
    });
    assert_eq!(parse(&emit_vec(&l)), Ok(l));
    let name = "n".repeat(MAX_NAME);
    let h = Message::Hello(Hello {
        channels: MAX_CHANNELS as u16,
        name: &name,
    });
    assert_eq!(parse(&emit_vec(&h)), Ok(h));
}

#[test]
fn empty_notif_differs_from_none() {
    let segs = sample_segments(1);
    let some = emit_vec(&Message::WriteAnnounce(WriteAnnounce {
        xfer: 1,
        segments: &segs,
        notif: Some(&[]),
        data: None,
    }));
    let none = emit_vec(&Message::WriteAnnounce(WriteAnnounce {
        xfer: 1,
        segments: &segs,
        notif: None,
        data: None,
    }));
    assert_eq!(WriteAnnounce::parse(&some).unwrap().notif, Some(&[][..]));
    assert_eq!(WriteAnnounce::parse(&none).unwrap().notif, None);
}

#[test]
fn peek_and_split_frame_a_stream() {
    let a = sample_bytes(Kind::Ack);
    let n = sample_bytes(Kind::Notif);
    let mut stream = a.clone();
    stream.extend_from_slice(&n);
    for k in 0..HEADER_LEN {
        assert_eq!(peek_frame(&stream[..k]), Ok(None), "prefix {k}");
    }
    assert_eq!(peek_frame(&stream[..HEADER_LEN]), Ok(Some(a.len())));
    assert_eq!(next_frame(&stream[..a.len() - 1]), Ok(None));
    let f1 = next_frame(&stream).unwrap().unwrap();
    assert_eq!(f1, &a[..]);
    let rest = &stream[f1.len()..];
    let f2 = next_frame(rest).unwrap().unwrap();
    assert_eq!(f2, &n[..]);
    assert_eq!(f1.len() + f2.len(), stream.len());
    assert_eq!(parse(f2).unwrap().kind(), Kind::Notif);
}

// ---------- unit tests: one per error kind ----------

#[test]
fn error_truncated() {
    assert_eq!(parse(&[]), Err(Error::Truncated { need: 12, have: 0 }));
    let a = sample_bytes(Kind::Ack);
    assert_eq!(
        parse(&a[..20]),
        Err(Error::Truncated { need: 24, have: 20 })
    );
    assert_eq!(
        Ack::parse(&a[..11]),
        Err(Error::Truncated { need: 12, have: 11 })
    );
}

#[test]
fn error_trailing_bytes() {
    let mut a = sample_bytes(Kind::Ack);
    a.push(0);
    assert_eq!(
        parse(&a),
        Err(Error::TrailingBytes {
            declared: 24,
            have: 25
        })
    );
}

#[test]
fn error_bad_magic() {
    let mut a = sample_bytes(Kind::Ack);
    a[0] = b'U';
    assert!(matches!(parse(&a), Err(Error::BadMagic(_))));
    // A stream reader learns of a wrong magic from its very first byte.
    assert!(matches!(peek_frame(b"U"), Err(Error::BadMagic(_))));
    assert!(matches!(peek_frame(b"TCPY"), Err(Error::BadMagic(_))));
    assert_eq!(peek_frame(b"TCP"), Ok(None));
}

#[test]
fn error_bad_version() {
    let mut a = sample_bytes(Kind::Ack);
    set_u16(&mut a, 4, 1);
    assert_eq!(parse(&a), Err(Error::BadVersion(1)));
    assert_eq!(peek_frame(&a), Err(Error::BadVersion(1)));
}

#[test]
fn error_bad_kind() {
    let mut a = sample_bytes(Kind::Ack);
    for k in [0u16, 14, u16::MAX] {
        set_u16(&mut a, 6, k);
        assert_eq!(parse(&a), Err(Error::BadKind(k)));
        assert_eq!(Ack::parse(&a), Err(Error::BadKind(k)));
    }
}

#[test]
fn error_unexpected_kind() {
    let r = sample_bytes(Kind::ReadAnnounce);
    assert_eq!(
        Ack::parse(&r),
        Err(Error::UnexpectedKind {
            expected: Kind::Ack,
            found: Kind::ReadAnnounce
        })
    );
}

#[test]
fn error_frame_too_large() {
    let mut a = sample_bytes(Kind::Ack);
    set_u32(&mut a, 8, MAX_FRAME as u32 + 1);
    let too_large = Error::FrameTooLarge {
        len: MAX_FRAME as u32 + 1,
        max: MAX_FRAME as u32,
    };
    assert_eq!(peek_frame(&a[..HEADER_LEN]), Err(too_large));
    assert_eq!(parse(&a), Err(too_large));
}

#[test]
fn a_reader_bound_refuses_longer_frames_from_the_header() {
    let n = emit_vec(&Message::Notif(Notif { msg: &[1u8; 5000] }));
    assert_eq!(peek_frame_within(&n, n.len()), Ok(Some(n.len())));
    assert_eq!(next_frame_within(&n, n.len()), Ok(Some(&n[..])));
    let refused = Error::FrameTooLarge {
        len: n.len() as u32,
        max: (n.len() - 1) as u32,
    };
    assert_eq!(
        peek_frame_within(&n[..HEADER_LEN], n.len() - 1),
        Err(refused)
    );
    assert_eq!(next_frame_within(&n, n.len() - 1), Err(refused));
    // A bound above the format's maximum is the format's maximum.
    let mut a = sample_bytes(Kind::Ack);
    set_u32(&mut a, 8, MAX_FRAME as u32 + 1);
    assert_eq!(
        peek_frame_within(&a, usize::MAX),
        Err(Error::FrameTooLarge {
            len: MAX_FRAME as u32 + 1,
            max: MAX_FRAME as u32
        })
    );
}

#[test]
fn limits_and_keepalive_check_their_fields() {
    let mut l = sample_bytes(Kind::Limits);
    assert_eq!(Limits::parse(&l), Ok(Limits { max_notif: 1 << 20 }));
    set_u32(&mut l, 12, MAX_NOTIF as u32 + 1);
    assert!(matches!(
        Limits::parse(&l),
        Err(Error::OutOfRange {
            field: Field::Notif,
            ..
        })
    ));
    set_u32(&mut l, 12, 0);
    set_u32(&mut l, 16, 1);
    assert_eq!(
        Limits::parse(&l),
        Err(Error::NonZeroReserved(Field::Reserved))
    );
    assert!(Limits {
        max_notif: MAX_NOTIF as u32 + 1
    }
    .emit(&mut [0u8; 64])
    .is_err());
    let mut k = sample_bytes(Kind::Keepalive);
    assert_eq!(k.len(), 16);
    assert_eq!(Keepalive::parse(&k), Ok(Keepalive));
    set_u32(&mut k, 12, 7);
    assert_eq!(
        Keepalive::parse(&k),
        Err(Error::NonZeroReserved(Field::Reserved))
    );
}

#[test]
fn error_length_mismatch() {
    // Header length below the header itself.
    let mut a = sample_bytes(Kind::Ack);
    set_u32(&mut a, 8, 4);
    assert_eq!(
        peek_frame(&a),
        Err(Error::LengthMismatch {
            declared: 4,
            expected: 12
        })
    );
    // Declared (and present) length shorter than the fixed part.
    let mut short = sample_bytes(Kind::Ack);
    short.truncate(20);
    set_u32(&mut short, 8, 20);
    assert_eq!(
        parse(&short),
        Err(Error::LengthMismatch {
            declared: 20,
            expected: 24
        })
    );
    // A count that disagrees with the declared length.
    let mut w = sample_bytes(Kind::WriteAnnounce);
    set_u32(&mut w, 20, 4);
    assert_eq!(
        parse(&w),
        Err(Error::LengthMismatch {
            declared: 32 + 3 * 32 + 4,
            expected: 32 + 4 * 32 + 4
        })
    );
    let mut h = sample_bytes(Kind::Hello);
    set_u16(&mut h, 14, 3);
    assert!(matches!(parse(&h), Err(Error::LengthMismatch { .. })));
}

#[test]
fn error_out_of_range() {
    // ListenHandles' split (bytes 14..16; a reserved zero before wire version 5).
    for bad in [0u16, crate::plan::MAX_SPLIT_CHUNKS + 1] {
        let mut l = sample_bytes(Kind::ListenHandles);
        set_u16(&mut l, 14, bad);
        assert_eq!(
            parse(&l),
            Err(Error::OutOfRange {
                field: Field::Split,
                value: bad.into(),
                min: 1,
                max: crate::plan::MAX_SPLIT_CHUNKS.into()
            })
        );
    }
    let mut c = sample_bytes(Kind::ConnInfo);
    for bad in [0u16, 17] {
        set_u16(&mut c, 14, bad);
        assert_eq!(
            parse(&c),
            Err(Error::OutOfRange {
                field: Field::Channels,
                value: bad.into(),
                min: 1,
                max: 16
            })
        );
    }
    let mut h = sample_bytes(Kind::Hello);
    set_u16(&mut h, 14, 257);
    assert!(matches!(
        parse(&h),
        Err(Error::OutOfRange {
            field: Field::AgentName,
            value: 257,
            ..
        })
    ));
    set_u16(&mut h, 14, 0);
    assert!(matches!(
        parse(&h),
        Err(Error::OutOfRange {
            field: Field::AgentName,
            value: 0,
            ..
        })
    ));
    let mut l = sample_bytes(Kind::ListenHandles);
    set_u16(&mut l, 12, 0);
    assert!(matches!(
        parse(&l),
        Err(Error::OutOfRange {
            field: Field::Handles,
            ..
        })
    ));
    let mut w = sample_bytes(Kind::WriteAnnounce);
    set_u32(&mut w, 20, MAX_SEGMENTS as u32 + 1);
    assert!(matches!(
        parse(&w),
        Err(Error::OutOfRange {
            field: Field::Segments,
            value: 1025,
            ..
        })
    ));
    let mut w = sample_bytes(Kind::WriteAnnounce);
    set_u32(&mut w, 24, MAX_NOTIF as u32 + 1);
    assert!(matches!(
        parse(&w),
        Err(Error::OutOfRange {
            field: Field::Notif,
            ..
        })
    ));
    // Notification bytes without the notif flag.
    let mut w = sample_bytes(Kind::WriteAnnounce);
    set_u32(&mut w, 28, 0);
    assert!(matches!(
        parse(&w),
        Err(Error::OutOfRange {
            field: Field::Notif,
            max: 0,
            ..
        })
    ));
    // Inline data longer than allowed, or not as long as the segments say.
    let big = [Segment::new(0, 0, 0, MAX_INLINE_WRITE as u64 + 1)];
    let w = WriteAnnounce {
        xfer: 1,
        segments: &big,
        notif: None,
        data: Some(&[0u8; MAX_INLINE_WRITE + 1]),
    };
    assert!(matches!(
        w.emit(&mut vec![0u8; MAX_FRAME]),
        Err(Error::OutOfRange {
            field: Field::Data,
            ..
        })
    ));
    let one = [Segment::new(0, 0, 0, 100)];
    let short = WriteAnnounce {
        xfer: 1,
        segments: &one,
        notif: None,
        data: Some(&[0u8; 99]),
    };
    assert!(matches!(
        short.emit(&mut [0u8; 512]),
        Err(Error::OutOfRange {
            field: Field::Data,
            min: 100,
            max: 100,
            ..
        })
    ));
    let good = emit_vec(&Message::WriteAnnounce(WriteAnnounce {
        data: Some(&[5u8; 100]),
        ..short
    }));
    assert!(parse(&good).is_ok());
    // Declared segment longer than the limit (data of that length would not fit a frame).
    let mut w = good.clone();
    set_u64(&mut w, 32 + 24, MAX_INLINE_WRITE as u64 + 1);
    assert!(matches!(
        parse(&w),
        Err(Error::OutOfRange {
            field: Field::Data,
            ..
        })
    ));
    // Segment says 101 bytes, the frame carries 100; and a byte too many.
    let mut w = good.clone();
    set_u64(&mut w, 32 + 24, 101);
    assert!(matches!(parse(&w), Err(Error::LengthMismatch { .. })));
    let mut w = good.clone();
    w.push(0);
    let n = w.len() as u32;
    set_u32(&mut w, 8, n);
    assert!(matches!(parse(&w), Err(Error::LengthMismatch { .. })));
    // The inline flag with the segment list cut short.
    let mut w = good.clone();
    w.truncate(40);
    set_u32(&mut w, 8, 40);
    assert!(parse(&w).is_err());
    let mut e = sample_bytes(Kind::Error);
    set_u32(&mut e, 16, MAX_ERROR_TEXT as u32 + 1);
    assert!(matches!(
        parse(&e),
        Err(Error::OutOfRange {
            field: Field::ErrorText,
            ..
        })
    ));
    let mut n = sample_bytes(Kind::Notif);
    set_u32(&mut n, 12, MAX_NOTIF as u32 + 1);
    assert!(matches!(
        parse(&n),
        Err(Error::OutOfRange {
            field: Field::Notif,
            ..
        })
    ));
    // Emit refuses what parse would refuse.
    let segs = sample_segments(MAX_SEGMENTS + 1);
    let too_many = ReadRequest {
        xfer: 1,
        segments: &segs,
        inline_ok: false,
    };
    let mut buf = vec![0u8; too_many.buffer_len()];
    assert!(matches!(
        too_many.emit(&mut buf),
        Err(Error::OutOfRange {
            field: Field::Segments,
            ..
        })
    ));
    let hello = Hello {
        channels: 0,
        name: "a",
    };
    assert!(matches!(
        hello.emit(&mut [0u8; 64]),
        Err(Error::OutOfRange {
            field: Field::Channels,
            ..
        })
    ));
}

#[test]
fn read_request_flags_and_read_data_are_checked() {
    // ReadRequest: bit 0 of flags @24 is "inline OK"; any other bit is refused.
    let mut r = sample_bytes(Kind::ReadRequest);
    assert_eq!(u32::from_le_bytes(r[24..28].try_into().unwrap()), 0);
    set_u32(&mut r, 24, 1);
    assert!(matches!(parse(&r), Ok(Message::ReadRequest(q)) if q.inline_ok));
    set_u32(&mut r, 24, 2);
    assert_eq!(parse(&r), Err(Error::NonZeroReserved(Field::Flags)));
    // ReadData: xfer @12, data_len @20, reserved @24, data @28.
    let d = ReadData {
        xfer: 0x0102_0304_0506_0708,
        data: b"abc",
    };
    let bytes = emit_vec(&Message::ReadData(d));
    let want: [u8; 31] = [
        b'T',
        b'C',
        b'P',
        b'X',
        VERSION as u8,
        0,
        11,
        0,
        31,
        0,
        0,
        0, // header
        8,
        7,
        6,
        5,
        4,
        3,
        2,
        1, // xfer
        3,
        0,
        0,
        0, // data_len
        0,
        0,
        0,
        0, // reserved
        b'a',
        b'b',
        b'c',
    ];
    assert_eq!(bytes, want);
    let mut bad = bytes.clone();
    set_u32(&mut bad, 24, 1);
    assert_eq!(parse(&bad), Err(Error::NonZeroReserved(Field::Reserved)));
    let mut long = bytes.clone();
    set_u32(&mut long, 20, 4);
    assert!(matches!(parse(&long), Err(Error::LengthMismatch { .. })));
    let mut huge = bytes;
    set_u32(&mut huge, 20, MAX_INLINE as u32 + 1);
    assert!(matches!(
        parse(&huge),
        Err(Error::OutOfRange {
            field: Field::Data,
            ..
        })
    ));
    let big = vec![0u8; MAX_INLINE + 1];
    let too_big = ReadData {
        xfer: 1,
        data: &big,
    };
    assert!(matches!(
        too_big.emit(&mut vec![0u8; too_big.buffer_len()]),
        Err(Error::OutOfRange {
            field: Field::Data,
            ..
        })
    ));
}

#[test]
fn error_range_overflow() {
    let mut r = sample_bytes(Kind::ReadRequest);
    // Second segment: addr = u64::MAX, len 4096.
    set_u64(&mut r, 28 + 32 + 16, u64::MAX);
    assert_eq!(
        parse(&r),
        Err(Error::RangeOverflow {
            field: Field::Segments,
            index: 1
        })
    );
    let mut t = sample_bytes(Kind::RegionToken);
    set_u64(&mut t, 12, u64::MAX - 5);
    assert_eq!(
        parse(&t),
        Err(Error::RangeOverflow {
            field: Field::Region,
            index: 0
        })
    );
    let segs = [Segment::new(0, 0, u64::MAX, 1)];
    let w = WriteAnnounce {
        xfer: 0,
        segments: &segs,
        notif: None,
        data: None,
    };
    assert!(matches!(
        w.emit(&mut [0u8; 128]),
        Err(Error::RangeOverflow { .. })
    ));
    // The largest range that still fits is fine.
    let edge = [Segment::new(0, 0, u64::MAX - 1, 1)];
    let ok = Message::ReadRequest(ReadRequest {
        xfer: 0,
        segments: &edge,
        inline_ok: true,
    });
    assert_eq!(parse(&emit_vec(&ok)), Ok(ok));
}

#[test]
fn error_bad_utf8() {
    let mut h = sample_bytes(Kind::Hello);
    h[16] = 0xff;
    assert_eq!(parse(&h), Err(Error::BadUtf8(Field::AgentName)));
    let mut c = sample_bytes(Kind::ConnInfo);
    c[40] = 0xc3; // a lead byte followed by ASCII
    assert_eq!(parse(&c), Err(Error::BadUtf8(Field::AgentName)));
    let mut e = sample_bytes(Kind::Error);
    e[28] = 0x80;
    assert_eq!(parse(&e), Err(Error::BadUtf8(Field::ErrorText)));
}

#[test]
fn error_bad_enum() {
    let mut t = sample_bytes(Kind::RegionToken);
    set_u16(&mut t, 48, 2);
    assert_eq!(
        parse(&t),
        Err(Error::BadEnum {
            field: Field::MemKind,
            value: 2
        })
    );
    let mut c = sample_bytes(Kind::ConnInfo);
    c[16] = 5;
    assert_eq!(
        parse(&c),
        Err(Error::BadEnum {
            field: Field::Family,
            value: 5
        })
    );
}

#[test]
fn error_non_zero_reserved() {
    let mut c = sample_bytes(Kind::ConnInfo);
    c[17] = 1;
    assert_eq!(parse(&c), Err(Error::NonZeroReserved(Field::Reserved)));
    let mut c = sample_bytes(Kind::ConnInfo);
    c[38] = 1;
    assert_eq!(parse(&c), Err(Error::NonZeroReserved(Field::Reserved)));
    // IPv4 uses only the first four address bytes.
    let mut c = sample_bytes(Kind::ConnInfo);
    c[20 + 4] = 1;
    assert_eq!(parse(&c), Err(Error::NonZeroReserved(Field::Address)));
    let mut t = sample_bytes(Kind::RegionToken);
    t[50] = 1;
    assert_eq!(parse(&t), Err(Error::NonZeroReserved(Field::Reserved)));
    let mut w = sample_bytes(Kind::WriteAnnounce);
    set_u32(&mut w, 28, 4 | 1);
    assert_eq!(parse(&w), Err(Error::NonZeroReserved(Field::Flags)));
}

#[test]
fn error_buffer_too_small() {
    for o in samples() {
        let m = o.view();
        let need = m.buffer_len();
        let mut buf = vec![0xeeu8; need - 1];
        assert_eq!(
            m.emit(&mut buf),
            Err(Error::BufferTooSmall {
                need,
                have: need - 1
            })
        );
        // Nothing was written on failure.
        assert!(buf.iter().all(|&b| b == 0xee));
        // A bigger buffer is fine; only the front is written.
        let mut big = vec![0xeeu8; need + 3];
        assert_eq!(m.emit(&mut big), Ok(need));
        assert_eq!(&big[need..], &[0xee; 3]);
    }
}

#[test]
fn errors_display() {
    let all = [
        Error::Truncated { need: 1, have: 0 },
        Error::TrailingBytes {
            declared: 1,
            have: 2,
        },
        Error::BadMagic(0),
        Error::BadVersion(9),
        Error::BadKind(99),
        Error::UnexpectedKind {
            expected: Kind::Ack,
            found: Kind::Hello,
        },
        Error::FrameTooLarge {
            len: 1 << 20,
            max: 1 << 16,
        },
        Error::LengthMismatch {
            declared: 1,
            expected: 2,
        },
        Error::OutOfRange {
            field: Field::Segments,
            value: 2000,
            min: 0,
            max: 1024,
        },
        Error::RangeOverflow {
            field: Field::Segments,
            index: 3,
        },
        Error::BadUtf8(Field::AgentName),
        Error::BadEnum {
            field: Field::MemKind,
            value: 7,
        },
        Error::NonZeroReserved(Field::Flags),
        Error::BufferTooSmall { need: 2, have: 1 },
    ];
    for e in all {
        assert!(!e.to_string().is_empty(), "{e:?}");
    }
}

#[test]
fn kind_values_are_stable() {
    for (i, k) in Kind::ALL.iter().enumerate() {
        assert_eq!(*k as u16 as usize, i + 1);
        assert_eq!(Kind::from_u16(*k as u16), Some(*k));
    }
    assert_eq!(Kind::from_u16(0), None);
    assert_eq!(Kind::from_u16(14), None);
    assert_eq!(MAGIC.to_le_bytes(), *b"TCPX");
}

// ---------- property tests ----------

fn segment() -> impl Strategy<Value = Segment> {
    (any::<u64>(), any::<u64>(), any::<u64>())
        .prop_flat_map(|(r, k, a)| (Just(r), Just(k), Just(a), 0..=u64::MAX - a))
        .prop_map(|(r, k, a, l)| Segment::new(r, k, a, l))
}

fn name() -> impl Strategy<Value = String> {
    // Up to 64 chars of up to 4 bytes each stays within MAX_NAME.
    "\\PC{1,64}"
}

fn owned() -> impl Strategy<Value = Owned> {
    let handle = prop::collection::vec(any::<u8>(), 128).prop_map(|v| {
        let mut h = [0u8; 128];
        h.copy_from_slice(&v);
        h
    });
    prop_oneof![
        (
            any::<u16>(),
            any::<IpAddr>(),
            any::<u16>(),
            1..=MAX_CHANNELS as u16,
            name()
        )
            .prop_map(|(protocol, ip, port, channels, name)| Owned::ConnInfo {
                protocol,
                addr: SocketAddr::new(ip, port),
                channels,
                name
            }),
        (
            any::<u64>(),
            any::<bool>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_flat_map(|(base, vram, device, region, key)| (
                0..=u64::MAX - base,
                Just((base, vram, device, region, key))
            ))
            .prop_map(|(len, (base, vram, device, region, key))| {
                Owned::RegionToken(RegionToken {
                    base,
                    len,
                    mem: if vram { MemKind::Device } else { MemKind::Host },
                    device,
                    region,
                    key,
                })
            }),
        (1..=MAX_CHANNELS as u16, name())
            .prop_map(|(channels, name)| Owned::Hello { channels, name }),
        prop::collection::vec(handle, 1..=MAX_CHANNELS).prop_map(Owned::ListenHandles),
        (
            any::<u64>(),
            prop::collection::vec(segment(), 0..40),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..200))
        )
            .prop_map(|(xfer, segs, notif)| Owned::WriteAnnounce {
                xfer,
                segs,
                notif,
                data: None
            }),
        (
            any::<u64>(),
            prop::collection::vec(
                (any::<u64>(), any::<u64>(), 0..1u64 << 40, 0..2048u64),
                0..8
            ),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
            any::<u8>()
        )
            .prop_map(|(xfer, segs, notif, fill)| {
                let segs: Vec<Segment> = segs
                    .into_iter()
                    .map(|(r, k, a, l)| Segment::new(r, k, a, l))
                    .collect();
                let total = segs.iter().map(Segment::len).sum::<u64>() as usize;
                Owned::WriteAnnounce {
                    xfer,
                    segs,
                    notif,
                    data: Some(vec![fill; total]),
                }
            }),
        (
            any::<u64>(),
            prop::collection::vec(segment(), 0..40),
            any::<bool>()
        )
            .prop_map(|(xfer, segs, inline_ok)| Owned::ReadRequest {
                xfer,
                segs,
                inline_ok
            }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(xfer, data)| Owned::ReadData { xfer, data }),
        any::<u64>().prop_map(|xfer| Owned::ReadAnnounce(ReadAnnounce { xfer })),
        (any::<u64>(), any::<i32>()).prop_map(|(xfer, status)| Owned::Ack(Ack { xfer, status })),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Owned::Notif),
        (any::<u32>(), any::<u64>(), "\\PC{0,100}").prop_map(|(code, xfer, text)| Owned::Error {
            code,
            xfer,
            text
        }),
        (0..=MAX_NOTIF as u32).prop_map(|max_notif| Owned::Limits(Limits { max_notif })),
        Just(Owned::Keepalive),
    ]
}

/// Per-kind round trip through the [`Repr`] trait.
fn repr_round_trip<'a, R: Repr<'a> + PartialEq + core::fmt::Debug>(m: &R, buf: &'a mut [u8]) {
    let n = m.emit(buf).unwrap();
    assert_eq!(n, m.buffer_len());
    assert_eq!(check_header(&buf[..n]), Ok(R::KIND));
    let parsed = R::parse(&buf[..n]).unwrap();
    assert_eq!(&parsed, m);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn emit_parse_round_trip(o in owned()) {
        let m = o.view();
        let bytes = emit_vec(&m);
        prop_assert_eq!(bytes.len(), m.buffer_len());
        prop_assert!(bytes.len() <= MAX_FRAME);
        let parsed = parse(&bytes).unwrap();
        prop_assert_eq!(parsed, m);
        prop_assert_eq!(emit_vec(&parsed), bytes.clone());
        prop_assert_eq!(peek_frame(&bytes), Ok(Some(bytes.len())));
        parse_all(&bytes);
        let mut buf = vec![0u8; bytes.len()];
        match m {
            Message::ConnInfo(x) => repr_round_trip(&x, &mut buf),
            Message::RegionToken(x) => repr_round_trip(&x, &mut buf),
            Message::Hello(x) => repr_round_trip(&x, &mut buf),
            Message::ListenHandles(x) => repr_round_trip(&x, &mut buf),
            Message::WriteAnnounce(x) => repr_round_trip(&x, &mut buf),
            Message::ReadRequest(x) => repr_round_trip(&x, &mut buf),
            Message::ReadAnnounce(x) => repr_round_trip(&x, &mut buf),
            Message::Ack(x) => repr_round_trip(&x, &mut buf),
            Message::Notif(x) => repr_round_trip(&x, &mut buf),
            Message::Error(x) => repr_round_trip(&x, &mut buf),
            Message::ReadData(x) => repr_round_trip(&x, &mut buf),
            Message::Limits(x) => repr_round_trip(&x, &mut buf),
            Message::Keepalive(x) => repr_round_trip(&x, &mut buf),
        }
    }

    #[test]
    fn any_bytes_parse_or_error(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        parse_all(&bytes);
    }

    /// Random bodies behind a well-formed header reach the per-kind checks.
    #[test]
    fn any_body_behind_valid_header(
        kind in 1u16..=13,
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = Header::new(Kind::from_u16(kind).unwrap(), (HEADER_LEN + body.len()) as u32)
            .as_bytes()
            .to_vec();
        bytes.extend_from_slice(&body);
        parse_all(&bytes);
    }

    /// Flipped bytes, truncation and extension of valid frames never panic, and whatever
    /// still parses re-emits byte-identically.
    #[test]
    fn mutated_frames_never_panic(
        o in owned(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..6),
        cut in any::<prop::sample::Index>(),
        mode in 0u8..3,
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let mut bytes = emit_vec(&o.view());
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        match mode {
            0 => {}
            1 => bytes.truncate(cut.index(bytes.len())),
            _ => bytes.extend_from_slice(&extra),
        }
        parse_all(&bytes);
        // A prefix of a stream never gives a different answer than the whole stream.
        let full = peek_frame(&bytes);
        for k in 0..bytes.len().min(HEADER_LEN) {
            let part = peek_frame(&bytes[..k]);
            // A partial magic is reported with the bytes seen so far.
            let same_magic = matches!((part, full), (Err(Error::BadMagic(_)), Err(Error::BadMagic(_))));
            prop_assert!(
                part == Ok(None) || part == full || same_magic,
                "prefix {}: {:?} vs {:?}", k, part, full
            );
        }
    }
}
