//! Seeds of `control` and `control_backend`: operation streams both targets decode.

use super::*;

/// Page size and registration size of the `control_backend` target's guarded region (its
/// `plugin_TCPX::testing` world); a segment offset is taken from 2 pages before the region.
pub(super) const PAGE: u16 = 4096;
pub(super) const REGION: u16 = 4 * PAGE;

/// One segment as the `control` targets read it, relative to the target's registration.
#[derive(Clone, Copy)]
pub(super) enum Seg {
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
pub(super) enum Lie {
    None,
    DropLast,
    Extra(u16),
    NoData,
}

/// One operation of a `control` input.
pub(super) enum Op {
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

pub(super) fn segments(v: &mut Vec<u8>, segs: &[Seg]) {
    assert!((1..=6).contains(&segs.len()));
    v.push(segs.len() as u8 - 1);
    for s in segs {
        s.encode(v);
    }
}

pub(super) fn encode(ops: &[Op]) -> Vec<u8> {
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
pub(super) fn control() -> Named {
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
