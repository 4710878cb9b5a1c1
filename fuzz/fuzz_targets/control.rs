//! Fuzzes the NIXL backend's control protocol end to end: a real target `Backend` (backend
//! thread, control listener, engine sessions over tcpxsock on loopback) receives, from a peer
//! that completed a real handshake, a sequence of frames decoded from the input — raw bytes,
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

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use plugin_TCPX::backend::{XferArgs, MEM_DRAM};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::{blob, Backend, Status};
use tcpx::engine::{Config as EngineConfig, Direction, Memory, Segment as ESeg, Session};
use tcpx::{MemId, Progress, XferId};
use tcpx_core::wire::{
    self, Ack, ErrorMsg, Hello, Message, Notif, ReadAnnounce, ReadRequest, RegionToken, Segment,
    WriteAnnounce, HEADER_LEN, MAGIC, VERSION,
};

const PAGE: usize = 4096;
const REGION: usize = 4 * PAGE;
const CANARY: u8 = 0xA5;
/// How long one input may keep the peer waiting for answers.
const INPUT_BOUND: Duration = Duration::from_millis(300);
/// Any wait of the well-behaved agent: past this the target is stuck (a finding).
const BOUND: Duration = Duration::from_secs(10);
const MAX_OPS: usize = 16;
const MAX_SEGS: usize = 6;

extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn mprotect(addr: *mut u8, len: usize, prot: i32) -> i32;
}

/// `[guard][canary][region][canary][guard]`, never unmapped (it lives for the process).
struct Guarded(*mut u8);

// SAFETY: the mapping is process-lifetime memory; access goes through the world's lock.
unsafe impl Send for Guarded {}

impl Guarded {
    fn new() -> Guarded {
        let len = REGION + 4 * PAGE;
        // SAFETY: an anonymous private mapping; guard pages made inaccessible below.
        let base = unsafe { mmap(std::ptr::null_mut(), len, 3, 0x22, -1, 0) };
        assert!(!base.is_null() && base as isize != -1, "mmap");
        // SAFETY: pages of the mapping just made.
        unsafe {
            assert_eq!(mprotect(base, PAGE, 0), 0);
            assert_eq!(mprotect(base.add(len - PAGE), PAGE, 0), 0);
            std::ptr::write_bytes(base.add(PAGE), CANARY, len - 2 * PAGE);
        }
        Guarded(base)
    }

    fn region(&self) -> u64 {
        self.0 as u64 + 2 * PAGE as u64
    }

    fn assert_intact(&self) {
        // SAFETY: the canary pages are readable for the process's lifetime.
        let (lo, hi) = unsafe {
            (
                std::slice::from_raw_parts(self.0.add(PAGE), PAGE),
                std::slice::from_raw_parts(self.0.add(2 * PAGE + REGION), PAGE),
            )
        };
        assert!(lo.iter().all(|&b| b == CANARY), "write before the registration");
        assert!(hi.iter().all(|&b| b == CANARY), "write after the registration");
    }
}

fn d(addr: u64, len: u64, md: usize) -> Desc {
    Desc {
        addr,
        len,
        dev_id: 0,
        md,
    }
}

fn frame(m: &Message<'_>) -> Vec<u8> {
    let mut b = vec![0u8; m.buffer_len()];
    m.emit(&mut b).expect("emit");
    b
}

fn seg_bytes(s: &Segment) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, v) in [s.region(), s.key(), s.addr(), s.len()].into_iter().enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// A frame carrying `segs` as given, also ranges our own emitter refuses (`addr + len`
/// overflowing): emitted with those lengths set to 0, then the segment bytes written back.
fn frame_with_segments(segs: &[Segment], make: impl Fn(&[Segment]) -> Vec<u8>) -> Vec<u8> {
    let tame: Vec<Segment> = segs
        .iter()
        .map(|s| match s.end() {
            Some(_) => *s,
            None => Segment::new(s.region(), s.key(), s.addr(), 0),
        })
        .collect();
    let mut f = make(&tame);
    let (first, all) = (seg_bytes(&tame[0]), tame.len() * 32);
    let at = f
        .windows(32)
        .position(|w| w == first)
        .expect("the segment list is in the frame");
    for (i, s) in segs.iter().enumerate() {
        f[at + i * 32..at + i * 32 + 32].copy_from_slice(&seg_bytes(s));
    }
    debug_assert!(at + all <= f.len());
    f
}

/// The target, its guarded registration, and a well-behaved agent `a` with its buffers.
struct World {
    t: Backend,
    a: Backend,
    addr: SocketAddr,
    guard: Guarded,
    token: RegionToken,
    src: Vec<u8>,
    dst: Vec<u8>,
    ma: usize,
    rt: usize,
    round: u8,
}

impl World {
    fn new() -> World {
        tcpx_sock::config::configure(tcpx_sock::config::Config {
            ifname: Some("lo".into()),
            nsocks: 1,
            ..Default::default()
        });
        tcpx::log::set_max_level(tcpx::log::Level::Error);
        let params = [("listen_addr", "127.0.0.1:0"), ("timeout_ms", "2000")];
        let t = Backend::new("t", params).expect("target backend");
        let a = Backend::new("a", params).expect("agent backend");
        a.load_remote_conn_info("t", t.conn_info()).unwrap();
        let (info, _) = blob::decode_conn_info(t.conn_info()).unwrap();
        let guard = Guarded::new();
        let mg = t
            .register_mem(&d(guard.region(), REGION as u64, 0), MEM_DRAM)
            .unwrap();
        let token = blob::decode_token(&t.public_data(mg).unwrap()).unwrap();
        let mut src = vec![0u8; REGION];
        let mut dst = vec![0u8; REGION];
        let ma = a
            .register_mem(&d(src.as_mut_ptr() as u64, REGION as u64, 0), MEM_DRAM)
            .unwrap();
        let mt = t
            .register_mem(&d(dst.as_mut_ptr() as u64, REGION as u64, 0), MEM_DRAM)
            .unwrap();
        let rt = a
            .load_remote_md(
                &d(dst.as_mut_ptr() as u64, REGION as u64, 0),
                &t.public_data(mt).unwrap(),
                MEM_DRAM,
                "t",
            )
            .unwrap();
        a.connect("t").unwrap();
        World {
            t,
            a,
            addr: info.addr,
            guard,
            token,
            src,
            dst,
            ma,
            rt,
            round: 0,
        }
    }

    fn finish(&self, h: usize) -> Status {
        let deadline = Instant::now() + BOUND;
        loop {
            match self.a.check_xfer(h) {
                Ok(Status::InProgress) => {}
                Ok(s) => return s,
                Err(e) => panic!("the good agent's transfer failed: {e}"),
            }
            assert!(Instant::now() < deadline, "the good agent's transfer hangs");
            std::thread::yield_now();
        }
    }

    /// `a` writes a fresh pattern into `t`'s other registration and reads a page back.
    fn good_roundtrip(&mut self) {
        self.round = self.round.wrapping_add(1);
        let r = self.round;
        for (i, x) in self.src.iter_mut().enumerate() {
            *x = (i % 239) as u8 ^ r;
        }
        let (s, t) = (self.src.as_ptr() as u64, self.dst.as_ptr() as u64);
        let (l, rr) = ([d(s, REGION as u64, self.ma)], [d(t, REGION as u64, self.rt)]);
        let w = XferArgs {
            op: Op::Write,
            local: &l,
            local_mem: MEM_DRAM,
            remote: &rr,
            remote_mem: MEM_DRAM,
            agent: "t",
            notif: None,
        };
        let mut h = 0;
        self.a.post_xfer(&w, &mut h).expect("good WRITE posts");
        assert_eq!(self.finish(h), Status::Success, "good WRITE");
        self.a.release_req(h).unwrap();
        assert!(self.dst == self.src, "good WRITE data differs");
        self.src[..PAGE].fill(0);
        let (l, rr) = ([d(s, PAGE as u64, self.ma)], [d(t + PAGE as u64, PAGE as u64, self.rt)]);
        let rd = XferArgs {
            op: Op::Read,
            local: &l,
            remote: &rr,
            ..w
        };
        let mut h = 0;
        self.a.post_xfer(&rd, &mut h).expect("good READ posts");
        assert_eq!(self.finish(h), Status::Success, "good READ");
        self.a.release_req(h).unwrap();
        assert!(self.src[..PAGE] == self.dst[PAGE..2 * PAGE], "good READ data differs");
        // Drop whatever the hostile peer's notifications queued.
        self.t.take_notifs(|_, _| true).unwrap();
    }
}

static WORLD: Mutex<Option<World>> = Mutex::new(None);

/// Bytes of the input, read front to back; zeros once exhausted.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
        s.set_write_timeout(Some(BOUND)).ok()?;
        s.set_nodelay(true).ok()?;
        let cfg = EngineConfig {
            timeout: Duration::from_secs(5),
            ..EngineConfig::default()
        };
        let net = Session::open_net(&cfg).ok()?;
        let l = Session::listen(net, cfg).ok()?;
        s.write_all(&frame(&Message::Hello(Hello {
            channels: 2,
            name: "fuzz",
        })))
        .ok()?;
        s.write_all(l.conn_info()).ok()?;
        s.set_read_timeout(Some(BOUND)).ok()?;
        let theirs = read_frame(&mut s)?;
        s.set_read_timeout(Some(Duration::from_millis(1))).ok()?;
        let mut sess = l.connect(&theirs).ok()?;
        let mut buf: Vec<u8> = (0..2 * REGION).map(|i| (i % 241) as u8 ^ 0x3c).collect();
        // SAFETY: `buf` lives in the Peer beside the session and is never reallocated.
        let mem = unsafe { sess.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host) }.ok()?;
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
            other => panic!("a target never sends {other:?}"),
        }
    }
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    read_exact(s, &mut buf)?;
    let len = wire::peek_frame(&buf)
        .unwrap_or_else(|e| panic!("the target sent a bad header: {e}"))
        .expect("a whole header");
    buf.resize(len, 0);
    read_exact(s, &mut buf[HEADER_LEN..])?;
    Some(buf)
}

fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Option<()> {
    let deadline = Instant::now() + BOUND;
    let mut off = 0;
    while off < buf.len() {
        match s.read(&mut buf[off..]) {
            Ok(0) => return None,
            Ok(n) => off += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                assert!(Instant::now() < deadline, "the target stalls mid-frame");
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(())
}

/// Segments around the guarded registration: a flag byte picks region id / key (right or
/// wrong), an offset from 2 pages before the region to 2 pages after, and a length.
fn segments(b: &mut Bytes<'_>, token: &RegionToken) -> Vec<Segment> {
    let n = 1 + usize::from(b.u8()) % MAX_SEGS;
    (0..n)
        .map(|_| {
            let flags = b.u8();
            let region = if flags & 1 == 0 { token.region } else { u64::from(b.u32()) };
            let key = if flags & 2 == 0 { token.key } else { token.key ^ u64::from(b.u32()) };
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
    let w = guard.get_or_insert_with(World::new);
    let Some(mut p) = Peer::connect(w.addr) else {
        panic!("handshake with the target failed");
    };
    let mut b = Bytes(data);
    let mut xfer = 1u64;
    for _ in 0..MAX_OPS {
        if b.is_empty() || p.closed {
            break;
        }
        match b.u8() % 8 {
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
                let segs = segments(&mut b, &w.token);
                p.send(&frame_with_segments(&segs, |segments| {
                    frame(&Message::ReadRequest(ReadRequest { xfer, segments }))
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
                let mut h = Vec::with_capacity(HEADER_LEN);
                let f = b.u8();
                let magic = if f & 1 == 0 { MAGIC } else { b.u32() };
                let version = if f & 2 == 0 { VERSION } else { b.u16() };
                h.extend_from_slice(&magic.to_le_bytes());
                h.extend_from_slice(&version.to_le_bytes());
                h.extend_from_slice(&u16::from(b.u8() % 16).to_le_bytes());
                h.extend_from_slice(&b.u32().to_le_bytes());
                let body = usize::from(b.u8());
                h.extend_from_slice(b.take(body));
                p.send(&h);
            }
            6 => {
                let m = match b.u8() % 4 {
                    0 => frame(&Message::Ack(Ack { xfer, status: 0 })),
                    1 => frame(&Message::ReadAnnounce(ReadAnnounce { xfer })),
                    2 => frame(&Message::Hello(Hello {
                        channels: 2,
                        name: "again",
                    })),
                    _ => frame(&Message::Error(ErrorMsg {
                        code: 1,
                        xfer,
                        text: "no",
                    })),
                };
                p.send(&m);
            }
            _ => p.settle(),
        }
    }
    p.settle();
    drop(p);
    w.guard.assert_intact();
    w.good_roundtrip();
    w.guard.assert_intact();
}

fuzz_target!(|data: &[u8]| run(data));
