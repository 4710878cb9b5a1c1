//! Zero allocation on the engine's hot path: after warm-up, 1,000 transfers of 8 segments
//! each go through `post`, `poll` and `release` on both sessions with no heap allocation on
//! the polling thread (which also runs the embedded plugin's isend/irecv/test calls).

use std::hint::black_box;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use tcpx::engine::{Config, Direction, Memory, Progress, Rendezvous, Segment, Session, XferId};
use tcpx_tests::{allocs, count_allocs, reset_allocs, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn counter_sees_allocations() {
    assert_eq!(count_allocs(|| drop(black_box(Box::new(7u64)))), 1);
}

fn pair() -> (Session, Session) {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..Default::default()
    });
    let cfg = Config {
        channels: 2,
        chunk_bytes: 64 * 1024,
        ..Config::default()
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let c2 = cfg.clone();
    let t = std::thread::spawn(move || {
        let net = Session::open_net(&c2).unwrap();
        Session::establish(net, c2, Rendezvous::Connect(addr)).unwrap()
    });
    let net = Session::open_net(&cfg).unwrap();
    let a = Session::establish(net, cfg, Rendezvous::Accept(&l)).unwrap();
    (a, t.join().unwrap())
}

fn run(a: &mut Session, b: &mut Session, send: &[Segment], recv: &[Segment]) -> bool {
    let (ax, bx): (XferId, XferId) = (
        a.post(Direction::Send, send).unwrap(),
        b.post(Direction::Recv, recv).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut ad, mut bd) = (false, false);
    while !(ad && bd) {
        if Instant::now() > deadline {
            return false;
        }
        ad = ad || matches!(a.poll(ax).unwrap(), Progress::Done { .. });
        bd = bd || matches!(b.poll(bx).unwrap(), Progress::Done { .. });
    }
    a.release(ax).unwrap();
    b.release(bx).unwrap();
    true
}

#[test]
fn thousand_transfers_allocate_nothing() {
    let (mut a, mut b) = pair();
    let n = 1 << 20;
    let mut src: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![0u8; n];
    // SAFETY: the buffers outlive both sessions' use of them.
    let (sm, dm) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
        )
    };
    // 8 segments with odd sizes: small ones travel inline, larger ones over the helpers.
    let lens = [1u64, 4095, 4097, 65_536, 70_001, 100, 131_072, 9_999];
    let mut off = 0;
    let mut send = Vec::new();
    let mut recv = Vec::new();
    for len in lens {
        send.push(Segment {
            mem: sm,
            offset: off,
            remote_offset: off,
            len,
        });
        recv.push(Segment {
            mem: dm,
            offset: off,
            remote_offset: off,
            len,
        });
        off += len;
    }
    for _ in 0..50 {
        assert!(
            run(&mut a, &mut b, &send, &recv),
            "warm-up transfer timed out"
        );
    }
    reset_allocs();
    for i in 0..1000 {
        assert!(run(&mut a, &mut b, &send, &recv), "transfer {i} timed out");
    }
    let seen = allocs();
    assert_eq!(
        seen, 0,
        "the hot path allocated {seen} times over 1,000 transfers"
    );
    let total = off as usize;
    assert!(dst[..total] == src[..total], "data corrupted");
}
