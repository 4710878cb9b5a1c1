//! Fuzzes the NIXL backend's control protocol end to end (`control` fuzzes the core machines
//! alone, with the same inputs): a real target `Backend` (backend thread, control listener,
//! engine sessions over tcpxsock on loopback) receives, from a peer that completed a real
//! handshake, a sequence of frames decoded from the input — raw bytes,
//! headers with any magic/version/kind/length, WRITE announces whose segments point in,
//! around and outside the target's registration (with the data sent as announced, short or
//! long), READ requests (received when the target announces them), notifications and frames
//! a target never expects.
//!
//! After every input: no byte outside the registration changed (canary pages around it,
//! `PROT_NONE` guard pages beyond), every frame the target sent parses, and a well-behaved
//! agent still completes a WRITE and a READ to the same target with its data verified. A
//! panic on any thread aborts (libfuzzer-sys's hook), so a backend thread that dies is seen.
#![no_main]

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use plugin_TCPX::testing::{frame, handshake, read_frame, World, PAGE, REGION};
use tcpx::engine::{Direction, Memory, Segment as ESeg, Session};
use tcpx::{MemId, Progress, XferId};
use tcpx_core::wire::{
    self, Message, Notif, ReadAnnounce, ReadData, ReadRequest, RegionToken, Segment, WriteAnnounce,
    HEADER_LEN, MAX_INLINE_WRITE,
};
use tcpx_fuzz::input::{frame_with_segments, raw_header, unexpected, Bytes};

/// How long one input may keep the peer waiting for answers.
const INPUT_BOUND: Duration = Duration::from_millis(300);
const MAX_OPS: usize = 16;
const MAX_SEGS: usize = 6;

static WORLD: Mutex<Option<World>> = Mutex::new(None);

/// A peer past the handshake: control stream + engine session with a source and a sink.
struct Peer {
    s: TcpStream,
    sess: Session,
    buf: Vec<u8>,
    mem: MemId,
    /// Our data transfers (WRITE data sent, READ data received), polled until done.
    xfers: Vec<XferId>,
    /// READ requests sent: (xfer id, segment lengths), received once the target announces.
    reads: Vec<(u64, Vec<u64>)>,
    /// Answers still expected (an Ack per WRITE announce, an announce or error per READ).
    expected: usize,
    closed: bool,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Option<Peer> {
        let (s, mut sess) = handshake(addr, "fuzz").ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
        s.set_nodelay(true).ok()?;
        let mut buf: Vec<u8> = (0..2 * REGION).map(|i| (i % 241) as u8 ^ 0x3c).collect();
        // SAFETY: `buf` lives in the Peer beside the session and is never reallocated.
        let mem =
            unsafe { sess.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host) }.ok()?;
        Some(Peer {
            s,
            sess,
            buf,
            mem,
            xfers: Vec::new(),
            reads: Vec::new(),
            expected: 0,
            closed: false,
        })
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.closed || self.s.write_all(bytes).is_err() {
            self.closed = true;
        }
    }

    /// Posts `lens` as one transfer of consecutive pieces of our buffer (clamped to it).
    fn post(&mut self, dir: Direction, lens: &[u64]) {
        let mut off = 0u64;
        let mut segs = Vec::new();
        for &len in lens {
            let len = len.min(self.buf.len() as u64 - off.min(self.buf.len() as u64));
            if len == 0 {
                continue;
            }
            segs.push(ESeg {
                mem: self.mem,
                offset: off,
                remote_offset: 0,
                len,
            });
            off += len;
        }
        if !segs.is_empty() {
            if let Ok(x) = self.sess.post(dir, &segs) {
                self.xfers.push(x);
            }
        }
    }

    /// Reads answers and drives our transfers until the target closed, or everything it
    /// owes us arrived and our transfers finished, or the input's time is up.
    fn settle(&mut self) {
        let deadline = Instant::now() + INPUT_BOUND;
        while !self.closed && Instant::now() < deadline {
            let _ = self.sess.progress();
            let sess = &mut self.sess;
            self.xfers
                .retain(|&x| matches!(sess.poll(x), Ok(Progress::Pending { .. })));
            let mut b = [0u8; HEADER_LEN];
            match self.s.peek(&mut b) {
                Ok(0) => self.closed = true,
                Ok(_) => match read_frame(&mut self.s) {
                    Some(f) => self.answer(&f),
                    None => self.closed = true,
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.expected == 0 && self.xfers.is_empty() {
                        return;
                    }
                }
                Err(_) => self.closed = true,
            }
        }
    }

    fn answer(&mut self, f: &[u8]) {
        let m = wire::parse(f).unwrap_or_else(|e| panic!("the target sent a bad frame: {e}"));
        match m {
            Message::Ack(_) | Message::Error(_) => self.expected = self.expected.saturating_sub(1),
            Message::ReadAnnounce(ReadAnnounce { xfer }) => {
                self.expected = self.expected.saturating_sub(1);
                if let Some(i) = self.reads.iter().position(|r| r.0 == xfer) {
                    let (_, lens) = self.reads.remove(i);
                    self.post(Direction::Recv, &lens);
                }
            }
            Message::ReadData(ReadData { xfer, data }) => {
                self.expected = self.expected.saturating_sub(1);
                // Raw frames (ops 0 and 5) can carry READs we do not track; those are
                // answered too, and only tracked ones are checked.
                if let Some(i) = self.reads.iter().position(|r| r.0 == xfer) {
                    let (_, lens) = self.reads.remove(i);
                    assert_eq!(
                        data.len() as u64,
                        lens.iter().sum::<u64>(),
                        "ReadData carries exactly the requested bytes"
                    );
                }
            }
            other => panic!("a target never sends {other:?}"),
        }
    }
}

/// Segments around the guarded registration: a flag byte picks region id / key (right or
/// wrong), an offset from 2 pages before the region to 2 pages after, and a length.
fn segments(b: &mut Bytes<'_>, token: &RegionToken) -> Vec<Segment> {
    let n = 1 + usize::from(b.u8()) % MAX_SEGS;
    (0..n)
        .map(|_| {
            let flags = b.u8();
            let region = if flags & 1 == 0 {
                token.region
            } else {
                u64::from(b.u32())
            };
            let key = if flags & 2 == 0 {
                token.key
            } else {
                token.key ^ u64::from(b.u32())
            };
            let addr = if flags & 4 == 0 {
                let off = i64::from(b.u16() % (REGION as u16 + 4 * PAGE as u16));
                (token.base as i64 + off - 2 * PAGE as i64) as u64
            } else {
                u64::from(b.u32()) << (b.u8() % 40)
            };
            let len = if flags & 8 == 0 {
                u64::from(b.u16() % (REGION as u16 + 2))
            } else {
                u64::MAX >> (b.u8() % 64)
            };
            Segment::new(region, key, addr, len)
        })
        .collect()
}

fn run(data: &[u8]) {
    let mut guard = WORLD.lock().unwrap_or_else(|e| e.into_inner());
    let w = guard.get_or_insert_with(|| {
        tcpx::log::set_max_level(tcpx::log::Level::Error);
        World::new(2000)
    });
    let Some(mut p) = Peer::connect(w.addr) else {
        panic!("handshake with the target failed");
    };
    let mut b = Bytes(data);
    let mut xfer = 1u64;
    for _ in 0..MAX_OPS {
        if b.is_empty() || p.closed {
            break;
        }
        match b.u8() % 9 {
            0 => {
                let n = usize::from(b.u8());
                let raw = b.take(n).to_vec();
                p.send(&raw);
            }
            1 | 2 => {
                let segs = segments(&mut b, &w.token);
                let lie = b.u8();
                let notif = (lie & 0x80 != 0).then_some(&b"fuzz"[..]);
                p.send(&frame_with_segments(&segs, |segments| {
                    frame(&Message::WriteAnnounce(WriteAnnounce {
                        xfer,
                        segments,
                        notif,
                        data: None,
                    }))
                }));
                p.expected += 1;
                let mut lens: Vec<u64> = segs.iter().map(|s| s.len()).collect();
                match lie & 3 {
                    1 => lens.truncate(lens.len() - 1),
                    2 => lens.push(u64::from(b.u16() % 4096) + 1),
                    3 => lens = Vec::new(),
                    _ => {}
                }
                p.post(Direction::Send, &lens);
                xfer += 1;
            }
            3 => {
                let inline_ok = b.u8() & 1 == 1;
                let segs = segments(&mut b, &w.token);
                p.send(&frame_with_segments(&segs, |segments| {
                    frame(&Message::ReadRequest(ReadRequest {
                        xfer,
                        segments,
                        inline_ok,
                    }))
                }));
                p.expected += 1;
                p.reads.push((xfer, segs.iter().map(|s| s.len()).collect()));
                xfer += 1;
            }
            4 => {
                let n = usize::from(b.u16() % 5000);
                let msg = b.take(n).to_vec();
                p.send(&frame(&Message::Notif(Notif { msg: &msg })));
            }
            5 => {
                let h = raw_header(&mut b);
                p.send(&h);
            }
            6 => {
                let m = frame(&unexpected(b.u8(), xfer));
                p.send(&m);
            }
            7 => {
                // A WRITE with its data inline: as long as the segments say, or a few bytes
                // off; built by hand so the flag and the data can disagree with the segments.
                let segs = segments(&mut b, &w.token);
                let lie = b.u8();
                let notif = (lie & 0x80 != 0).then_some(&b"fuzz"[..]);
                let total = segs
                    .iter()
                    .fold(0u64, |a, s| a.saturating_add(s.len()))
                    .min(MAX_INLINE_WRITE as u64 + 8) as usize;
                let n = match lie & 3 {
                    1 => total.saturating_sub(1),
                    2 => total + 1,
                    _ => total,
                };
                let mut f = frame_with_segments(&segs, |segments| {
                    frame(&Message::WriteAnnounce(WriteAnnounce {
                        xfer,
                        segments,
                        notif,
                        data: None,
                    }))
                });
                f[28] |= 2;
                f.extend(std::iter::repeat_n(0xC3, n));
                let len = f.len() as u32;
                f[8..12].copy_from_slice(&len.to_le_bytes());
                p.send(&f);
                p.expected += 1;
                xfer += 1;
            }
            _ => p.settle(),
        }
    }
    p.settle();
    drop(p);
    w.guard.assert_intact("after the input");
    w.good_roundtrip("after the input");
    w.guard.assert_intact("after the good agent");
}

fuzz_target!(|data: &[u8]| run(data));
