//! Handshakes with different peers run at once, and never hold up transfers on conns that
//! already exist. TCPX's accept completes at least 5 s after the connection, so an agent that
//! opened its conns one at a time would take 5 s per new peer, and stall every transfer of
//! its healthy conns meanwhile.
//!
//! The peers here are fakes that hold their half of the handshake (after reading our Hello,
//! before answering) until the test lets them go, so what overlaps is shown by what each peer
//! saw while it held, not by timing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plugin_TCPX::backend::XferArgs;
use plugin_TCPX::registry::MEM_DRAM;
use plugin_TCPX::testing::{backend, backend_pair, desc as d, limits, read_frame, run_xfer, share};
use plugin_TCPX::xfer::Op;
use plugin_TCPX::{blob, Backend, Status};
use tcpx::engine::{Config as EngineConfig, Session};
use tcpx_core::mem::MemKind;
use tcpx_core::wire::{self, Message, RegionToken};

/// The agents' `timeout_ms`: longer than any hold below, so the held handshakes still
/// succeed once let go.
const TIMEOUT_MS: u64 = 30_000;
/// Longest a fake peer holds its handshake when nothing lets it go: past this it answers
/// anyway and reports that it was not let go (what a serialised agent would cause).
const HOLD: Duration = Duration::from_secs(8);

/// What the fake peers have seen, shared with the test.
#[derive(Default)]
struct Board {
    /// Fake peers holding our Hello (each counts once).
    hellos: usize,
    /// Set by the test: every fake peer may answer.
    go: bool,
}

#[derive(Default)]
struct Shared {
    board: Mutex<Board>,
    changed: Condvar,
}

impl Shared {
    /// Waits (at most `limit`) until `done` holds for the board; whether it did.
    fn wait_for(&self, limit: Duration, done: impl Fn(&Board) -> bool) -> bool {
        let board = self.board.lock().unwrap();
        let (board, _) = self
            .changed
            .wait_timeout_while(board, limit, |b| !done(b))
            .unwrap();
        done(&board)
    }

    fn update(&self, f: impl FnOnce(&mut Board)) {
        f(&mut self.board.lock().unwrap());
        self.changed.notify_all();
    }
}

/// How long a fake peer holds its half of the handshake (at most [`HOLD`]).
#[derive(Clone, Copy)]
enum Hold {
    /// Until this many fake peers hold the agent's Hello.
    UntilHellos(usize),
    /// Until the test lets every fake peer go.
    UntilLetGo,
}

impl Hold {
    fn over(self, b: &Board) -> bool {
        match self {
            Hold::UntilHellos(n) => b.hellos == n,
            Hold::UntilLetGo => b.go,
        }
    }
}

/// A fake peer: reads the agent's Hello and engine handles, holds, then completes the real
/// engine handshake. Its thread returns whether the hold ended as asked (not by [`HOLD`]
/// running out), and the stream and session, kept alive until joined.
struct Fake {
    addr: SocketAddr,
    thread: JoinHandle<Result<(bool, TcpStream, Session), String>>,
}

fn fake(shared: Arc<Shared>, hold: Hold) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("the agent never connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|e| e.to_string())?;
        let hello = read_frame(&mut s).ok_or("closed before Hello")?;
        if !matches!(wire::parse(&hello), Ok(Message::Hello(_))) {
            return Err("the stream did not open with Hello".into());
        }
        let theirs = read_frame(&mut s).ok_or("closed before the engine handles")?;
        shared.update(|b| b.hellos += 1);
        let held = shared.wait_for(HOLD, |b| hold.over(b));
        let cfg = EngineConfig {
            timeout: Duration::from_secs(20),
            ..EngineConfig::default()
        };
        let net = Session::open_net(&cfg).map_err(|e| e.to_string())?;
        let lis = Session::listen(net, cfg).map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut s, lis.conn_info()).map_err(|e| e.to_string())?;
        std::io::Write::write_all(&mut s, &limits()).map_err(|e| e.to_string())?;
        let sess = lis.connect(&theirs).map_err(|e| e.to_string())?;
        Ok((held, s, sess))
    });
    Fake { addr, thread }
}

/// Makes fake peer `name` at `addr` known to `a`.
fn load(a: &Backend, name: &str, addr: SocketAddr) {
    a.load_remote_conn_info(name, &blob::encode_conn_info(name, addr, 2).unwrap())
        .unwrap();
}

/// An agent connecting to three peers at once: every peer holds our Hello before any of them
/// has answered, so the three handshakes were in progress together (one at a time, the
/// second Hello would only come once the first peer answered).
#[test]
fn handshakes_with_different_peers_overlap() {
    const K: usize = 3;
    let a = backend("a", TIMEOUT_MS);
    let shared = Arc::new(Shared::default());
    let fakes: Vec<Fake> = (0..K)
        .map(|_| fake(shared.clone(), Hold::UntilHellos(K)))
        .collect();
    for (i, f) in fakes.iter().enumerate() {
        load(&a, &format!("p{i}"), f.addr);
    }
    std::thread::scope(|s| {
        let connects: Vec<_> = (0..K)
            .map(|i| {
                let a = &a;
                s.spawn(move || a.connect(&format!("p{i}")))
            })
            .collect();
        for (i, c) in connects.into_iter().enumerate() {
            c.join()
                .unwrap()
                .unwrap_or_else(|e| panic!("connect p{i}: {e}"));
        }
    });
    for (i, f) in fakes.into_iter().enumerate() {
        let (all_hellos, ..) = f.thread.join().unwrap().unwrap();
        assert!(
            all_hellos,
            "peer p{i} answered before all {K} Hellos arrived: the handshakes ran one at a time"
        );
        assert!(a.is_connected(&format!("p{i}")));
    }
}

/// While the agent's handshakes with two new peers are held half way — one opened by a
/// transfer's post, one by `connect` — transfers on its existing conn run to completion.
#[test]
fn transfers_on_a_live_conn_go_on_during_another_peers_handshake() {
    let (a, b) = backend_pair("a", "b", TIMEOUT_MS);
    const N: usize = 256 * 1024;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = a.register_mem(&d(s, N as u64, 0), MEM_DRAM).unwrap();
    let (_, rt) = share(&b, "b", &a, t, N as u64);
    a.connect("b").unwrap();
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    let small = ([d(s, 4096, ms)], [d(t, 4096, rt)]);

    // Two new peers that hold their handshakes until let go.
    let shared = Arc::new(Shared::default());
    let (p, q) = (
        fake(shared.clone(), Hold::UntilLetGo),
        fake(shared.clone(), Hold::UntilLetGo),
    );
    load(&a, "p", p.addr);
    load(&a, "q", q.addr);
    let token = RegionToken {
        base: 0x1000_0000,
        len: 1 << 20,
        mem: MemKind::Host,
        device: 0,
        region: 1,
        key: 7,
    };
    let rp = a
        .load_remote_md(
            &d(token.base, token.len, 0),
            &blob::encode_token(&token).unwrap(),
            MEM_DRAM,
            "p",
        )
        .unwrap();
    std::thread::scope(|sc| {
        let a = &a;
        let to_p = sc.spawn(move || {
            // A READ: nothing moves before the (silent) fake answers it.
            let (l, r) = ([d(s, 4096, ms)], [d(token.base, 4096, rp)]);
            let x = XferArgs {
                op: Op::Read,
                local: &l,
                local_mem: MEM_DRAM,
                remote: &r,
                remote_mem: MEM_DRAM,
                agent: "p",
                notif: None,
            };
            let mut h = 0;
            let st = a.post_xfer(&x, &mut h);
            if h != 0 {
                a.release_req(h).unwrap();
            }
            st
        });
        let to_q = sc.spawn(move || a.connect("q"));
        assert!(
            shared.wait_for(HOLD, |b| b.hellos == 2),
            "both new peers hold the agent's Hello (handshakes with different peers run at once)"
        );

        // The live conn: a large WRITE and READ through the data session, a small one of
        // each inline, a notification.
        for (op, (l, r)) in [(Op::Write, (&l[..], &r[..])), (Op::Read, (&l[..], &r[..]))]
            .into_iter()
            .chain([
                (Op::Write, (&small.0[..], &small.1[..])),
                (Op::Read, (&small.0[..], &small.1[..])),
            ])
        {
            if op == Op::Read {
                dst.iter_mut().for_each(|x| *x = x.wrapping_add(1));
            }
            let st = run_xfer(a, op, (l, MEM_DRAM), (r, MEM_DRAM), "b");
            assert_eq!(st, Status::Success, "{op:?} of {} bytes", l[0].len);
            let n = l[0].len as usize;
            assert!(src[..n] == dst[..n], "{op:?} of {n} bytes: data differs");
        }
        a.gen_notif("b", b"live").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = false;
        while !got && Instant::now() < deadline {
            b.take_notifs(|from, m| {
                got |= from == "a" && m == b"live";
                true
            })
            .unwrap();
        }
        assert!(got, "the notification on the live conn arrived");
        assert!(
            !to_p.is_finished() && !to_q.is_finished(),
            "the new peers' handshakes were still in progress"
        );

        shared.update(|b| b.go = true);
        assert_eq!(to_p.join().unwrap().unwrap(), Status::InProgress);
        to_q.join().unwrap().unwrap();
    });
    for (name, f) in [("p", p), ("q", q)] {
        let (let_go, ..) = f.thread.join().unwrap().unwrap();
        assert!(
            let_go,
            "{name} gave up holding: the live conn's transfers waited for its handshake"
        );
    }
}

/// A peer disconnected while our handshake with it is held: the handshake ends in
/// REMOTE_DISCONNECT and leaves no conn behind, and the next connect (the peer loaded again)
/// opens a fresh one.
#[test]
fn disconnecting_during_the_handshake_leaves_no_conn() {
    let a = backend("a", TIMEOUT_MS);
    let shared = Arc::new(Shared::default());
    let p = fake(shared.clone(), Hold::UntilLetGo);
    load(&a, "p", p.addr);
    std::thread::scope(|sc| {
        let to_p = sc.spawn(|| a.connect("p"));
        assert!(shared.wait_for(HOLD, |b| b.hellos == 1), "p got the Hello");
        a.disconnect("p").unwrap();
        shared.update(|b| b.go = true);
        let e = to_p.join().unwrap().unwrap_err();
        assert_eq!(e.status(), Status::RemoteDisconnect, "{e}");
    });
    let (let_go, mut s, _sess) = p.thread.join().unwrap().unwrap();
    assert!(let_go);
    assert!(!a.is_connected("p"));
    // The conn made by that handshake is closed: its control stream ends.
    assert!(
        read_frame(&mut s).is_none(),
        "the abandoned conn was closed"
    );

    let shared = Arc::new(Shared::default());
    let p = fake(shared.clone(), Hold::UntilHellos(1));
    load(&a, "p", p.addr);
    a.connect("p").unwrap();
    assert!(a.is_connected("p"));
    assert!(p.thread.join().unwrap().unwrap().0);
}
