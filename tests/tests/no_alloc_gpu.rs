//! Zero allocation on the engine's GPU path: after warm-up, VRAM→VRAM, DRAM→VRAM and
//! VRAM→DRAM transfers go through `post`, `poll` and `release` with no heap allocation on the
//! polling thread — which also runs the embedded tcpxsock's `isend` (the CUDA staging copy and
//! its event), `irecv`, `test` and `irecvConsumed`, and the engine's unpack launches and event
//! queries. Data verified afterwards.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::CudaContext;
use tcpx::engine::{Config, Direction, Memory, Progress, Rendezvous, Segment, Session, XferId};
use tcpx_kernels::mem::DeviceBuffer;
use tcpx_tests::{allocs, count_allocs, reset_allocs, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn counter_sees_allocations() {
    assert_eq!(count_allocs(|| drop(black_box(Box::new(7u64)))), 1);
}

fn gpu() -> Option<Arc<CudaContext>> {
    match tcpx_kernels::gpu_available() {
        Ok(()) => Some(CudaContext::new(0).expect("CUDA context")),
        Err(why) => {
            assert!(
                std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
                "REQUIRE_GPU=1 but no GPU: {why}"
            );
            eprintln!("SKIP: {why}");
            None
        }
    }
}

fn pair() -> (Session, Session) {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..Default::default()
    });
    let cfg = Config {
        channels: 2,
        timeout: Duration::from_secs(20),
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

/// Segments of odd sizes (one byte, around a page, around a chunk) over one region, with a
/// gap after each.
fn segments(mem: tcpx::MemId) -> Vec<Segment> {
    let mut off = 0;
    [1u64, 4095, 4097, 524_288, 524_301, 70_001]
        .iter()
        .map(|&len| {
            let s = Segment {
                mem,
                offset: off,
                remote_offset: off,
                len,
            };
            off += len + 5;
            s
        })
        .collect()
}

const LEN: usize = 2 << 20;

fn pattern(seed: u8) -> Vec<u8> {
    (0..LEN)
        .map(|i| (i as u8).wrapping_mul(29) ^ (i >> 12) as u8 ^ seed)
        .collect()
}

#[test]
fn device_transfers_allocate_nothing() {
    let Some(ctx) = gpu() else { return };
    let (mut a, mut b) = pair();
    let data = pattern(3);
    let mut dsrc = DeviceBuffer::new(&ctx, LEN).unwrap();
    dsrc.write(0, &data).unwrap();
    let mut hsrc = data.clone();
    let mut ddst = DeviceBuffer::new(&ctx, 2 * LEN).unwrap();
    ddst.fill(0).unwrap();
    let mut hdst = vec![0u8; LEN];
    let cuda = Memory::Cuda { device: 0 };
    // SAFETY: every buffer outlives both sessions' use of it.
    let (ds, hs, dd, hd) = unsafe {
        (
            a.register(dsrc.ptr() as *mut _, LEN, cuda).unwrap(),
            a.register(hsrc.as_mut_ptr().cast(), LEN, Memory::Host)
                .unwrap(),
            b.register(ddst.ptr() as *mut _, 2 * LEN, cuda).unwrap(),
            b.register(hdst.as_mut_ptr().cast(), LEN, Memory::Host)
                .unwrap(),
        )
    };
    // VRAM→VRAM into the first half of the device destination, DRAM→VRAM into the second
    // half, VRAM→DRAM into host memory.
    let second = |mut v: Vec<Segment>| {
        for s in &mut v {
            s.offset += LEN as u64;
        }
        v
    };
    let cases = [
        (segments(ds), segments(dd)),
        (segments(hs), second(segments(dd))),
        (segments(ds), segments(hd)),
    ];
    for _ in 0..20 {
        for (s, r) in &cases {
            assert!(run(&mut a, &mut b, s, r), "warm-up transfer timed out");
        }
    }
    reset_allocs();
    for i in 0..200 {
        for (k, (s, r)) in cases.iter().enumerate() {
            assert!(run(&mut a, &mut b, s, r), "transfer {i}/{k} timed out");
        }
    }
    let seen = allocs();
    assert_eq!(
        seen, 0,
        "the GPU hot path allocated {seen} times over 600 transfers"
    );
    let mut got = vec![0u8; 2 * LEN];
    ddst.read(0, &mut got).unwrap();
    for s in segments(dd) {
        let r = s.offset as usize..(s.offset + s.len) as usize;
        let hi = r.start + LEN..r.end + LEN;
        assert!(
            got[r.clone()] == data[r.clone()],
            "VRAM→VRAM at {}",
            s.offset
        );
        assert!(got[hi] == data[r.clone()], "DRAM→VRAM at {}", s.offset);
        assert!(hdst[r.clone()] == data[r], "VRAM→DRAM at {}", s.offset);
    }
}
