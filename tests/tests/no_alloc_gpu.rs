//! Zero allocation on the engine's GPU path: after warm-up, VRAM→VRAM, DRAM→VRAM and
//! VRAM→DRAM transfers go through `post`, `poll` and `release` with no heap allocation on the
//! polling thread — which also runs the embedded tcpxsock's `isend` (the CUDA staging copy and
//! its event, or, with the staging kernel, queueing its shares), `irecv`, `test` and
//! `irecvConsumed`, and the engine's unpack launches and event queries. Data verified
//! afterwards. Each staging choice, one after the other (the plugin's configuration is
//! process-wide): copy engine, staging kernel, and `auto`, which must pick the kernel exactly
//! when the GPU is in exclusive-process compute mode.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use std::time::Duration;

use tcpx::engine::{Config, Memory, Segment, Session};
use tcpx_kernels::mem::DeviceBuffer;
use tcpx_tests::{allocs, reset_allocs};

tcpx_tests::install_counting_alloc!();

#[path = "../../engine/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

use engine::gpu;

fn run(a: &mut Session, b: &mut Session, send: &[Segment], recv: &[Segment]) -> bool {
    engine::transfer(a, b, send, recv, Duration::from_secs(20))
}

/// Segments of odd sizes (one byte, around a page, around a chunk) over one region, with a
/// gap after each.
fn segments(mem: tcpx::MemId) -> Vec<Segment> {
    engine::segments(mem, &[1, 4095, 4097, 524_288, 524_301, 70_001], 5)
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
    use tcpx_sock::StageKernel::*;
    let exclusive = tcpx_sock::cuda::exclusive_process(&ctx);
    println!("GPU 0 in exclusive-process compute mode: {exclusive}");
    for stage_kernel in [Off, On, Auto] {
        let before = tcpx_sock::cuda::kernel_shares();
        check(&ctx, stage_kernel);
        let kernel_staged = tcpx_sock::cuda::kernel_shares() > before;
        let want = match stage_kernel {
            Off => false,
            On => true,
            Auto => exclusive,
        };
        assert_eq!(
            kernel_staged, want,
            "{stage_kernel:?}: CUDA sends staged by the kernel: {kernel_staged} (exclusive-process \
             GPU: {exclusive})"
        );
    }
}

fn check(ctx: &std::sync::Arc<cudarc::driver::CudaContext>, stage_kernel: tcpx_sock::StageKernel) {
    let ctx = ctx.clone();
    let cfg = Config {
        channels: 2,
        timeout: Duration::from_secs(20),
        ..Config::default()
    };
    let sock = tcpx_sock::config::Config {
        stage_kernel,
        ..Default::default()
    };
    let (mut a, mut b) = engine::loopback_pair(sock, cfg);
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
        "the GPU hot path allocated {seen} times over 600 transfers (staging kernel: \
         {stage_kernel:?})"
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
