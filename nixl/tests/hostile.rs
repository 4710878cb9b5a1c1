//! Hostile peers against a real `Backend`'s control listener (issue "Faults, hostile input…",
//! item 4).
//!
//! A test client speaks our control protocol over TCP (and, after `Hello`, runs a real engine
//! session so it can get past the handshake) and sends malformed, lying and abusive input. For
//! every case: the expected answer where the protocol defines one (`ErrorMsg` for a refused
//! WRITE or READ, after which the stream keeps serving; malformed input closes it without an
//! answer); the well-behaved agent `a` keeps transferring to the same target with data
//! verified; no byte outside the target's registration changed (pattern canaries around it,
//! `PROT_NONE` guard pages around those); and the process's fd count back to its baseline.
//!
//! The checks run in a child process (`hostile_peers_child`, run by `hostile_peers` with
//! `--nocapture`) so the fd count is not disturbed by other tests and the backend's log lines
//! (stderr) can be checked by the parent.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use plugin_TCPX::testing::{frame, handshake, read_frame, World, BOUND, REGION};
use plugin_TCPX::Status;
use tcpx::engine::{Direction, Memory, Segment as ESeg, Session};
use tcpx_core::wire::{
    self, Ack, ErrorMsg, Hello, Message, Notif, ReadAnnounce, ReadData, ReadRequest, Segment,
    WriteAnnounce, HEADER_LEN, MAGIC, MAX_FRAME, VERSION,
};

/// Target's timeout: bounds the handshake of a silent peer and (with the fix in remote/service.rs)
/// a target conn stuck mid-frame or mid-WRITE.
const TIMEOUT_MS: u64 = 2000;

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn header(magic: u32, version: u16, kind: u16, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&magic.to_le_bytes());
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&kind.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h
}

fn hello(name: &str) -> Vec<u8> {
    frame(&Message::Hello(Hello { channels: 2, name }))
}

/// Every frame the target sends until it closes the stream (bounded).
fn until_closed(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(f) = read_frame(s) {
        got.push(f);
        assert!(got.len() < 100_000, "target keeps talking");
    }
    got
}

fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.set_write_timeout(Some(BOUND)).unwrap();
    s
}

/// A peer past the handshake: control stream + engine session, a source buffer registered.
struct Peer {
    s: TcpStream,
    sess: Session,
    src: Vec<u8>,
    mem: tcpx::engine::MemId,
}

/// Whether nothing arrives from the target within `d` (our session driven meanwhile); a
/// closed stream counts as something.
fn no_frame_within(p: &mut Peer, d: Duration) -> bool {
    let end = Instant::now() + d;
    p.s.set_read_timeout(Some(Duration::from_millis(10)))
        .unwrap();
    while Instant::now() < end {
        let _ = p.sess.progress();
        let mut b = [0u8; 1];
        match p.s.peek(&mut b) {
            Ok(_) => return false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return false,
        }
    }
    true
}

impl Peer {
    fn connect(addr: SocketAddr, name: &str) -> Peer {
        let (s, mut sess) = handshake(addr, name).unwrap();
        let mut src: Vec<u8> = (0..2 * REGION).map(|i| (i % 241) as u8 ^ 0x3c).collect();
        // SAFETY: `src` lives in the Peer next to the session and is never reallocated.
        let mem = unsafe {
            sess.register(src.as_mut_ptr().cast(), src.len(), Memory::Host)
                .unwrap()
        };
        Peer { s, sess, src, mem }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Posts the data sends of a WRITE announcing `segs`, as a conforming initiator does: one
    /// send segment of each length (all from the start of `src`).
    fn post_segs(&mut self, segs: &[Segment]) -> tcpx::engine::XferId {
        let each: Vec<ESeg> = segs
            .iter()
            .map(|s| ESeg {
                mem: self.mem,
                offset: 0,
                remote_offset: 0,
                len: s.len(),
            })
            .collect();
        self.sess.post(Direction::Send, &each).unwrap()
    }

    /// Posts the data sends of a WRITE: `len` bytes from the start of `src`.
    fn post_data(&mut self, len: u64) -> tcpx::engine::XferId {
        let seg = ESeg {
            mem: self.mem,
            offset: 0,
            remote_offset: 0,
            len,
        };
        self.sess.post(Direction::Send, &[seg]).unwrap()
    }

    /// The next `n` frames from the target (bounded), driving our session meanwhile.
    fn frames(&mut self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + BOUND;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                Instant::now() < deadline,
                "target sent {} of {n} frames",
                got.len()
            );
            if !no_frame_within(self, Duration::from_millis(20)) {
                self.s.set_read_timeout(Some(BOUND)).unwrap();
                got.push(read_frame(&mut self.s).expect("the target closed the stream"));
            }
        }
        got
    }

    /// Reads the target's frames until it closes, driving our session meanwhile.
    fn until_closed(&mut self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + BOUND;
        let mut got = Vec::new();
        self.s
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        loop {
            let _ = self.sess.progress();
            let mut b = [0u8; HEADER_LEN];
            match self.s.peek(&mut b) {
                Ok(0) => return got,
                Ok(_) => match read_frame(&mut self.s) {
                    Some(f) => got.push(f),
                    None => return got,
                },
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("peek: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "target neither answered nor closed"
            );
        }
    }
}

fn write_announce(xfer: u64, segs: &[Segment]) -> Vec<u8> {
    frame(&Message::WriteAnnounce(WriteAnnounce {
        xfer,
        segments: segs,
        notif: None,
        data: None,
    }))
}

fn read_request(xfer: u64, segs: &[Segment]) -> Vec<u8> {
    read_request_with(xfer, segs, false)
}

fn read_request_with(xfer: u64, segs: &[Segment], inline_ok: bool) -> Vec<u8> {
    frame(&Message::ReadRequest(ReadRequest {
        xfer,
        segments: segs,
        inline_ok,
    }))
}

/// A WRITE of `segs` the target must refuse: its data goes out as a conforming initiator's
/// would, the target answers an `ErrorMsg` naming it, takes the data (dropping it: our sends
/// complete) and keeps serving the stream: a good WRITE (`xfer + 1`, 1000 bytes at 100)
/// follows on it and lands.
#[track_caller]
fn refused_write_keeps_the_stream(p: &mut Peer, good: Segment, xfer: u64, segs: &[Segment]) {
    let id = p.post_segs(segs);
    p.send(&write_announce(xfer, segs));
    let got = p.frames(1);
    match wire::parse(&got[0]).unwrap() {
        Message::Error(m) => {
            assert_eq!(m.xfer, xfer);
            assert_eq!(m.code, (Status::InvalidParam as i32).unsigned_abs());
        }
        m => panic!("expected an ErrorMsg for the refused WRITE, got {m:?}"),
    }
    p.sess.wait(id, BOUND).unwrap();
    let id = p.post_data(good.len());
    p.send(&write_announce(xfer + 1, &[good]));
    let got = p.frames(1);
    assert_eq!(
        wire::parse(&got[0]).unwrap(),
        Message::Ack(Ack {
            xfer: xfer + 1,
            status: 0
        }),
        "the stream still serves after the refusal"
    );
    p.sess.wait(id, BOUND).unwrap();
}

/// After a hostile connection closed: canaries, fd count, the good agent, backend alive.
fn after(w: &mut World, case: &str, baseline: usize) {
    w.guard.assert_intact(case);
    let deadline = Instant::now() + BOUND;
    while fds() != baseline {
        assert!(
            Instant::now() < deadline,
            "{case}: fd count {} never returned to its baseline {baseline}",
            fds()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    w.good_roundtrip(case);
    w.guard.assert_intact(case);
    eprintln!("HOSTILE-CASE-OK {case}");
}

fn run_cases() {
    let mut w = World::new(TIMEOUT_MS);
    w.good_roundtrip("setup");
    let baseline = fds();
    let addr = w.addr;
    let hostile = "hostile";

    // --- Before / instead of Hello: the handshake thread refuses, the stream is closed. ---
    let pre: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "truncated header then EOF",
            header(MAGIC, VERSION, 3, 16)[..6].to_vec(),
            true,
        ),
        (
            "wrong magic",
            header(0x5850_4354 ^ 1, VERSION, 3, 16),
            false,
        ),
        ("wrong version", header(MAGIC, VERSION + 1, 3, 16), false),
        ("unknown kind", header(MAGIC, VERSION, 99, 16), false),
        (
            "huge declared length",
            header(MAGIC, VERSION, 3, u32::MAX),
            false,
        ),
        (
            "length above MAX_FRAME",
            header(MAGIC, VERSION, 3, MAX_FRAME as u32 + 1),
            false,
        ),
        ("length below header", header(MAGIC, VERSION, 3, 4), false),
        (
            "truncated Hello body then EOF",
            hello(hostile)[..HEADER_LEN + 3].to_vec(),
            true,
        ),
        (
            "Ack instead of Hello",
            frame(&Message::Ack(Ack { xfer: 1, status: 0 })),
            false,
        ),
        (
            "Hello then garbage handles",
            [
                hello(hostile),
                header(MAGIC, VERSION, 4, 16),
                vec![2, 0, 0, 0],
            ]
            .concat(),
            false,
        ),
        (
            "Hello then zero listen handles",
            [hello(hostile), {
                let mut h = header(MAGIC, VERSION, 4, 16);
                h.extend_from_slice(&[0; 4]);
                h
            }]
            .concat(),
            false,
        ),
    ];
    for (case, bytes, eof) in pre {
        eprintln!("HOSTILE-CASE {case}");
        let mut s = raw(addr);
        s.write_all(&bytes).unwrap();
        if eof {
            s.shutdown(Shutdown::Write).unwrap();
        }
        let got = until_closed(&mut s);
        // After a valid Hello + handles frame the target has sent its own handles and limits;
        // nothing else, ever.
        assert!(
            got.iter().all(|f| matches!(
                wire::parse(f),
                Ok(Message::ListenHandles(_) | Message::Limits(_))
            )),
            "{case}: target answered {got:?}"
        );
        drop(s);
        after(&mut w, case, baseline);
    }

    // Slowloris before Hello: half a header, then silence. The handshake read times out.
    {
        let case = "slowloris before Hello";
        eprintln!("HOSTILE-CASE {case}");
        let mut s = raw(addr);
        s.write_all(&header(MAGIC, VERSION, 3, 16)[..6]).unwrap();
        assert!(until_closed(&mut s).is_empty());
        drop(s);
        after(&mut w, case, baseline);
    }

    // --- Our own client, well-behaved, as a control: a valid WRITE lands and is Acked. ---
    {
        let case = "valid WRITE from the test client";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let id = p.post_data(1000);
        p.send(&write_announce(7, &[w.seg(100, 1000)]));
        p.s.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + BOUND;
        let ack = loop {
            let _ = p.sess.progress();
            let mut b = [0u8; 1];
            match p.s.peek(&mut b) {
                Ok(0) => panic!("{case}: closed"),
                Ok(_) => break read_frame(&mut p.s).unwrap(),
                Err(_) => assert!(Instant::now() < deadline, "{case}: no Ack"),
            }
        };
        assert_eq!(
            wire::parse(&ack).unwrap(),
            Message::Ack(Ack { xfer: 7, status: 0 })
        );
        p.sess.wait(id, BOUND).unwrap();
        assert!(
            w.guard.region_bytes()[100..1100] == p.src[..1000],
            "{case}: data"
        );
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- After a real handshake: bad frames close the stream without an answer. ---
    let r = w.token.region;
    let k = w.token.key;
    let base = w.token.base;
    let mut huge_count = header(MAGIC, VERSION, 5, 32);
    huge_count.extend_from_slice(&1u64.to_le_bytes());
    huge_count.extend_from_slice(&u32::MAX.to_le_bytes()); // count
    huge_count.extend_from_slice(&[0; 8]);
    let mut rr_count = header(MAGIC, VERSION, 6, (24 + 2000 * 32) as u32);
    rr_count.extend_from_slice(&1u64.to_le_bytes());
    rr_count.extend_from_slice(&2000u32.to_le_bytes());
    rr_count.resize(24 + 2000 * 32, 0);
    let mut notif_huge = header(MAGIC, VERSION, 9, 16);
    notif_huge.extend_from_slice(&u32::MAX.to_le_bytes());
    // Segments whose end overflows u64: our emitter refuses them, so built by hand; the
    // parser rejects them (malformed frame, closed without an answer).
    let raw_wa = |segs: &[[u64; 4]]| {
        let mut f = header(MAGIC, VERSION, 5, (32 + 32 * segs.len()) as u32);
        f.extend_from_slice(&3u64.to_le_bytes());
        f.extend_from_slice(&(segs.len() as u32).to_le_bytes());
        f.extend_from_slice(&[0; 8]);
        for s in segs {
            for v in s {
                f.extend_from_slice(&v.to_le_bytes());
            }
        }
        f
    };
    let post: Vec<(&str, Vec<u8>)> = vec![
        (
            "segment wrapping the address space",
            raw_wa(&[[r, k, u64::MAX - 10, 100]]),
        ),
        (
            "segment of u64::MAX bytes",
            raw_wa(&[[r, k, base, u64::MAX]]),
        ),
        ("wrong magic after Hello", header(0, VERSION, 5, 32)),
        ("wrong version after Hello", header(MAGIC, 0, 5, 32)),
        (
            "unknown kind after Hello",
            header(MAGIC, VERSION, 0xffff, 32),
        ),
        (
            "huge declared length after Hello",
            header(MAGIC, VERSION, 5, u32::MAX),
        ),
        ("WriteAnnounce with a huge count", huge_count),
        ("ReadRequest with 2000 segments", rr_count),
        ("Notif with a huge length field", notif_huge),
        (
            "Ack to the target",
            frame(&Message::Ack(Ack { xfer: 1, status: 0 })),
        ),
        (
            "ReadAnnounce to the target",
            frame(&Message::ReadAnnounce(ReadAnnounce { xfer: 1 })),
        ),
        ("second Hello", hello(hostile)),
        (
            "ReadData to the target",
            frame(&Message::ReadData(ReadData {
                xfer: 1,
                data: b"unasked",
            })),
        ),
        (
            "Error to the target",
            frame(&Message::Error(ErrorMsg {
                code: 1,
                xfer: 1,
                text: "x",
            })),
        ),
    ];
    for (case, bytes) in post {
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        p.send(&bytes);
        let got = p.until_closed();
        assert!(got.is_empty(), "{case}: target answered {got:?}");
        drop(p);
        after(&mut w, case, baseline);
    }

    // Truncated frame after Hello, then EOF.
    {
        let case = "truncated WriteAnnounce then EOF";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let f = write_announce(1, &[w.seg(0, 64)]);
        p.send(&f[..f.len() - 5]);
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- Refused WRITEs: ErrorMsg, their data taken and dropped, the stream keeps serving. ---
    let end = REGION as u64;
    let refused: Vec<(&str, Vec<Segment>)> = vec![
        (
            "segment before the registration",
            vec![Segment::new(r, k, base - 64, 64)],
        ),
        (
            "segment after the registration",
            vec![Segment::new(r, k, base + end, 64)],
        ),
        (
            "segment straddling the start",
            vec![Segment::new(r, k, base - 1, 64)],
        ),
        (
            "segment straddling the end",
            vec![Segment::new(r, k, base + end - 63, 64)],
        ),
        (
            "segment one byte too long",
            vec![Segment::new(r, k, base, end + 1)],
        ),
        ("wrong key", vec![Segment::new(r, k ^ 1, base, 64)]),
        (
            "unknown region id",
            vec![Segment::new(r + 1000, k, base, 64)],
        ),
        (
            "region id u64::MAX",
            vec![Segment::new(u64::MAX, k, base, 64)],
        ),
        (
            "good segment then a bad one",
            vec![
                Segment::new(r, k, base, 64),
                Segment::new(r, k, base + end, 64),
            ],
        ),
        (
            "1024 segments, the last outside",
            (0..1024)
                .map(|i| Segment::new(r, k, base + if i == 1023 { end } else { i * 8 }, 8))
                .collect(),
        ),
    ];
    for (case, segs) in refused {
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        // Like a real initiator, the data is already on its way when the announce goes out.
        let before = w.guard.region_bytes().to_vec();
        refused_write_keeps_the_stream(&mut p, w.seg(100, 1000), 42, &segs);
        let got = w.guard.region_bytes();
        assert!(
            got[..100] == before[..100] && got[1100..] == before[1100..],
            "{case}: the refused WRITE wrote into the region"
        );
        assert!(
            got[100..1100] == p.src[..1000],
            "{case}: the good WRITE's data"
        );
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- Refused READs: ErrorMsg, and the stream stays usable (a good READ follows). ---
    {
        let case = "refused READs then a good READ on the same stream";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let bad = [
            Segment::new(r, k, base + end - 1, 2),
            Segment::new(r, k ^ 0xff, base, 1),
            Segment::new(r + 77, k, base, 1),
            Segment::new(r, k, base - 4096, 4096),
        ];
        for (i, s) in bad.iter().enumerate() {
            p.send(&read_request(100 + i as u64, std::slice::from_ref(s)));
            p.s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let f = read_frame(&mut p.s).expect("closed after a refused READ");
            match wire::parse(&f).unwrap() {
                Message::Error(m) => {
                    assert_eq!(m.xfer, 100 + i as u64);
                    assert_eq!(m.code, (Status::InvalidParam as i32).unsigned_abs());
                }
                m => panic!("{case}: expected ErrorMsg, got {m:?}"),
            }
        }
        // A valid READ of 3000 bytes from offset 500 of the guarded region.
        let seg = ESeg {
            mem: p.mem,
            offset: REGION as u64,
            remote_offset: 0,
            len: 3000,
        };
        p.send(&read_request(200, &[w.seg(500, 3000)]));
        let f = read_frame(&mut p.s).expect("closed before ReadAnnounce");
        assert_eq!(
            wire::parse(&f).unwrap(),
            Message::ReadAnnounce(ReadAnnounce { xfer: 200 })
        );
        let id = p.sess.post(Direction::Recv, &[seg]).unwrap();
        p.sess.wait(id, BOUND).unwrap();
        assert!(
            p.src[REGION..REGION + 3000] == w.guard.region_bytes()[500..3500],
            "{case}: READ data"
        );
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- READs offering to take the data inline: a refused one gets an ErrorMsg and the
    // stream stays usable; a good one is answered with ReadData holding exactly its bytes. ---
    {
        let case = "inline READ refused, then inline READs answered with their bytes";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let end = REGION as u64;
        p.send(&read_request_with(
            300,
            &[Segment::new(r, k, base + end - 1, 2)],
            true,
        ));
        p.s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let f = read_frame(&mut p.s).expect("closed after a refused inline READ");
        match wire::parse(&f).unwrap() {
            Message::Error(m) => assert_eq!(m.xfer, 300),
            m => panic!("{case}: expected ErrorMsg, got {m:?}"),
        }
        let segs = [w.seg(500, 3000), w.seg(0, 1), w.seg(REGION as u64 - 96, 96)];
        p.send(&read_request_with(301, &segs, true));
        let f = read_frame(&mut p.s).expect("closed before ReadData");
        let want: Vec<u8> = [500..3500, 0..1, REGION - 96..REGION]
            .into_iter()
            .flat_map(|r| w.guard.region_bytes()[r].to_vec())
            .collect();
        match wire::parse(&f).unwrap() {
            Message::ReadData(d) => {
                assert_eq!(d.xfer, 301);
                assert!(d.data == want.as_slice(), "{case}: ReadData bytes");
            }
            m => panic!("{case}: expected ReadData, got {m:?}"),
        }
        // Larger than the target's inline_read_bytes (16 KiB default; the region twice):
        // the usual answer.
        let whole = w.seg(0, REGION as u64);
        p.send(&read_request_with(302, &[whole, whole], true));
        let f = read_frame(&mut p.s).expect("closed before ReadAnnounce");
        assert_eq!(
            wire::parse(&f).unwrap(),
            Message::ReadAnnounce(ReadAnnounce { xfer: 302 })
        );
        // The mirror of the target's two sends (the engine pairs segment by segment).
        let half = |offset| ESeg {
            mem: p.mem,
            offset,
            remote_offset: 0,
            len: REGION as u64,
        };
        let id = p
            .sess
            .post(Direction::Recv, &[half(0), half(REGION as u64)])
            .unwrap();
        p.sess.wait(id, BOUND).unwrap();
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- WRITEs carrying their data inline: a refused one gets an ErrorMsg, writes nothing
    // and the stream stays usable; a good one lands and is acknowledged; a frame whose data
    // disagrees with its segments closes the stream with nothing written. ---
    {
        let case = "inline WRITEs refused, then one taken";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        p.s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let before = w.guard.region_bytes().to_vec();
        let end = REGION as u64;
        let refused = [
            (400, vec![Segment::new(r, k, base + end - 1, 2)]),
            (401, vec![Segment::new(r, k ^ 1, base, 16)]),
            (402, vec![w.seg(0, 8), Segment::new(r, k, base - 8, 8)]),
        ];
        for (xfer, segs) in &refused {
            let total = segs.iter().map(Segment::len).sum::<u64>() as usize;
            let data = vec![0xEE; total];
            p.send(&frame(&Message::WriteAnnounce(WriteAnnounce {
                xfer: *xfer,
                segments: segs,
                notif: Some(b"no"),
                data: Some(&data),
            })));
            let f = read_frame(&mut p.s).expect("closed after a refused inline WRITE");
            match wire::parse(&f).unwrap() {
                Message::Error(m) => {
                    assert_eq!(m.xfer, *xfer);
                    assert_eq!(m.code, (Status::InvalidParam as i32).unsigned_abs());
                }
                m => panic!("{case}: expected ErrorMsg, got {m:?}"),
            }
            assert!(
                w.guard.region_bytes() == before.as_slice(),
                "{case}: a refused inline WRITE ({xfer}) changed the region"
            );
        }
        let segs = [w.seg(100, 7), w.seg(4000, 300)];
        let data: Vec<u8> = (0..307u32).map(|i| (i * 31 + 5) as u8).collect();
        p.send(&frame(&Message::WriteAnnounce(WriteAnnounce {
            xfer: 403,
            segments: &segs,
            notif: None,
            data: Some(&data),
        })));
        let f = read_frame(&mut p.s).expect("closed before the Ack");
        assert_eq!(
            wire::parse(&f).unwrap(),
            Message::Ack(Ack {
                xfer: 403,
                status: 0
            })
        );
        let got = w.guard.region_bytes();
        assert!(
            got[100..107] == data[..7] && got[4000..4300] == data[7..],
            "{case}: inline WRITE data"
        );
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }
    {
        let case = "inline WRITE whose data disagrees with its segments";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let before = w.guard.region_bytes().to_vec();
        let mut bad = frame(&Message::WriteAnnounce(WriteAnnounce {
            xfer: 410,
            segments: &[w.seg(0, 100)],
            notif: None,
            data: Some(&[0xEE; 100]),
        }));
        // The segment now claims 101 bytes; the frame carries 100.
        let len_at = 32 + 24;
        bad[len_at..len_at + 8].copy_from_slice(&101u64.to_le_bytes());
        p.send(&bad);
        let got = p.until_closed();
        assert!(got.is_empty(), "{case}: target answered {got:?}");
        assert!(
            w.guard.region_bytes() == before.as_slice(),
            "{case}: the region changed"
        );
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- Inline WRITEs behind a WRITE still landing: their data is written on arrival, their
    // Acks wait and keep arrival order; a READ still sending holds back no Ack. ---
    {
        let case = "inline WRITEs behind a WRITE still landing";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        p.send(&write_announce(500, &[w.seg(0, 4096)]));
        let inline = |xfer: u64, at: u64, v: u8| {
            frame(&Message::WriteAnnounce(WriteAnnounce {
                xfer,
                segments: &[w.seg(at, 8)],
                notif: None,
                data: Some(&[v; 8]),
            }))
        };
        for i in 0..5u64 {
            p.send(&inline(501 + i, 8192 + i * 8, 0xB0 + i as u8));
        }
        assert!(
            no_frame_within(&mut p, Duration::from_millis(300)),
            "{case}: an Ack overtook the WRITE still landing"
        );
        let got = w.guard.region_bytes();
        for i in 0..5usize {
            assert!(
                got[8192 + i * 8..8200 + i * 8]
                    .iter()
                    .all(|&v| v == 0xB0 + i as u8),
                "{case}: inline data {i} not written on arrival"
            );
        }
        // The data comes: every Ack, in arrival order.
        let _ = p.post_data(4096);
        let acks = p.frames(6);
        let xfers: Vec<u64> = acks
            .iter()
            .map(|f| match wire::parse(f).unwrap() {
                Message::Ack(a) if a.status == 0 => a.xfer,
                m => panic!("{case}: expected an Ack, got {m:?}"),
            })
            .collect();
        assert_eq!(xfers, [500, 501, 502, 503, 504, 505], "{case}: Ack order");
        // A READ answered through the data session, then an inline WRITE: announce, then Ack
        // (that READs hold back nothing is unit-tested on `tcpx_core::nixl::Jobs`, in
        // core/src/nixl/tests.rs: here the sockets buffer the READ's data whole).
        p.send(&read_request(600, &[w.seg(0, REGION as u64)]));
        p.send(&inline(601, 8192, 0xC1));
        let got = p.frames(2);
        assert_eq!(
            wire::parse(&got[0]).unwrap(),
            Message::ReadAnnounce(ReadAnnounce { xfer: 600 })
        );
        assert_eq!(
            wire::parse(&got[1]).unwrap(),
            Message::Ack(Ack {
                xfer: 601,
                status: 0
            }),
        );
        let each = ESeg {
            mem: p.mem,
            offset: 0,
            remote_offset: 0,
            len: REGION as u64,
        };
        let id = p.sess.post(Direction::Recv, &[each]).unwrap();
        p.sess.wait(id, BOUND).unwrap();
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }
    {
        let case = "inline WRITEs flooding behind a WRITE whose data never comes";
        eprintln!("HOSTILE-CASE {case}");
        let held = w.t.notif_bytes_held();
        let mut p = Peer::connect(addr, hostile);
        p.send(&write_announce(700, &[w.seg(0, 4096)]));
        // 4096 jobs at most per conn: the WRITE above and 4095 inline WRITEs wait; the next
        // waits for room (nothing written, no answer), and with it everything after it.
        let mut batch = Vec::new();
        for i in 0..4096u64 {
            batch.extend(frame(&Message::WriteAnnounce(WriteAnnounce {
                xfer: 701 + i,
                segments: &[w.seg(8192 + (i % 1000) * 8, 8)],
                notif: Some(b"waiting"),
                data: Some(&[0xD7; 8]),
            })));
        }
        p.send(&batch);
        // Holding the peer back, the target may say it is alive, and nothing else.
        let end = Instant::now() + Duration::from_millis(300);
        while Instant::now() < end {
            if !no_frame_within(&mut p, Duration::from_millis(10)) {
                let f = read_frame(&mut p.s).expect("closed while holding the peer back");
                match wire::parse(&f).unwrap() {
                    Message::Keepalive(_) => {}
                    m => panic!("{case}: the target answered {m:?} while a WRITE is landing"),
                }
            }
        }
        // Frames keep coming, the announced data never does: the target closes the conn
        // after its timeout all the same (frames are no progress for waiting WRITEs).
        let deadline = Instant::now() + BOUND;
        let mut closed = false;
        while Instant::now() < deadline && !closed {
            if p.s
                .write_all(&frame(&Message::Notif(Notif { msg: b"alive" })))
                .is_err()
            {
                closed = true;
                break;
            }
            closed = !no_frame_within(&mut p, Duration::from_millis(100)) && {
                let mut b = [0u8; 1];
                matches!(p.s.peek(&mut b), Ok(0) | Err(_))
            };
        }
        assert!(closed, "{case}: the conn stayed open past {BOUND:?}");
        drop(p);
        // The waiting WRITEs' notifs reserved room; the dead conn gave it back (bounded wait:
        // the backend thread drops dead conns on its next pass).
        let deadline = Instant::now() + BOUND;
        loop {
            // The peer's bare `Notif`s were queued for the application: take them.
            w.t.take_notifs(|_, _| true).unwrap();
            if w.t.notif_bytes_held() == held {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{case}: {} notification bytes still held, {held} before",
                w.t.notif_bytes_held()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        after(&mut w, case, baseline);
    }

    // --- Announce / data mismatch. ---
    // tcpxsock in TCPX mode (an UNPACK device) reports no receive sizes, as TCPX does.
    let sizes_unreported = plugin_TCPX::testing::sock_config().unpack;
    for (case, announced, sent) in [
        ("data shorter than announced", 8192u64, 4096u64),
        ("data longer than announced", 4096, 8192),
        (
            "data longer than announced, at the region's end",
            4096,
            3 * 4096,
        ),
    ] {
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let _ = p.post_data(sent);
        let off = REGION as u64 - announced;
        p.send(&write_announce(9, &[w.seg(off, announced)]));
        if sent < announced && sizes_unreported {
            // GPUDirect-TCPX reports no sizes (a receive is done with whatever the sender
            // sent), so nothing can tell this WRITE from a whole one: it lands (inside the
            // announced range, which `after` checks) and is acknowledged. The peer only
            // shortchanged itself.
            let got = p.frames(1);
            match wire::parse(&got[0]).unwrap() {
                Message::Ack(a) => assert_eq!((a.xfer, a.status), (9, 0), "{case}"),
                m => panic!("{case}: expected an Ack, got {m:?}"),
            }
            drop(p);
            after(&mut w, case, baseline);
            continue;
        }
        let got = p.until_closed();
        for f in &got {
            if let Message::Ack(a) = wire::parse(f).unwrap() {
                assert_ne!(a.status, 0, "{case}: a mismatched WRITE was acknowledged");
            }
        }
        drop(p);
        after(&mut w, case, baseline);
    }

    // Data never comes: the target gives up after its timeout.
    {
        let case = "WriteAnnounce whose data never comes";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        p.send(&write_announce(11, &[w.seg(0, 4096)]));
        let got = p.until_closed();
        assert!(got.is_empty(), "{case}: target answered {got:?}");
        drop(p);
        after(&mut w, case, baseline);
    }

    // Slowloris after Hello: half a header, then silence.
    {
        let case = "slowloris after Hello";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        p.send(&write_announce(12, &[w.seg(0, 64)])[..6]);
        assert!(p.until_closed().is_empty());
        drop(p);
        after(&mut w, case, baseline);
    }

    // --- Floods (bounded). ---
    {
        let case = "flood of 10000 Notif frames";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let one = frame(&Message::Notif(Notif { msg: b"flood" }));
        let all: Vec<u8> = (0..10_000).flat_map(|_| one.iter().copied()).collect();
        p.send(&all);
        p.s.shutdown(Shutdown::Write).unwrap();
        assert!(p.until_closed().is_empty());
        drop(p);
        let mut n = 0;
        w.t.take_notifs(|from, m| {
            n += usize::from(from == hostile && m == b"flood");
            true
        })
        .unwrap();
        assert_eq!(n, 10_000, "{case}: every notif queued once");
        after(&mut w, case, baseline);
    }
    {
        // 10,000 refused READs whose ErrorMsg answers the peer never reads: the target must not
        // stall its other peers on a peer that does not read.
        let case = "flood of 10000 refused READs, answers never read";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let one = read_request(1, &[Segment::new(r, k ^ 1, base, 1)]);
        let all: Vec<u8> = (0..10_000).flat_map(|_| one.iter().copied()).collect();
        p.send(&all);
        // The good agent transfers while the hostile peer sits on its unread answers.
        w.good_roundtrip(case);
        drop(p);
        after(&mut w, case, baseline);
    }
    {
        let case = "flood of 10000 mixed garbage frames";
        eprintln!("HOSTILE-CASE {case}");
        let mut p = Peer::connect(addr, hostile);
        let mut all = Vec::new();
        for i in 0..10_000u32 {
            all.extend(frame(&Message::Notif(Notif {
                msg: &i.to_le_bytes(),
            })));
        }
        all.extend(header(MAGIC, VERSION, 0x77, 12));
        p.send(&all);
        assert!(p.until_closed().is_empty());
        drop(p);
        let mut n = 0;
        w.t.take_notifs(|from, _| {
            n += usize::from(from == hostile);
            true
        })
        .unwrap();
        assert_eq!(n, 10_000, "{case}: frames before the garbage were served");
        after(&mut w, case, baseline);
    }

    // Many hostile peers at once, each with a different offence.
    {
        let case = "8 hostile peers at once";
        eprintln!("HOSTILE-CASE {case}");
        let seg = w.seg(end - 8, 16);
        let good = w.seg(100, 1000);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut p = Peer::connect(addr, &format!("h{i}"));
                    refused_write_keeps_the_stream(&mut p, good, 2 * i, &[seg]);
                    p.s.shutdown(Shutdown::Write).unwrap();
                    assert!(p.until_closed().is_empty());
                })
            })
            .collect();
        w.good_roundtrip(case);
        for h in handles {
            h.join().unwrap();
        }
        after(&mut w, case, baseline);
    }

    w.guard.assert_intact("end");
    eprintln!("HOSTILE-ALL-DONE");
}

#[test]
fn hostile_peers_child() {
    if std::env::var_os("TCPX_HOSTILE_CHILD").is_none() {
        return;
    }
    run_cases();
}

#[test]
fn hostile_peers() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hostile_peers_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TCPX_HOSTILE_CHILD", "1")
        // Refusals log at warn (the default level); connections closed in the normal course of
        // things (the peer closing its end) at info.
        .env("TCPX_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || std::env::var_os("TCPX_HOSTILE_VERBOSE").is_some() {
        eprintln!("{err}");
    }
    assert!(out.status.success(), "child failed: {}", out.status);
    assert!(err.contains("HOSTILE-ALL-DONE"));
    // Each kind of refusal left a warning line naming it, from the backend's logger target.
    let lines = |level: &str, want: &str| {
        let tag = format!("tcpx {level} [nixl] ");
        err.lines()
            .any(|l| l.starts_with(&tag) && l.to_lowercase().contains(&want.to_lowercase()))
    };
    assert!(
        lines("INFO", "peer closed the control stream"),
        "no info line for a peer closing its end"
    );
    assert!(
        lines("INFO", "connected as target"),
        "no info line for an accepted connection"
    );
    for want in [
        "accepting a peer",
        "bad magic",
        "did not open with Hello",
        "bad control frame",
        "unexpected",
        "refusing WRITE",
        "refusing READ",
        "wrong key",
        "unknown region",
        "range outside the registration",
    ] {
        assert!(lines("WARN", want), "no warning line containing {want:?}");
    }
    let cases = err.matches("HOSTILE-CASE ").count();
    let ok = err.matches("HOSTILE-CASE-OK ").count();
    assert_eq!(cases, ok, "every case ended with its checks passed");
    assert!(cases >= 40, "{cases} cases ran");
}
