//! Proves the core's hot paths never touch the heap: windows, chunk state machines and the
//! planner, driven the way the engine drives them, under a counting global allocator.
//! Its own test binary because a binary has exactly one `#[global_allocator]`.

use std::hint::black_box;

use tcpx_core::chunk::{RecvAction, RecvWindow, SendWindow};
use tcpx_core::mem::MemKind;
use tcpx_core::plan::{Plan, PlanConfig, Segment, MAX_SEGMENTS};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::window::Window;
use tcpx_tests::{assert_no_alloc, count_allocs, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The zero below can be trusted only if the counter sees a real allocation.
#[test]
fn counter_sees_an_allocation() {
    let n = count_allocs(|| {
        black_box(Box::new(black_box(7u64)));
    });
    assert_eq!(n, 1);
    let n = count_allocs(|| {
        let mut v: Vec<u8> = Vec::with_capacity(1);
        v.extend_from_slice(black_box(&[0u8; 100]));
        black_box(v);
    });
    assert!(n >= 2, "with_capacity + growth: {n}");
}

/// A non-`Copy` payload, like the engine's per-chunk request record.
#[derive(Debug)]
struct Req {
    id: u64,
    event: Option<u32>,
}

#[test]
fn chunk_lifecycles_do_not_allocate() {
    let mut recv: RecvWindow<Req, TCPX_REQUESTS> = RecvWindow::new();
    let mut send: SendWindow<Req, TCPX_REQUESTS> = SendWindow::new();
    let mut raw: Window<Req, TCPX_REQUESTS> = Window::new();
    let consumed = assert_no_alloc(|| {
        let mut consumed = 0u64;
        for k in 0..1000u64 {
            let mem = if k % 2 == 0 {
                MemKind::Host
            } else {
                MemKind::Device
            };
            // Keep several in flight so the ring wraps and the pipeline overlaps.
            while !recv.is_full() {
                let seq = recv.next_seq();
                recv.post(
                    4096,
                    mem,
                    Req {
                        id: seq,
                        event: None,
                    },
                )
                .unwrap();
            }
            loop {
                match recv.poll() {
                    RecvAction::Test { .. } => {
                        recv.net_done(4096).unwrap();
                    }
                    RecvAction::LaunchUnpack { seq, .. } => {
                        recv.payload_mut(seq).unwrap().event = Some(seq as u32 % 8);
                        recv.unpack_launched(seq).unwrap();
                    }
                    RecvAction::AwaitUnpack { seq } => {
                        assert!(recv.get(seq).unwrap().payload().event.is_some());
                        recv.unpack_done(seq).unwrap();
                    }
                    RecvAction::Consume { .. } => {
                        let (seq, req) = recv.consume().unwrap();
                        assert_eq!(seq, req.id);
                        consumed += 1;
                        break;
                    }
                    RecvAction::Idle => unreachable!("window is full"),
                }
            }
            let s = send.post(4096, Req { id: k, event: None }).unwrap();
            let (done, req) = send.net_done(4096).unwrap();
            assert_eq!((s, req.id), (done, k));
            raw.push(Req { id: k, event: None }).unwrap();
            black_box(raw.iter().count());
            assert_eq!(raw.pop_head().unwrap().1.id, k);
        }
        consumed
    });
    assert_eq!(consumed, 1000);
}

#[test]
fn planning_a_gib_does_not_allocate() {
    // 1 GiB in MAX_SEGMENTS segments of 1 MiB, scattered on both sides.
    let segs: Vec<Segment> = (0..MAX_SEGMENTS as u64)
        .map(|i| Segment {
            local_offset: i * (3 << 20),
            remote_offset: (MAX_SEGMENTS as u64 - i) << 21,
            len: 1 << 20,
        })
        .collect();
    let cfg = PlanConfig::new(512 << 10, 4).with_first_channel(3);
    let (bytes, chunks, per_channel) = assert_no_alloc(|| {
        let plan = Plan::new(black_box(&segs), cfg).unwrap();
        let mut bytes = 0u64;
        let mut chunks = 0u64;
        for c in plan.chunks() {
            bytes += u64::from(c.len);
            chunks += 1;
        }
        let mut per_channel = 0u64;
        for ch in 0..4 {
            per_channel += plan.channel_chunks(ch).count() as u64;
            assert_eq!(plan.chunks_on(ch), 512);
        }
        (bytes, chunks, per_channel)
    });
    assert_eq!(bytes, 1 << 30);
    assert_eq!(chunks, 2048);
    assert_eq!(per_channel, 2048);
}
