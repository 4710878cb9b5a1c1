//! `registerMem` checks a region against what the CUDA driver knows of it: VRAM must be device
//! memory of the descriptor's GPU, inside one allocation; DRAM must not be device memory.
//! Anything else fails with an invalid-parameter error naming the problem, registers nothing,
//! and leaves the agent able to register and move the right memory.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use cudarc::driver::CudaContext;
use plugin_TCPX::registry::{MEM_DRAM, MEM_VRAM};
use plugin_TCPX::testing::{backend_pair, run_xfer, share_mem};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::Status;
use tcpx_kernels::mem::{DeviceBuffer, MappedHostBuffer};

#[path = "../../engine/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

const N: usize = 256 * 1024;

fn desc(addr: u64, len: u64, dev: u64) -> Desc {
    Desc {
        addr,
        len,
        dev_id: dev,
        md: 0,
    }
}

#[test]
fn regions_the_driver_contradicts_are_refused() {
    let Some(ctx) = engine::gpu() else { return };
    ctx.bind_to_thread().unwrap();
    let (a, b) = backend_pair("a", "b", 10_000);
    let dev = DeviceBuffer::new(&ctx, N).unwrap();
    let pinned = MappedHostBuffer::new(&ctx, N).unwrap();
    let gpus = CudaContext::device_count().unwrap() as u64;
    let (d, p) = (dev.ptr(), pinned.host_ptr() as u64);
    let cases = [
        (desc(p, 4096, 0), MEM_VRAM, "is host memory"),
        (desc(d, N as u64 + 1, 0), MEM_VRAM, "past the end"),
        (desc(d + 4096, N as u64, 0), MEM_VRAM, "past the end"),
        (desc(d, 4096, 0), MEM_DRAM, "is device memory of GPU 0"),
        (
            desc(d, 4096, gpus),
            MEM_VRAM,
            "this agent's GPU is device 0",
        ),
    ];
    for (desc, mem, why) in cases {
        let e = a.register_mem(&desc, mem).unwrap_err();
        assert_eq!(e.status(), Status::InvalidParam, "{desc:?}: {e}");
        assert!(e.to_string().contains(why), "{desc:?}: {e}");
    }
    // The right registrations still work, and move data: a 200 KiB WRITE from pinned host
    // memory into b's device memory, through the engine.
    let src: Vec<u8> = (0..N).map(|i| (i * 29 % 253) as u8).collect();
    // SAFETY: the buffer is N bytes of pinned host memory, ours alone.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), pinned.host_ptr(), N) };
    let md = a.register_mem(&desc(p, N as u64, 0), MEM_DRAM).unwrap();
    let (_, rd) = share_mem(&b, "b", &a, d, N as u64, MEM_VRAM);
    let len = 200 * 1024;
    let l = [Desc {
        md,
        ..desc(p + 7, len, 0)
    }];
    let r = [Desc {
        md: rd,
        ..desc(d + 3, len, 0)
    }];
    let status = run_xfer(&a, Op::Write, (&l, MEM_DRAM), (&r, MEM_VRAM), "b");
    assert_eq!(status, Status::Success);
    let mut got = vec![0u8; N];
    dev.read(0, &mut got).unwrap();
    assert!(
        got[3..3 + len as usize] == src[7..7 + len as usize],
        "destination differs"
    );
}
