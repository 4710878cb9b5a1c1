//! Seeds of the NIXL wire targets: one frame per kind (`valid-*` parse whole, `edge-*` pass the
//! header and are refused later), unknown kinds, and streams of frames.

use super::*;

/// A valid message, emitted.
pub(super) fn emit(m: &Message<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    let n = m.emit(&mut v).expect("a seed message emits");
    assert_eq!(n, v.len());
    assert_eq!(
        wire::parse(&v).as_ref(),
        Ok(m),
        "a seed message round-trips"
    );
    v
}

/// `bytes` with `at..` overwritten by `with`.
pub(super) fn patch(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

/// `bytes` with the header's length set to what it holds.
pub(super) fn fix_len(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() as u32;
    bytes[8..12].copy_from_slice(&n.to_le_bytes());
    bytes
}

/// `bytes` with one more byte, counted in the header (refused by the body's length check).
pub(super) fn longer(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.push(0x5a);
    fix_len(bytes)
}

/// `bytes` one byte short of what the header declares.
pub(super) fn shorter(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.pop();
    bytes
}

pub(super) fn segs(n: usize) -> Vec<Segment> {
    (0..n as u64)
        .map(|i| Segment::new(17, 0x0123_4567_89ab_cdef, 0x7f00_0000_0000 + i * 8192, 4096))
        .collect()
}

pub(super) type Named = Vec<(String, Vec<u8>)>;

pub(super) fn named(list: Vec<(&str, Vec<u8>)>) -> Named {
    list.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}

/// Per kind: valid frames (typical values and the bounds of every count and length), then
/// frames refused past the header.
pub(super) fn wire_seeds() -> Vec<(Kind, Named)> {
    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 47000);
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 47001);
    let long_name = "n".repeat(MAX_NAME);
    let conn = |addr, channels, name| {
        emit(&Message::ConnInfo(ConnInfo {
            protocol: VERSION,
            addr,
            channels,
            name,
        }))
    };
    let conn_info = conn(v4, 4, "prefill-0");
    let hello = |channels, name| emit(&Message::Hello(Hello { channels, name }));
    let token = |base, len, mem| {
        emit(&Message::RegionToken(RegionToken {
            base,
            len,
            mem,
            device: 3,
            region: 17,
            key: 0x0123_4567_89ab_cdef,
        }))
    };
    let handles: Vec<ListenHandle> = (0..MAX_CHANNELS).map(|i| [i as u8 ^ 0xa5; 128]).collect();
    let listen = |n: usize, chunk_bytes| {
        emit(&Message::ListenHandles(ListenHandles {
            chunk_bytes,
            split: 8,
            handles: &handles[..n],
        }))
    };
    let segments = segs(MAX_SEGMENTS + 1);
    let inline: Vec<u8> = (0..MAX_INLINE as u32).map(|i| (i * 13) as u8).collect();
    let write = |xfer, n: usize, notif, data| {
        emit(&Message::WriteAnnounce(WriteAnnounce {
            xfer,
            segments: &segments[..n],
            notif,
            data,
        }))
    };
    let read = |xfer, n: usize, inline_ok| {
        emit(&Message::ReadRequest(ReadRequest {
            xfer,
            segments: &segments[..n],
            inline_ok,
        }))
    };
    // A count one above the bound, with the bytes it implies.
    let too_many = |mut f: Vec<u8>, count_at: usize, fixed: usize| {
        f.truncate(fixed);
        f[count_at..count_at + 4].copy_from_slice(&(MAX_SEGMENTS as u32 + 1).to_le_bytes());
        for s in &segments {
            f.extend_from_slice(&s.region().to_le_bytes());
            f.extend_from_slice(&s.key().to_le_bytes());
            f.extend_from_slice(&s.addr().to_le_bytes());
            f.extend_from_slice(&s.len().to_le_bytes());
        }
        fix_len(f)
    };
    let overflow = Segment::new(17, 1, u64::MAX - 10, 11);
    let notif = |msg: &[u8]| emit(&Message::Notif(Notif { msg }));
    let err = |text| {
        emit(&Message::Error(ErrorMsg {
            code: 3,
            xfer: ErrorMsg::NO_XFER,
            text,
        }))
    };
    let read_data = |xfer, data| emit(&Message::ReadData(ReadData { xfer, data }));
    let ack = |xfer, status| emit(&Message::Ack(Ack { xfer, status }));
    let announce = |xfer| emit(&Message::ReadAnnounce(ReadAnnounce { xfer }));
    let limits = |max_notif| emit(&Message::Limits(Limits { max_notif }));
    let keepalive = emit(&Message::Keepalive(Keepalive));

    vec![
        (
            Kind::ConnInfo,
            named(vec![
                ("valid-v4", conn_info.clone()),
                ("valid-v6", conn(v6, 2, "decode-ü")),
                ("valid-max", conn(v6, MAX_CHANNELS as u16, &long_name)),
                ("valid-min", conn(v4, 1, "a")),
                ("edge-channels-0", patch(conn_info.clone(), 14, &[0, 0])),
                ("edge-channels-17", patch(conn_info.clone(), 14, &[17, 0])),
                ("edge-family", patch(conn_info.clone(), 16, &[5])),
                ("edge-v4-high-bytes", patch(conn_info.clone(), 24, &[1])),
                ("edge-reserved", patch(conn_info.clone(), 17, &[1])),
                ("edge-name-utf8", patch(conn_info.clone(), 40, &[0xff])),
                ("edge-short", shorter(conn_info.clone())),
                ("edge-long", longer(conn_info)),
            ]),
        ),
        (
            Kind::RegionToken,
            named(vec![
                (
                    "valid-vram",
                    token(0x7f00_0000_0000, 1 << 30, MemKind::Device),
                ),
                ("valid-dram", token(0x5555_0000_1000, 4096, MemKind::Host)),
                ("valid-to-the-top", token(1, u64::MAX - 1, MemKind::Host)),
                ("valid-empty", token(0, 0, MemKind::Device)),
                (
                    "edge-overflow",
                    patch(token(1, 0, MemKind::Host), 20, &u64::MAX.to_le_bytes()),
                ),
                (
                    "edge-mem-kind",
                    patch(token(4096, 4096, MemKind::Host), 48, &[2]),
                ),
                (
                    "edge-reserved",
                    patch(token(4096, 4096, MemKind::Host), 50, &[1]),
                ),
                ("edge-long", longer(token(4096, 4096, MemKind::Device))),
            ]),
        ),
        (
            Kind::Hello,
            named(vec![
                ("valid", hello(2, "prefill-0")),
                ("valid-max", hello(MAX_CHANNELS as u16, &long_name)),
                ("valid-min", hello(1, "x")),
                ("edge-channels-0", patch(hello(2, "p"), 12, &[0, 0])),
                ("edge-channels-17", patch(hello(2, "p"), 12, &[17, 0])),
                (
                    "edge-name-257",
                    fix_len(patch(
                        [hello(2, &long_name), vec![b'n']].concat(),
                        14,
                        &(MAX_NAME as u16 + 1).to_le_bytes(),
                    )),
                ),
                ("edge-name-utf8", patch(hello(2, "prefill-0"), 16, &[0xc3])),
                ("edge-short", shorter(hello(2, "prefill-0"))),
            ]),
        ),
        (
            Kind::ListenHandles,
            named(vec![
                ("valid-2", listen(2, 512 << 10)),
                ("valid-min", listen(1, 1)),
                ("valid-max", listen(MAX_CHANNELS, MAX_CHUNK_BYTES)),
                (
                    "edge-count-0",
                    fix_len(patch(listen(1, 4096), 12, &[0])[..20].to_vec()),
                ),
                (
                    "edge-count-17",
                    fix_len([patch(listen(16, 4096), 12, &[17]), vec![0x11; 128]].concat()),
                ),
                ("edge-chunk-0", patch(listen(1, 4096), 16, &[0, 0, 0, 0])),
                (
                    "edge-chunk-above-max",
                    patch(listen(1, 4096), 16, &(MAX_CHUNK_BYTES + 1).to_le_bytes()),
                ),
                ("edge-split-0", patch(listen(2, 4096), 14, &[0, 0])),
                ("edge-split-above-max", patch(listen(2, 4096), 14, &[65, 0])),
                ("edge-mid-handle", fix_len(listen(2, 4096)[..200].to_vec())),
            ]),
        ),
        (
            Kind::WriteAnnounce,
            named(vec![
                ("valid-notif", write(42, 3, Some(&b"done"[..]), None)),
                ("valid-plain", write(43, 1, None, None)),
                (
                    "valid-no-segments",
                    write(47, 0, Some(&b"only a note"[..]), None),
                ),
                ("valid-empty-notif", write(48, 2, Some(&b""[..]), None)),
                (
                    "valid-inline",
                    write(46, 2, Some(&b"inline"[..]), Some(&inline[..8192])),
                ),
                (
                    "valid-inline-max",
                    write(49, 4, None, Some(&inline[..MAX_INLINE_WRITE])),
                ),
                ("edge-flags", patch(write(42, 1, None, None), 28, &[4])),
                (
                    "edge-notif-without-flag",
                    patch(write(42, 1, Some(&b"done"[..]), None), 28, &[0]),
                ),
                (
                    "edge-inline-short",
                    fix_len(shorter(write(46, 1, None, Some(&inline[..4096])))),
                ),
                (
                    "edge-inline-above-max",
                    fix_len(
                        [
                            patch(
                                write(50, 4, None, Some(&inline[..MAX_INLINE_WRITE])),
                                32 + 24,
                                &4097u64.to_le_bytes(),
                            ),
                            vec![0],
                        ]
                        .concat(),
                    ),
                ),
                (
                    "edge-overflow",
                    patch(
                        write(42, 1, None, None),
                        32,
                        &[
                            overflow.region().to_le_bytes(),
                            overflow.key().to_le_bytes(),
                            overflow.addr().to_le_bytes(),
                            overflow.len().to_le_bytes(),
                        ]
                        .concat(),
                    ),
                ),
                (
                    "edge-count-1025",
                    too_many(write(42, 1, None, None), 20, 32),
                ),
                (
                    "edge-short",
                    shorter(write(42, 3, Some(&b"done"[..]), None)),
                ),
            ]),
        ),
        (
            Kind::ReadRequest,
            named(vec![
                ("valid-2", read(44, 2, false)),
                ("valid-inline", read(45, 1, true)),
                ("valid-no-segments", read(51, 0, false)),
                ("valid-max", read(52, MAX_SEGMENTS, true)),
                ("edge-flags", patch(read(44, 1, false), 24, &[2])),
                (
                    "edge-overflow",
                    patch(read(44, 1, false), 28 + 16, &(u64::MAX - 10).to_le_bytes()),
                ),
                ("edge-count-1025", too_many(read(44, 1, false), 20, 28)),
                (
                    "edge-mid-segment",
                    fix_len(read(44, 2, false)[..50].to_vec()),
                ),
            ]),
        ),
        (
            Kind::ReadAnnounce,
            named(vec![
                ("valid", announce(44)),
                ("valid-0", announce(0)),
                ("valid-max", announce(u64::MAX)),
                ("edge-long", longer(announce(44))),
                ("edge-short", shorter(announce(44))),
            ]),
        ),
        (
            Kind::Ack,
            named(vec![
                ("valid-error", ack(42, -2)),
                ("valid-ok", ack(0, 0)),
                ("valid-extremes", ack(u64::MAX, i32::MIN)),
                ("edge-long", longer(ack(42, 0))),
                ("edge-short", shorter(ack(42, 0))),
            ]),
        ),
        (
            Kind::Notif,
            named(vec![
                ("valid", notif(b"kv-ready")),
                ("valid-empty", notif(b"")),
                ("valid-4k", notif(&inline[..4096])),
                ("edge-len-above-body", patch(notif(b"kv-ready"), 12, &[9])),
                (
                    "edge-len-above-max",
                    patch(notif(b"x"), 12, &(MAX_NOTIF as u32 + 1).to_le_bytes()),
                ),
                ("edge-short", shorter(notif(b"kv-ready"))),
            ]),
        ),
        (
            Kind::Error,
            named(vec![
                ("valid", err("segment 2 outside region 17")),
                ("valid-empty", err("")),
                ("valid-max", err(&"e".repeat(MAX_ERROR_TEXT))),
                (
                    "edge-text-513",
                    fix_len(patch(
                        [err(&"e".repeat(MAX_ERROR_TEXT)), vec![b'e']].concat(),
                        16,
                        &(MAX_ERROR_TEXT as u32 + 1).to_le_bytes(),
                    )),
                ),
                ("edge-text-utf8", patch(err("bad"), 28, &[0xfe])),
                ("edge-short", shorter(err("segment 2"))),
            ]),
        ),
        (
            Kind::ReadData,
            named(vec![
                ("valid", read_data(45, &b"kv block"[..])),
                ("valid-empty", read_data(46, &[][..])),
                ("valid-max", read_data(47, &inline[..MAX_INLINE])),
                ("edge-reserved", patch(read_data(45, &b"kv"[..]), 24, &[1])),
                (
                    "edge-len-mismatch",
                    patch(read_data(45, &b"kv block"[..]), 20, &[7]),
                ),
                (
                    "edge-above-max",
                    fix_len(patch(
                        [read_data(48, &inline[..MAX_INLINE]), vec![0]].concat(),
                        20,
                        &(MAX_INLINE as u32 + 1).to_le_bytes(),
                    )),
                ),
            ]),
        ),
        (
            Kind::Limits,
            named(vec![
                ("valid", limits(1 << 20)),
                ("valid-max", limits(MAX_NOTIF as u32)),
                (
                    "edge-above-max",
                    patch(limits(0), 12, &(MAX_NOTIF as u32 + 1).to_le_bytes()),
                ),
            ]),
        ),
        (
            Kind::Keepalive,
            named(vec![
                ("valid", keepalive.clone()),
                ("edge-reserved", patch(keepalive, 12, &[1])),
            ]),
        ),
    ]
}

/// Headers naming no kind (one below and one above the known ones) for the dispatcher.
pub(super) fn unknown_kinds() -> Named {
    let ack = emit(&Message::Ack(Ack { xfer: 1, status: 0 }));
    let last = Kind::ALL[Kind::ALL.len() - 1] as u16;
    named(vec![
        ("edge-kind-0", patch(ack.clone(), 6, &[0, 0])),
        ("edge-kind-above", patch(ack, 6, &(last + 1).to_le_bytes())),
    ])
}

/// Control streams for `frame`: a handshake, a transfer's frames, every kind back to back,
/// and streams that end mid-frame or on a header the reader refuses.
pub(super) fn streams() -> Named {
    let segments = segs(2);
    let handles = [[0xa5u8; 128], [0x5a; 128]];
    let handshake: Vec<u8> = [
        Message::Hello(Hello {
            channels: 2,
            name: "prefill-0",
        }),
        Message::ListenHandles(ListenHandles {
            chunk_bytes: 512 << 10,
            split: 8,
            handles: &handles,
        }),
        Message::Limits(Limits { max_notif: 1 << 20 }),
    ]
    .iter()
    .flat_map(emit)
    .collect();
    let transfer: Vec<u8> = [
        Message::WriteAnnounce(WriteAnnounce {
            xfer: 1,
            segments: &segments,
            notif: Some(b"done"),
            data: None,
        }),
        Message::Ack(Ack { xfer: 1, status: 0 }),
        Message::ReadRequest(ReadRequest {
            xfer: 2,
            segments: &segments[..1],
            inline_ok: true,
        }),
        Message::ReadData(ReadData {
            xfer: 2,
            data: b"kv block",
        }),
        Message::ReadRequest(ReadRequest {
            xfer: 3,
            segments: &segments,
            inline_ok: false,
        }),
        Message::ReadAnnounce(ReadAnnounce { xfer: 3 }),
        Message::Notif(Notif { msg: b"kv-ready" }),
        Message::Keepalive(Keepalive),
        Message::Error(ErrorMsg {
            code: 3,
            xfer: 4,
            text: "no such region",
        }),
    ]
    .iter()
    .flat_map(emit)
    .collect();
    let every_kind: Vec<u8> = wire_seeds()
        .into_iter()
        .flat_map(|(_, named)| {
            named
                .into_iter()
                .find(|(n, b)| n.starts_with("valid") && b.len() <= 300)
                .map(|(_, b)| b)
        })
        .flatten()
        .collect();
    let huge = patch(
        emit(&Message::Keepalive(Keepalive)),
        8,
        &(wire::MAX_FRAME as u32 + 1).to_le_bytes(),
    );
    let first = wire::peek_frame(&transfer).unwrap().unwrap();
    named(vec![
        ("valid-handshake", handshake.clone()),
        ("valid-transfer", transfer.clone()),
        ("valid-every-kind", every_kind.clone()),
        (
            "edge-mid-frame",
            every_kind[..every_kind.len() - 5].to_vec(),
        ),
        (
            "edge-mid-header",
            transfer[..first + HEADER_LEN - 4].to_vec(),
        ),
        ("edge-too-large", [handshake, huge].concat()),
    ])
}
