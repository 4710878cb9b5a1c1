//! tcpx-kernels: the CUDA unpack kernel (an nvcc fatbin embedded at build time) and its launcher.
//!
//! A TCPX receive leaves its payload scattered over bounce pages and a fragment list in slot
//! `k % 16` of the `netUnpackMeta` table; [`Kernels`] copies the fragments to their destination on
//! a CUDA stream. The fragment count is read on the device, so a launch needs only the table, the
//! bounce base, the slot and the destination. Launching never allocates.

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{result, CudaContext, CudaFunction, CudaStream, DriverError};

pub mod mem;

pub use tcpx_core::unpack::{LoadMeta, NetUnpackMeta, ENTRIES_PER_SLOT, SLOTS};

/// The fatbin built from `src/unpack.cu`; empty when the crate was built without nvcc.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/unpack.fatbin"));

/// Threads per block of both kernels (8 warps; each warp copies one fragment at a time).
pub const BLOCK_THREADS: u32 = 256;
/// Fragments a block takes per step (one per warp).
pub const ENTRIES_PER_BLOCK: u32 = BLOCK_THREADS / 32;
/// Most jobs one batched launch carries; [`Kernels::launch_unpack_batch`] splits longer lists.
pub const MAX_BATCH_JOBS: usize = 32;
/// Blocks per slot that cover a full table slot with one fragment per warp.
pub const MAX_BLOCKS_PER_SLOT: u32 = ENTRIES_PER_SLOT as u32 / ENTRIES_PER_BLOCK;
/// Default blocks per slot: one warp per page of a full 4 MiB receive of 4 KiB pages; slots with
/// more fragments are still applied completely (blocks loop over the rest).
pub const DEFAULT_BLOCKS_PER_SLOT: u32 = 128;

const SLOT_KERNEL: &str = "tcpx_unpack_slot";
const BATCH_KERNEL: &str = "tcpx_unpack_batch";

/// Whether the crate was built with its kernels (nvcc was found at build time).
pub const fn kernels_built() -> bool {
    !FATBIN.is_empty()
}

/// Errors of this crate.
#[derive(Debug, Clone)]
pub enum Error {
    /// The crate was built without nvcc, so there is no kernel to load.
    KernelsNotBuilt,
    /// A CUDA driver call failed; `what` says which step.
    Cuda {
        what: &'static str,
        source: DriverError,
    },
    /// The stream belongs to another context than the one the kernels were loaded into.
    WrongContext,
    /// A size or offset outside the buffer it refers to.
    OutOfBounds {
        what: &'static str,
        offset: usize,
        len: usize,
        size: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KernelsNotBuilt => f.write_str(
                "tcpx-kernels was built without nvcc (run scripts/install-nvcc.sh and rebuild)",
            ),
            Error::Cuda { what, source } => write!(f, "CUDA error in {what}: {source}"),
            Error::WrongContext => {
                f.write_str("stream is not in the context the unpack kernels were loaded into")
            }
            Error::OutOfBounds {
                what,
                offset,
                len,
                size,
            } => write!(
                f,
                "{what}: {len} bytes at {offset} exceed the buffer of {size}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cuda { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait Context<T> {
    fn context(self, what: &'static str) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, DriverError> {
    fn context(self, what: &'static str) -> Result<T> {
        self.map_err(|source| Error::Cuda { what, source })
    }
}

/// Probes for a usable CUDA driver and device without panicking.
///
/// cudarc panics on the first driver call when libcuda is missing; call this first and skip GPU
/// work when it returns `Err(reason)`.
pub fn gpu_available() -> Result<(), String> {
    // SAFETY: only tries to dlopen libcuda under its usual names; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) found".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("CUDA driver present but no CUDA device".into()),
        Err(e) => Err(format!("CUDA driver present but unusable: {e}")),
    }
}

/// One (slot, destination) job of a batched unpack; layout shared with the kernel (32 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackJob {
    /// Device-visible address of the [`NetUnpackMeta`] table.
    pub meta: CUdeviceptr,
    /// Device-visible base of the bounce region (`src_off` is relative to it).
    pub bounce: CUdeviceptr,
    /// Device-visible destination base (`dst_off` is relative to it).
    pub dst: CUdeviceptr,
    /// Table slot to apply (taken modulo [`SLOTS`]).
    pub slot: u32,
    reserved: u32,
}

impl UnpackJob {
    /// Count for the `_hint` experiment kernels.
    #[doc(hidden)]
    pub const fn with_count_hint(mut self, count: u32) -> Self {
        self.reserved = count;
        self
    }

    /// A job applying `slot` of `meta` from `bounce` into `dst`.
    pub const fn new(meta: CUdeviceptr, bounce: CUdeviceptr, slot: u32, dst: CUdeviceptr) -> Self {
        UnpackJob {
            meta,
            bounce,
            dst,
            slot,
            reserved: 0,
        }
    }
}

/// The batched kernel's by-value parameter block (1 KiB).
#[repr(C)]
#[derive(Clone, Copy)]
struct UnpackBatch {
    jobs: [UnpackJob; MAX_BATCH_JOBS],
}

const _: () = assert!(size_of::<UnpackJob>() == 32);
const _: () = assert!(size_of::<UnpackBatch>() == 1024);
const _: () = assert!(MAX_BLOCKS_PER_SLOT == 256);

/// The unpack kernels loaded into one CUDA context.
#[derive(Debug)]
pub struct Kernels {
    ctx: Arc<CudaContext>,
    slot_fn: CudaFunction,
    batch_fn: CudaFunction,
    blocks_per_slot: u32,
    count_hint: u64,
}

impl Kernels {
    /// Loads the embedded fatbin into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        Self::load_variant(ctx, "")
    }

    /// Loads the kernels whose names end in `suffix` (benchmark experiments only).
    #[doc(hidden)]
    pub fn load_variant(ctx: &Arc<CudaContext>, suffix: &str) -> Result<Self> {
        if !kernels_built() {
            return Err(Error::KernelsNotBuilt);
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
            .context("loading the unpack fatbin (cuModuleLoadData)")?;
        let slot_fn = module
            .load_function(&format!("{SLOT_KERNEL}{suffix}"))
            .context("cuModuleGetFunction(tcpx_unpack_slot)")?;
        let batch_fn = module
            .load_function(&format!("{BATCH_KERNEL}{suffix}"))
            .context("cuModuleGetFunction(tcpx_unpack_batch)")?;
        Ok(Kernels {
            ctx: ctx.clone(),
            slot_fn,
            batch_fn,
            blocks_per_slot: DEFAULT_BLOCKS_PER_SLOT,
            count_hint: 0,
        })
    }

    /// Count passed to the `_hint` experiment kernels.
    #[doc(hidden)]
    pub fn set_count_hint(&mut self, count: u64) {
        self.count_hint = count;
    }

    /// The context the kernels live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Blocks launched per slot.
    pub fn blocks_per_slot(&self) -> u32 {
        self.blocks_per_slot
    }

    /// Sets the blocks launched per slot, clamped to `1..=MAX_BLOCKS_PER_SLOT`. Any value is
    /// correct; it only trades idle blocks on small slots against parallelism on large ones.
    pub fn set_blocks_per_slot(&mut self, blocks: u32) {
        self.blocks_per_slot = blocks.clamp(1, MAX_BLOCKS_PER_SLOT);
    }

    fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::WrongContext);
        }
        self.ctx.bind_to_thread().context("cuCtxSetCurrent")
    }

    /// Enqueues on `stream` the copy of every fragment of `slot` from `bounce + src_off` to
    /// `dst + dst_off`. Returns once enqueued; record an event after it to learn completion.
    ///
    /// # Safety
    /// When the kernel runs: `meta` is a device-visible [`NetUnpackMeta`] (16-byte aligned) whose
    /// slot `slot % 16` holds `cnt` published entries; every entry's source bytes lie in the
    /// allocation at `bounce` and its destination bytes in the allocation at `dst`; destinations
    /// of one slot do not overlap each other nor any source; nothing else writes them meanwhile.
    /// The kernel may read the rest of an aligned 4-byte word holding a source byte, never a byte
    /// outside such a word; it writes only the fragments' destination bytes.
    pub unsafe fn launch_unpack(
        &self,
        stream: &CudaStream,
        meta: CUdeviceptr,
        bounce: CUdeviceptr,
        slot: u32,
        dst: CUdeviceptr,
    ) -> Result<()> {
        self.check_stream(stream)?;
        let (mut meta, mut bounce, mut slot, mut dst) = (meta, bounce, slot, dst);
        let mut hint = self.count_hint;
        let mut params: [*mut c_void; 5] = [
            (&raw mut meta).cast(),
            (&raw mut bounce).cast(),
            (&raw mut slot).cast(),
            (&raw mut dst).cast(),
            (&raw mut hint).cast(),
        ];
        // SAFETY: the parameters match `tcpx_unpack_slot(const NetUnpackMeta*, const uint8_t*,
        // uint32_t, uint8_t*, uint64_t)` in order and size and outlive the call (the driver copies them);
        // the memory contract is the caller's (see above).
        unsafe {
            result::launch_kernel(
                self.slot_fn.cu_function(),
                (self.blocks_per_slot, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                stream.cu_stream(),
                &mut params,
            )
        }
        .context("cuLaunchKernel(tcpx_unpack_slot)")
    }

    /// Enqueues every job of `jobs` on `stream`: one launch per [`MAX_BATCH_JOBS`] jobs, no
    /// launch for an empty list. The descriptors travel in the launch parameters, so `jobs` may
    /// be reused as soon as this returns.
    ///
    /// # Safety
    /// Each job must satisfy the contract of [`Kernels::launch_unpack`], and no two jobs may
    /// write overlapping destination bytes.
    pub unsafe fn launch_unpack_batch(
        &self,
        stream: &CudaStream,
        jobs: &[UnpackJob],
    ) -> Result<()> {
        self.check_stream(stream)?;
        for chunk in jobs.chunks(MAX_BATCH_JOBS) {
            let mut batch = UnpackBatch {
                jobs: [UnpackJob::default(); MAX_BATCH_JOBS],
            };
            batch.jobs[..chunk.len()].copy_from_slice(chunk);
            let mut params: [*mut c_void; 1] = [(&raw mut batch).cast()];
            // SAFETY: `UnpackBatch` matches the kernel's by-value parameter (1 KiB, same layout);
            // grid.y = chunk.len() <= MAX_BATCH_JOBS, so only filled jobs are read; the memory
            // contract is the caller's.
            unsafe {
                result::launch_kernel(
                    self.batch_fn.cu_function(),
                    (self.blocks_per_slot, chunk.len() as u32, 1),
                    (BLOCK_THREADS, 1, 1),
                    0,
                    stream.cu_stream(),
                    &mut params,
                )
            }
            .context("cuLaunchKernel(tcpx_unpack_batch)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_blob_matches_the_build() {
        assert_eq!(kernels_built(), !cfg!(tcpx_no_kernels));
        if kernels_built() {
            // A fatbin container starts with its magic, 0xBA55ED50 little-endian.
            assert_eq!(FATBIN[..4], 0xBA55_ED50u32.to_le_bytes());
        }
    }
}
