//! The committed seed inputs of the cargo-fuzz targets (`fuzz/seeds/<target>/<name>`), built
//! with the wire format's own emitters so every frame carries the current [`VERSION`].
//!
//! Names say what a seed promises, and `tests/fuzz_seeds.rs` checks it on the committed
//! files: a `valid-*` wire seed parses whole (a `valid-*` stream: every frame in it); an
//! `edge-*` wire seed passes the header's magic and version checks and is refused later (a
//! bad count, length, reserved field, …). The same holds for tcpxsock's formats (`sock_*`),
//! which have no common header: a handle or hello `edge-*` seed keeps the current magic and
//! version, a request header one (any 8 bytes are a header) has the wrong length. The
//! `machines` and `control` seeds are byte streams
//! decoded by their targets; their builders below assert what each one means (a plan the
//! planner accepts or refuses, frames that parse), so a format change fails the generator
//! and the test that runs it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tcpx_core::abi::HANDLE_MAX_SIZE;
use tcpx_core::plan::{Plan, PlanConfig, Segment as PlanSegment, MAX_CHUNK_BYTES};
use tcpx_core::wire::sock::{
    self, SockHandle, SockHello, SockRequestHeader, CHUNK_ALIGN, HANDLE_LEN, HANDLE_STAGE_OFF,
    HELLO_LEN, MAX_SIZE, MAX_SOCKETS,
};
use tcpx_core::wire::{
    self, Ack, ConnInfo, ErrorMsg, Hello, Keepalive, Kind, Limits, ListenHandle, ListenHandles,
    MemKind, Message, Notif, ReadAnnounce, ReadData, ReadRequest, RegionToken, Segment,
    WriteAnnounce, HEADER_LEN, MAX_CHANNELS, MAX_ERROR_TEXT, MAX_INLINE, MAX_INLINE_WRITE,
    MAX_NAME, MAX_NOTIF, MAX_SEGMENTS, VERSION,
};

/// One seed file.
pub struct Seed {
    /// The fuzz target (folder under `fuzz/seeds/`).
    pub target: &'static str,
    /// File name: `valid-*` or `edge-*` for wire targets.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The per-kind wire targets and the kind each one parses.
pub const KIND_TARGETS: [(&str, Kind); 11] = [
    ("conn_info", Kind::ConnInfo),
    ("region_token", Kind::RegionToken),
    ("hello", Kind::Hello),
    ("listen_handles", Kind::ListenHandles),
    ("write_announce", Kind::WriteAnnounce),
    ("read_request", Kind::ReadRequest),
    ("read_announce", Kind::ReadAnnounce),
    ("ack", Kind::Ack),
    ("notif", Kind::Notif),
    ("error_msg", Kind::Error),
    ("read_data", Kind::ReadData),
];

/// Every seed of every target, in a fixed order.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut parse_seeds = Vec::new();
    for (kind, named) in wire_seeds() {
        let target = KIND_TARGETS
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(t, _)| *t);
        for (name, bytes) in named {
            // The dispatcher gets one valid frame and the first edge of each kind.
            let first_of_its_sort = !parse_seeds.iter().any(|(k, n): &(Kind, String)| {
                *k == kind && n.split('-').next() == name.split('-').next()
            });
            if first_of_its_sort {
                parse_seeds.push((kind, name.clone()));
                out.push(Seed {
                    target: "parse",
                    name: format!("{}-{}", name, kind_slug(kind)),
                    bytes: bytes.clone(),
                });
            }
            if let Some(target) = target {
                out.push(Seed {
                    target,
                    name,
                    bytes,
                });
            }
        }
    }
    for (name, bytes) in unknown_kinds() {
        out.push(Seed {
            target: "parse",
            name,
            bytes,
        });
    }
    for (name, bytes) in streams() {
        out.push(Seed {
            target: "frame",
            name,
            bytes,
        });
    }
    for (name, bytes) in machines() {
        out.push(Seed {
            target: "machines",
            name,
            bytes,
        });
    }
    // `control` (the core machines) and `control_backend` (a real backend) read the same
    // operation streams.
    for target in ["control", "control_backend"] {
        for (name, bytes) in control() {
            out.push(Seed {
                target,
                name,
                bytes,
            });
        }
    }
    for (target, named) in sock_seeds() {
        for (name, bytes) in named {
            out.push(Seed {
                target,
                name,
                bytes,
            });
        }
    }
    out
}

fn kind_slug(kind: Kind) -> &'static str {
    match kind {
        Kind::Limits => "limits",
        Kind::Keepalive => "keepalive",
        k => {
            KIND_TARGETS
                .iter()
                .find(|(_, x)| *x == k)
                .expect("every other kind has a target")
                .0
        }
    }
}

// ---------- wire frames ----------

/// A valid message, emitted.
fn emit(m: &Message<'_>) -> Vec<u8> {
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
fn patch(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
    bytes[at..at + with.len()].copy_from_slice(with);
    bytes
}

/// `bytes` with the header's length set to what it holds.
fn fix_len(mut bytes: Vec<u8>) -> Vec<u8> {
    let n = bytes.len() as u32;
    bytes[8..12].copy_from_slice(&n.to_le_bytes());
    bytes
}

/// `bytes` with one more byte, counted in the header (refused by the body's length check).
fn longer(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.push(0x5a);
    fix_len(bytes)
}

/// `bytes` one byte short of what the header declares.
fn shorter(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.pop();
    bytes
}

fn segs(n: usize) -> Vec<Segment> {
    (0..n as u64)
        .map(|i| Segment::new(17, 0x0123_4567_89ab_cdef, 0x7f00_0000_0000 + i * 8192, 4096))
        .collect()
}

type Named = Vec<(String, Vec<u8>)>;

fn named(list: Vec<(&str, Vec<u8>)>) -> Named {
    list.into_iter().map(|(n, b)| (n.to_string(), b)).collect()
}

/// Per kind: valid frames (typical values and the bounds of every count and length), then
/// frames refused past the header.
fn wire_seeds() -> Vec<(Kind, Named)> {
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
                    token(0x7f00_0000_0000, 1 << 30, MemKind::Vram),
                ),
                ("valid-dram", token(0x5555_0000_1000, 4096, MemKind::Dram)),
                ("valid-to-the-top", token(1, u64::MAX - 1, MemKind::Dram)),
                ("valid-empty", token(0, 0, MemKind::Vram)),
                (
                    "edge-overflow",
                    patch(token(1, 0, MemKind::Dram), 20, &u64::MAX.to_le_bytes()),
                ),
                (
                    "edge-mem-kind",
                    patch(token(4096, 4096, MemKind::Dram), 48, &[2]),
                ),
                (
                    "edge-reserved",
                    patch(token(4096, 4096, MemKind::Dram), 50, &[1]),
                ),
                ("edge-long", longer(token(4096, 4096, MemKind::Vram))),
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
                ("edge-reserved", patch(listen(2, 4096), 14, &[1])),
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
fn unknown_kinds() -> Named {
    let ack = emit(&Message::Ack(Ack { xfer: 1, status: 0 }));
    let last = Kind::ALL[Kind::ALL.len() - 1] as u16;
    named(vec![
        ("edge-kind-0", patch(ack.clone(), 6, &[0, 0])),
        ("edge-kind-above", patch(ack, 6, &(last + 1).to_le_bytes())),
    ])
}

/// Control streams for `frame`: a handshake, a transfer's frames, every kind back to back,
/// and streams that end mid-frame or on a header the reader refuses.
fn streams() -> Named {
    let segments = segs(2);
    let handles = [[0xa5u8; 128], [0x5a; 128]];
    let handshake: Vec<u8> = [
        Message::Hello(Hello {
            channels: 2,
            name: "prefill-0",
        }),
        Message::ListenHandles(ListenHandles {
            chunk_bytes: 512 << 10,
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

// ---------- machines ----------

/// `machines` inputs: a first byte with bit 0 clear drives the windows with one byte per
/// event (low 3 bits the event, high 5 its argument); set, the planner with a 4-byte config
/// and 24-byte segments.
fn machines() -> Named {
    // Window events, as the target decodes them.
    let post = |len: u8, device: bool| (len << 1 | u8::from(device)) << 3;
    let net_done = |extra: u8| (extra << 3) | 1;
    let launched = |ahead: u8| (ahead << 3) | 2;
    let unpacked = |ahead: u8| (ahead << 3) | 3;
    const CONSUME: u8 = 4;
    const STEP: u8 = 5;
    let send_post = |len: u8| (len << 3) | 6;
    let send_done = |extra: u8| (extra << 3) | 7;

    let mut full_host = vec![0u8];
    full_host.extend((0..16).map(|i| post(i % 16, false)));
    full_host.extend([STEP; 40]);
    let mut device = vec![0u8];
    for i in 0..6 {
        device.extend([
            post(i + 1, true),
            net_done(0),
            launched(0),
            unpacked(0),
            CONSUME,
        ]);
    }
    device.extend([post(3, true), post(4, true), STEP, STEP, STEP, STEP, STEP]);
    let mut send = vec![0u8];
    send.extend((0..17).map(|i| send_post(i % 32)));
    send.extend([send_done(0); 17]);
    send.extend([send_done(1)]);
    let illegal = vec![
        0,
        CONSUME,
        net_done(0),
        launched(3),
        unpacked(0),
        post(5, false),
        net_done(1),
        unpacked(0),
        launched(19),
        CONSUME,
        STEP,
        STEP,
        send_done(0),
    ];

    // Plans: the config as the target reads it, then the segments.
    // `cfg3`: bit 7 scales the chunk size by 128; the byte modulo 18 is the first channel.
    let plan = |chunk: u16, channels: u8, cfg3: u8, segs: &[(u64, u64, u64)]| {
        let mut v = vec![1u8];
        v.extend_from_slice(&chunk.to_le_bytes());
        v.push(channels);
        v.push(cfg3);
        for &(l, r, len) in segs {
            assert!(len < 100_000 && len >> 56 == 0, "the target keeps it as is");
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&r.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        let chunk_bytes = u32::from(chunk) << if cfg3 & 0x80 != 0 { 7 } else { 0 };
        let cfg = PlanConfig::new(chunk_bytes, channels % 18).with_first_channel(cfg3 % 18);
        let segs: Vec<PlanSegment> = segs
            .iter()
            .map(|&(local_offset, remote_offset, len)| PlanSegment {
                local_offset,
                remote_offset,
                len,
            })
            .collect();
        (v, Plan::new(&segs, cfg).is_ok())
    };
    let accepted = |(v, ok): (Vec<u8>, bool)| {
        assert!(ok, "a valid plan seed is accepted");
        v
    };
    let refused = |(v, ok): (Vec<u8>, bool)| {
        assert!(!ok, "an edge plan seed is refused");
        v
    };
    named(vec![
        ("windows-full-host", full_host),
        ("windows-device", device),
        ("windows-send", send),
        ("windows-illegal", illegal),
        (
            "plan-one-segment",
            accepted(plan(4096, 4, 0, &[(0, 0, 65_536)])),
        ),
        (
            "plan-rotated",
            accepted(plan(
                1000,
                3,
                2,
                &[(0, 4096, 2500), (8192, 0, 0), (100, 50_000, 99_999)],
            )),
        ),
        (
            "plan-max-chunk",
            accepted(plan(
                (MAX_CHUNK_BYTES >> 7) as u16,
                16,
                // 128 + 13: the wide flag, first channel 15.
                0x80 | 13,
                &[(1 << 40, 0, 77_777)],
            )),
        ),
        ("plan-empty", accepted(plan(1, 1, 0, &[]))),
        ("plan-no-channels", refused(plan(4096, 0, 0, &[(0, 0, 10)]))),
        (
            "plan-first-beyond",
            refused(plan(4096, 2, 2, &[(0, 0, 10)])),
        ),
        (
            "plan-offset-overflow",
            refused(plan(4096, 2, 0, &[(u64::MAX - 5, 0, 10)])),
        ),
    ])
}

// ---------- control ----------

/// Page size and registration size of the `control_backend` target's guarded region (its
/// `plugin_TCPX::testing` world); a segment offset is taken from 2 pages before the region.
const PAGE: u16 = 4096;
const REGION: u16 = 4 * PAGE;

/// One segment as the `control` targets read it, relative to the target's registration.
#[derive(Clone, Copy)]
enum Seg {
    /// `len` bytes at `off` inside the region, right id and key.
    In { off: u16, len: u16 },
    /// From `before` bytes before the region start.
    Before { before: u16, len: u16 },
    /// The right range with a wrong key.
    WrongKey { off: u16, len: u16, xor: u32 },
    /// A region id the target never issued.
    WrongRegion { region: u32, len: u16 },
    /// An address far away and a huge length.
    Wild { addr: u32, shift: u8, len_shift: u8 },
}

impl Seg {
    fn encode(self, v: &mut Vec<u8>) {
        let region_off = |off: u16| off + 2 * PAGE;
        match self {
            Seg::In { off, len } => {
                assert!(u32::from(off) + u32::from(len) <= u32::from(REGION));
                v.push(0);
                v.extend_from_slice(&region_off(off).to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
            }
            Seg::Before { before, len } => {
                assert!(before <= 2 * PAGE);
                v.push(0);
                v.extend_from_slice(&(2 * PAGE - before).to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
            }
            Seg::WrongKey { off, len, xor } => {
                assert_ne!(xor, 0);
                v.push(2);
                v.extend_from_slice(&xor.to_le_bytes());
                v.extend_from_slice(&region_off(off).to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
            }
            Seg::WrongRegion { region, len } => {
                v.push(1);
                v.extend_from_slice(&region.to_le_bytes());
                v.extend_from_slice(&region_off(0).to_le_bytes());
                v.extend_from_slice(&len.to_le_bytes());
            }
            Seg::Wild {
                addr,
                shift,
                len_shift,
            } => {
                v.push(4 | 8);
                v.extend_from_slice(&addr.to_le_bytes());
                v.push(shift);
                v.push(len_shift);
            }
        }
    }
}

/// How the peer's data disagrees with a WRITE announce (the low bits of the target's `lie`).
#[derive(Clone, Copy)]
enum Lie {
    None,
    DropLast,
    Extra(u16),
    NoData,
}

/// One operation of a `control` input.
enum Op {
    /// Bytes sent as they are (at most 255).
    Raw(Vec<u8>),
    /// A WRITE announce, the data sent as `lie` says, a notification if `notif`.
    Write {
        segs: Vec<Seg>,
        notif: bool,
        lie: Lie,
    },
    /// A READ request.
    Read { segs: Vec<Seg>, inline_ok: bool },
    /// A notification of `len` bytes (taken from the input).
    Notif(Vec<u8>),
    /// A current-version header of `kind` declaring `len`, then `body`.
    Header { kind: u8, len: u32, body: Vec<u8> },
    /// A frame a target never expects: 0 Ack, 1 ReadAnnounce, 2 Hello, 3 Error.
    Unexpected(u8),
    /// A WRITE with its data inline, `off_by` bytes more or less than the segments say.
    InlineWrite { segs: Vec<Seg>, off_by: i8 },
    /// Wait for the target's answers.
    Settle,
}

fn segments(v: &mut Vec<u8>, segs: &[Seg]) {
    assert!((1..=6).contains(&segs.len()));
    v.push(segs.len() as u8 - 1);
    for s in segs {
        s.encode(v);
    }
}

fn encode(ops: &[Op]) -> Vec<u8> {
    assert!(ops.len() <= 16, "the target runs at most 16 operations");
    let mut v = Vec::new();
    for op in ops {
        match op {
            Op::Raw(b) => {
                v.push(0);
                v.push(u8::try_from(b.len()).expect("a raw op carries at most 255 bytes"));
                v.extend_from_slice(b);
            }
            Op::Write { segs, notif, lie } => {
                v.push(1);
                segments(&mut v, segs);
                let flag = if *notif { 0x80 } else { 0 };
                match lie {
                    Lie::None => v.push(flag),
                    Lie::DropLast => v.push(flag | 1),
                    Lie::Extra(n) => {
                        v.push(flag | 2);
                        v.extend_from_slice(&n.to_le_bytes());
                    }
                    Lie::NoData => v.push(flag | 3),
                }
            }
            Op::Read { segs, inline_ok } => {
                v.push(3);
                v.push(u8::from(*inline_ok));
                segments(&mut v, segs);
            }
            Op::Notif(msg) => {
                assert!(msg.len() < 5000);
                v.push(4);
                v.extend_from_slice(&(msg.len() as u16).to_le_bytes());
                v.extend_from_slice(msg);
            }
            Op::Header { kind, len, body } => {
                assert!(*kind < 16);
                v.push(5);
                // Flags 0: the target writes the right magic and the current version.
                v.push(0);
                v.push(*kind);
                v.extend_from_slice(&len.to_le_bytes());
                v.push(u8::try_from(body.len()).expect("at most 255 body bytes"));
                v.extend_from_slice(body);
            }
            Op::Unexpected(which) => {
                v.push(6);
                v.push(*which);
            }
            Op::InlineWrite { segs, off_by } => {
                v.push(7);
                segments(&mut v, segs);
                v.push(match off_by {
                    0 => 0,
                    -1 => 1,
                    1 => 2,
                    _ => panic!("inline data is off by at most one byte"),
                });
            }
            Op::Settle => v.push(8),
        }
    }
    v
}

/// `control` inputs: operation streams a peer plays after a real handshake.
fn control() -> Named {
    use Op::*;
    let whole = Seg::In {
        off: 0,
        len: REGION,
    };
    let page = |i: u16| Seg::In {
        off: i * PAGE,
        len: PAGE,
    };
    let small = Seg::In { off: 100, len: 300 };
    let ack = emit(&Message::Ack(Ack { xfer: 9, status: 0 }));
    let ka = emit(&Message::Keepalive(Keepalive));
    let note = emit(&Message::Notif(wire::Notif { msg: b"kv-ready" }));
    let limits = emit(&Message::Limits(Limits { max_notif: 1 << 20 }));
    let two = [note.clone(), ka.clone()].concat();
    let list = vec![
        (
            "write",
            vec![
                Write {
                    segs: vec![whole],
                    notif: false,
                    lie: Lie::None,
                },
                Settle,
            ],
        ),
        (
            "write-pages-notif",
            vec![
                Write {
                    segs: vec![page(3), page(0), page(2)],
                    notif: true,
                    lie: Lie::None,
                },
                Settle,
            ],
        ),
        (
            "read",
            vec![
                Read {
                    segs: vec![whole],
                    inline_ok: false,
                },
                Settle,
            ],
        ),
        (
            "read-inline",
            vec![
                Read {
                    segs: vec![small, page(1)],
                    inline_ok: true,
                },
                Settle,
            ],
        ),
        (
            "write-then-read",
            vec![
                Write {
                    segs: vec![small],
                    notif: true,
                    lie: Lie::None,
                },
                Read {
                    segs: vec![small],
                    inline_ok: true,
                },
                Settle,
            ],
        ),
        (
            "inline-write",
            vec![
                InlineWrite {
                    segs: vec![small, page(2)],
                    off_by: 0,
                },
                Settle,
            ],
        ),
        (
            "inline-write-short-long",
            vec![
                InlineWrite {
                    segs: vec![small],
                    off_by: -1,
                },
                InlineWrite {
                    segs: vec![small],
                    off_by: 1,
                },
                Settle,
            ],
        ),
        (
            "write-data-lies",
            vec![
                Write {
                    segs: vec![page(0), page(1)],
                    notif: false,
                    lie: Lie::DropLast,
                },
                Settle,
                Write {
                    segs: vec![small],
                    notif: false,
                    lie: Lie::Extra(100),
                },
                Settle,
                Write {
                    segs: vec![small],
                    notif: true,
                    lie: Lie::NoData,
                },
                Settle,
            ],
        ),
        (
            "out-of-bounds",
            vec![
                Write {
                    segs: vec![Seg::Before { before: 1, len: 2 }],
                    notif: false,
                    lie: Lie::None,
                },
                Read {
                    segs: vec![Seg::In {
                        off: REGION - 1,
                        len: 1,
                    }],
                    inline_ok: true,
                },
                Read {
                    segs: vec![Seg::Wild {
                        addr: 0xdead_0000,
                        shift: 20,
                        len_shift: 1,
                    }],
                    inline_ok: false,
                },
                Settle,
            ],
        ),
        (
            "wrong-key-region",
            vec![
                Write {
                    segs: vec![Seg::WrongKey {
                        off: 0,
                        len: 64,
                        xor: 1,
                    }],
                    notif: false,
                    lie: Lie::None,
                },
                Read {
                    segs: vec![Seg::WrongRegion {
                        region: 999,
                        len: 64,
                    }],
                    inline_ok: true,
                },
                Settle,
            ],
        ),
        (
            "notifs",
            vec![
                Notif(b"kv-ready".to_vec()),
                Notif(Vec::new()),
                Notif(vec![0x6e; 4999]),
                Settle,
            ],
        ),
        (
            "raw-frames",
            vec![
                Raw(ack),
                Raw(two),
                Raw(limits),
                Raw(note[..7].to_vec()),
                Raw(note[7..].to_vec()),
                Settle,
            ],
        ),
        (
            "headers",
            vec![
                Header {
                    kind: Kind::Notif as u8,
                    len: 20,
                    body: vec![4, 0, 0, 0, b'a', b'b', b'c', b'd'],
                },
                Header {
                    kind: Kind::Keepalive as u8,
                    len: 16,
                    body: vec![0; 4],
                },
                Header {
                    kind: 15,
                    len: 12,
                    body: Vec::new(),
                },
                Settle,
            ],
        ),
        (
            "header-too-large",
            vec![Header {
                kind: Kind::Notif as u8,
                len: u32::MAX,
                body: vec![0xff; 16],
            }],
        ),
        (
            "unexpected",
            vec![
                Unexpected(0),
                Unexpected(1),
                Unexpected(3),
                Unexpected(2),
                Settle,
            ],
        ),
    ];
    list.into_iter()
        .map(|(n, ops)| (n.to_string(), encode(&ops)))
        .collect()
}

// ---------- tcpxsock ----------

/// A valid handle over NCCL's `HANDLE_MAX_SIZE` bytes (the rest `fill`), `len` of them kept.
fn sock_handle(h: SockHandle, fill: u8, len: usize) -> Vec<u8> {
    let mut v = vec![fill; HANDLE_MAX_SIZE];
    assert_eq!(h.emit(&mut v), Ok(HANDLE_LEN), "a seed handle emits");
    assert_eq!(SockHandle::stage(&v), Ok(0));
    assert_eq!(SockHandle::parse(&v), Ok(h), "a seed handle round-trips");
    v.truncate(len);
    v
}

fn sock_hello(h: SockHello) -> Vec<u8> {
    let v = h.to_bytes().expect("a seed hello emits").to_vec();
    assert_eq!(SockHello::parse(&v), Ok(h), "a seed hello round-trips");
    v
}

fn sock_header(size: u32, inline: bool, seq: u64) -> Vec<u8> {
    let h = SockRequestHeader::new(size as usize, inline, seq).expect("a seed size is in range");
    let v = h.to_bytes().expect("a seed header emits").to_vec();
    assert_eq!(
        SockRequestHeader::parse(&v),
        Ok(h),
        "a seed header round-trips"
    );
    v
}

/// tcpxsock's listen handle, hello and request header: valid ones (typical values and the
/// bounds of every field), then ones refused (handle and hello: past the magic and version).
fn sock_seeds() -> Vec<(&'static str, Named)> {
    let v4 = |a, b, c, d, port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port);
    let handle = |addr, nonce| SockHandle { addr, nonce };
    let typical = handle(v4(10, 0, 0, 7, 47000), 0xdead_beef_0102_0304);
    let h = sock_handle(typical, 0, HANDLE_LEN);
    let v6 = "[fe80::1:2]:65535".parse().unwrap();
    let all_ones = SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xff; 16])), u16::MAX);

    let hello = |index, nsocks, nonce, conn_id, chunk_bytes| {
        sock_hello(SockHello {
            index,
            nsocks,
            nonce,
            conn_id,
            chunk_bytes,
        })
    };
    let max_socks = MAX_SOCKETS as u8;
    let he = hello(2, 4, 7, 0x0102_0304_0506_0708, 512 << 10);

    vec![
        (
            "sock_handle",
            named(vec![
                ("valid-v4", h.clone()),
                ("valid-v6", sock_handle(handle(v6, 1), 0, HANDLE_LEN)),
                // NCCL's whole handle: the bytes after tcpxsock's are not read.
                (
                    "valid-nccl-128",
                    sock_handle(typical, 0xa5, HANDLE_MAX_SIZE),
                ),
                (
                    "valid-min",
                    sock_handle(handle(v4(0, 0, 0, 0, 0), 0), 0, HANDLE_LEN),
                ),
                (
                    "valid-max",
                    sock_handle(handle(all_ones, u64::MAX), 0xff, HANDLE_MAX_SIZE),
                ),
                ("edge-family", patch(h.clone(), 6, &[5])),
                ("edge-reserved-7", patch(h.clone(), 7, &[1])),
                ("edge-reserved-10", patch(h.clone(), 10, &[1])),
                ("edge-reserved-28", patch(h.clone(), 28, &[1])),
                ("edge-v4-high-bytes", patch(h.clone(), 16, &[1])),
                ("edge-short", h[..HANDLE_LEN - 1].to_vec()),
                ("edge-no-stage", h[..HANDLE_STAGE_OFF].to_vec()),
            ]),
        ),
        (
            "sock_hello",
            named(vec![
                ("valid", he.clone()),
                ("valid-min", hello(0, 1, 0, 0, CHUNK_ALIGN)),
                (
                    "valid-max",
                    hello(
                        max_socks,
                        max_socks,
                        u64::MAX,
                        u64::MAX,
                        u32::MAX - (CHUNK_ALIGN - 1),
                    ),
                ),
                ("valid-last-socket", hello(1, 1, 3, 4, 1 << 20)),
                ("edge-nsocks-0", patch(he.clone(), 6, &[0, 0])),
                ("edge-nsocks-17", patch(he.clone(), 7, &[max_socks + 1])),
                ("edge-index-above", patch(he.clone(), 6, &[5])),
                ("edge-chunk-0", patch(he.clone(), 24, &0u32.to_le_bytes())),
                (
                    "edge-chunk-unaligned",
                    patch(he.clone(), 24, &(CHUNK_ALIGN + 1).to_le_bytes()),
                ),
                ("edge-reserved", patch(he.clone(), 28, &[1])),
                ("edge-short", he[..HELLO_LEN - 1].to_vec()),
                ("edge-long", [he.clone(), vec![0]].concat()),
            ]),
        ),
        (
            "sock_request",
            named(vec![
                ("valid-inline", sock_header(4097, true, 3)),
                ("valid-data", sock_header(1 << 20, false, 0x1_0000_0002)),
                ("valid-empty", sock_header(0, false, 0)),
                ("valid-max", sock_header(MAX_SIZE, true, u64::MAX)),
                ("valid-max-data", sock_header(MAX_SIZE, false, u64::MAX - 1)),
                (
                    "edge-short",
                    sock_header(4097, true, 3)[..sock::HEADER_LEN - 1].to_vec(),
                ),
                ("edge-long", [sock_header(4097, false, 3), vec![0]].concat()),
            ]),
        ),
    ]
}
