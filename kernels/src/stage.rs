//! tcpxsock's staging kernel (`src/stage.cu`): on a CUDA machine it copies a CUDA send's bytes
//! into pinned staging memory piece by piece, publishing after each piece how much is in, so a
//! data socket sends the first bytes of a request while its last are still crossing PCIe — as
//! a NIC's DMA engine reads device memory while it transmits — instead of waiting for one copy
//! of the whole request.
//!
//! One kernel of one block serves one [`Lane`] (one data socket of one send comm): the host
//! queues each request's [`Share`] of that lane in the lane's ring (pinned, device-mapped
//! memory) and launches the kernel ([`StageKernels::launch_lane`]) only when the lane's `state`
//! says none is running; a kernel with nothing queued for its idle time exits. See `stage.cu`
//! for the protocol. Launching never allocates.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::{result, CudaContext, CudaFunction};

use crate::{Context, Error, Result};

/// The fatbin built from `src/stage.cu`; empty when the crate was built without nvcc.
static STAGE_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stage.fatbin"));

/// Threads of the kernel's one block (`STAGE_THREADS` in `stage.cu`).
pub const STAGE_THREADS: u32 = 1024;
/// Shares a lane's ring holds (`STAGE_RING`): one per request slot.
pub const RING: usize = 16;

/// One lane's share of a request: chunks `first`, `first + lanes`, … of a `size`-byte request
/// cut in `chunk_bytes`, copied from `src` to the same offsets at `dst`. Mirrors `StageShare` in
/// `stage.cu`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Share {
    /// The request's CUDA buffer (16-byte aligned for vector copies; any address is correct).
    pub src: u64,
    /// Device alias of the request's staging range.
    pub dst: u64,
    /// Request bytes.
    pub size: u64,
    /// Bytes per chunk (nonzero).
    pub chunk_bytes: u64,
    /// The share's first chunk.
    pub first: u64,
    /// Lanes the request is spread over (nonzero).
    pub lanes: u64,
    /// Device alias of the share's progress word: bytes of the share staged so far (in share
    /// order), written by the kernel after each piece.
    pub progress: u64,
    /// Unused (a share is 128 bytes); zero.
    pub pad: [u64; 9],
}

/// One lane's queue, in pinned, device-mapped memory. Mirrors `StageLane` in `stage.cu`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Lane {
    /// Shares queued (the host writes it).
    pub tail: u64,
    /// The host sets 1 before it launches a kernel; a kernel that exits sets 0.
    pub state: u64,
    /// Shares finished (the kernel writes it; the next kernel starts there).
    pub head: u64,
    pad: [u64; 13],
    /// Share `i` is at `ring[i % RING]`.
    pub ring: [Share; RING],
}

// The layouts `stage.cu` reads (its struct definitions, field by field).
const _: () = assert!(size_of::<Share>() == 128);
const _: () = assert!(std::mem::offset_of!(Share, chunk_bytes) == 24);
const _: () = assert!(std::mem::offset_of!(Share, progress) == 48);
const _: () = assert!(size_of::<Lane>() == 128 + RING * 128);
const _: () = assert!(std::mem::offset_of!(Lane, state) == 8);
const _: () = assert!(std::mem::offset_of!(Lane, head) == 16);
const _: () = assert!(std::mem::offset_of!(Lane, ring) == 128);

/// The staging kernel loaded into one CUDA context.
#[derive(Debug)]
pub struct StageKernels {
    ctx: Arc<CudaContext>,
    lane_fn: CudaFunction,
}

impl StageKernels {
    /// Loads the embedded staging fatbin into `ctx`, and the kernel onto the device now (see
    /// [`crate::load_now`]).
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        if STAGE_FATBIN.is_empty() {
            return Err(Error::KernelsNotBuilt);
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(STAGE_FATBIN.to_vec()))
            .context("loading the staging fatbin (cuModuleLoadData)")?;
        let lane_fn = module
            .load_function("tcpx_stage_lane")
            .context("cuModuleGetFunction(tcpx_stage_lane)")?;
        crate::load_now(&lane_fn, "cuFuncLoad(tcpx_stage_lane)")?;
        Ok(StageKernels {
            ctx: ctx.clone(),
            lane_fn,
        })
    }

    /// The context the kernel lives in (current on the thread of every launch).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Enqueues on `stream` a kernel that serves the [`Lane`] at device address `lane`,
    /// copying `piece` bytes at a time, until nothing was queued for `idle_ns` (polling the
    /// tail at most every `poll_ns`) or the `u64` at `abort` is nonzero. It leaves `state` 0
    /// when it stops; a lane stopped with shares queued needs another launch.
    ///
    /// # Safety
    /// The calling thread has the kernel's context current. While the kernel runs, `lane` and
    /// `abort` are pinned, device-mapped memory; every queued share names live memory as
    /// [`Share`] documents (nothing else writes its staging range meanwhile); the host writes
    /// only `tail`, `state` and the shares it queues (before their tail). At most one kernel
    /// per lane runs at a time (launch them all on one stream).
    pub unsafe fn launch_lane(
        &self,
        stream: CUstream,
        lane: CUdeviceptr,
        abort: CUdeviceptr,
        piece: u64,
        idle_ns: u64,
        poll_ns: u32,
    ) -> Result<()> {
        if piece == 0 {
            return Err(Error::OutOfBounds {
                what: "staging piece",
                offset: 0,
                len: 0,
                size: 0,
            });
        }
        let (mut l, mut a, mut p, mut i, mut n) = (lane, abort, piece, idle_ns, poll_ns);
        let mut params: [*mut c_void; 5] = [
            (&mut l as *mut u64).cast(),
            (&mut a as *mut u64).cast(),
            (&mut p as *mut u64).cast(),
            (&mut i as *mut u64).cast(),
            (&mut n as *mut u32).cast(),
        ];
        // SAFETY: the parameters match `tcpx_stage_lane`'s (two pointers, two u64s, a u32);
        // the memory contract is the caller's.
        unsafe {
            result::launch_kernel(
                self.lane_fn.cu_function(),
                (1, 1, 1),
                (STAGE_THREADS, 1, 1),
                0,
                stream,
                &mut params,
            )
        }
        .context("cuLaunchKernel(tcpx_stage_lane)")
    }
}
