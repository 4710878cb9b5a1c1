//! tcpxsock's emulated-NIC DMA kernel (`src/dma.cu`): on a CUDA machine it moves a CUDA
//! request's bytes between pinned host memory and the GPU while the request's TCP transfer is
//! still running, piece by piece, instead of once before (send) or after (receive) it.
//!
//! One kernel of one block serves one [`Lane`] (one data socket of one comm): the host queues
//! each request's [`Share`] of that lane in the lane's ring (pinned, device-mapped memory) and
//! launches the kernel ([`DmaKernels::launch_lane`]) only when the lane's `state` says none is
//! running; a kernel with nothing queued for its idle time exits. See `dma.cu` for the
//! protocol. Launching never allocates.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{CUdeviceptr, CUstream};
use cudarc::driver::{result, CudaContext, CudaFunction};

use crate::{Context, Error, Result};

/// The fatbin built from `src/dma.cu`; empty when the crate was built without nvcc.
static DMA_FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dma.fatbin"));

/// Threads of the kernel's one block (`DMA_THREADS` in `dma.cu`).
pub const DMA_THREADS: u32 = 1024;
/// Shares a lane's ring holds (`DMA_RING`): one per request slot.
pub const RING: usize = 16;
/// A share's done word once every byte was copied to the device.
pub const DMA_DONE: u64 = 1;

/// What a lane's kernel does with its shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Mode {
    /// Copy each share from the CUDA buffer into pinned staging memory, publishing staged bytes.
    Send = 0,
    /// Copy each share to the device bounce region as it lands in the host bounce pages, then
    /// set its done word.
    Recv = 1,
}

/// One lane's share of a request: chunks `first`, `first + lanes`, … of a `size`-byte request
/// cut in `chunk_bytes`. Mirrors `DmaShare` in `dma.cu`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Share {
    /// Send: the request's CUDA buffer. Receive: the host bounce region's device alias.
    pub src: u64,
    /// Send: the request's staging range (device alias). Receive: the device bounce region.
    pub dst: u64,
    /// Receive: device address of the request's slot in the meta table (entry `i` is page `i`
    /// of the request, its `src_off` the page's offset in both bounce regions).
    pub entries: u64,
    /// Request bytes.
    pub size: u64,
    /// Bytes per chunk (a page multiple).
    pub chunk_bytes: u64,
    /// The share's first chunk.
    pub first: u64,
    /// Lanes the request is spread over.
    pub lanes: u64,
    /// Device alias of the share's progress word. Send: bytes staged (the kernel writes it).
    /// Receive: bytes landed in the host bounce pages (the host writes it).
    pub progress: u64,
    /// Receive: device alias of the share's done word (the kernel writes it).
    pub done: u64,
    /// Unused (the share is 128 bytes); zero.
    pub pad: [u64; 7],
}

/// One lane's queue, in pinned, device-mapped memory. Mirrors `DmaLane` in `dma.cu`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Lane {
    /// Shares queued (the host writes it).
    pub tail: u64,
    /// The host sets 1 before it launches a kernel; a kernel that exits sets 0.
    pub state: u64,
    /// Shares finished (the kernel writes it; the next kernel starts there).
    pub head: u64,
    /// Bytes of the share at `head` already copied (a receive whose bytes stopped coming).
    pub resume: u64,
    pad: [u64; 12],
    /// Share `i` is at `ring[i % RING]`.
    pub ring: [Share; RING],
}

const _: () = assert!(size_of::<Share>() == 128);
const _: () = assert!(size_of::<Lane>() == 128 + RING * 128);

/// The DMA kernel loaded into one CUDA context.
#[derive(Debug)]
pub struct DmaKernels {
    ctx: Arc<CudaContext>,
    lane_fn: CudaFunction,
}

impl DmaKernels {
    /// Loads the embedded DMA fatbin into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        if DMA_FATBIN.is_empty() {
            return Err(Error::KernelsNotBuilt);
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(DMA_FATBIN.to_vec()))
            .context("loading the DMA fatbin (cuModuleLoadData)")?;
        let lane_fn = module
            .load_function("tcpx_dma_lane")
            .context("cuModuleGetFunction(tcpx_dma_lane)")?;
        crate::load_now(&lane_fn, "cuFuncLoad(tcpx_dma_lane)")?;
        Ok(DmaKernels {
            ctx: ctx.clone(),
            lane_fn,
        })
    }

    /// The context the kernel lives in (current on the thread of every launch).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Enqueues on `stream` a kernel that serves the [`Lane`] at device address `lane` in
    /// `mode`, `piece` bytes at a time, until nothing was queued — or, receiving, nothing
    /// landed — for `idle_ns`, or the `u64` at `abort` is nonzero. It leaves `state` 0 when it
    /// stops; a lane stopped with shares queued needs another launch.
    ///
    /// # Safety
    /// The calling thread has the kernel's context current. While the kernel runs, `lane` and
    /// `abort` are pinned, device-mapped memory; every queued share names live memory as
    /// [`Share`] documents (receive: its entries inside both bounce regions); the host writes
    /// only `tail`, `state` and queued shares (before their tail) of the lane, and a receive's
    /// landed word only forward, after the bytes it counts. At most one kernel per lane runs at
    /// a time (launch them all on one stream).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch_lane(
        &self,
        stream: CUstream,
        lane: CUdeviceptr,
        mode: Mode,
        abort: CUdeviceptr,
        piece: u64,
        idle_ns: u64,
        poll_ns: u32,
    ) -> Result<()> {
        if piece == 0 {
            return Err(Error::OutOfBounds {
                what: "DMA piece",
                offset: 0,
                len: 0,
                size: 0,
            });
        }
        let (mut l, mut m, mut a, mut p, mut i, mut n) =
            (lane, mode as u32, abort, piece, idle_ns, poll_ns);
        let mut params: [*mut c_void; 6] = [
            (&mut l as *mut u64).cast(),
            (&mut m as *mut u32).cast(),
            (&mut a as *mut u64).cast(),
            (&mut p as *mut u64).cast(),
            (&mut i as *mut u64).cast(),
            (&mut n as *mut u32).cast(),
        ];
        // SAFETY: the parameters match `tcpx_dma_lane`'s (pointer, u32, pointer, two u64s, u32);
        // the memory contract is the caller's.
        unsafe {
            result::launch_kernel(
                self.lane_fn.cu_function(),
                (1, 1, 1),
                (DMA_THREADS, 1, 1),
                0,
                stream,
                &mut params,
            )
        }
        .context("cuLaunchKernel(tcpx_dma_lane)")
    }
}
