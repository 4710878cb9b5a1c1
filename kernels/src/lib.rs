//! tcpx-kernels: the workspace's one CUDA layer. First, the CUDA unpack kernel (an nvcc fatbin
//! embedded at build time) and its launcher.
//!
//! A TCPX receive leaves its payload scattered over bounce pages and a fragment list in slot
//! `k % 16` of the `netUnpackMeta` table; [`Kernels`] copies the fragments to their destination on
//! a CUDA stream. The fragment count is read on the device, so a launch needs only the table, the
//! bounce base, the slot and the destination. Launching never allocates.
//!
//! [`stage`] holds the other kernel the crate builds: the one tcpxsock stages CUDA sends with.
//!
//! The crate is the one CUDA layer of the workspace: besides the kernels it holds the host-side
//! driver work the engine and tcpxsock share ([`driver`]: presence probe, context guard,
//! primary contexts, the calling thread's device, pointer attributes) and owned CUDA memory
//! ([`mem`]).

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{result, CudaContext, CudaFunction, CudaStream, DriverError};

pub mod driver;
pub mod mem;
pub mod stage;

pub use driver::gpu_available;

pub use tcpx_core::ring::TCPX_REQUESTS;
pub use tcpx_core::unpack::{LoadMeta, NetUnpackMeta, ENTRIES_PER_SLOT};

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
/// Default blocks per slot when the count is read on the device. Each block reads `cnt` from the
/// table, and those reads of one host address are served one after another, so fewer blocks (each
/// looping over more fragments) win: 32 was the best for one 4 MiB slot of 16/32/64/128
/// measured on H200 (16 for 16-slot batches); see README.md.
pub const DEFAULT_BLOCKS_PER_SLOT: u32 = 32;
/// Default cap on the blocks of one batched launch (spread over its jobs): a few waves of resident
/// blocks, so blocks loop over tiles and overlap each tile's table read with the previous copy.
pub const DEFAULT_MAX_BLOCKS_PER_LAUNCH: u32 = 1024;
/// A job count that means "read `cnt[slot]` from the table on the device".
pub const COUNT_FROM_TABLE: u32 = u32::MAX;

const SLOT_KERNEL: &str = "tcpx_unpack_slot";
const BATCH_KERNEL: &str = "tcpx_unpack_batch";
const LIST_KERNEL: &str = "tcpx_unpack_list";
const SHORT_LIST_KERNEL: &str = "tcpx_unpack_short_list";
/// Most jobs one [`UnpackList`] carries.
pub const MAX_LIST_JOBS: usize = 16;
/// Most fragments one [`UnpackList`] carries (16 KiB of entries: the whole list stays within
/// the 32,764 bytes of launch parameters CUDA allows).
pub const MAX_LIST_ENTRIES: usize = 1024;
/// Lists of at most this many fragments launch with a 4,496-byte parameter block instead of
/// 16,784 (two 512 KiB chunks of 4 KiB pages): the driver copies, and the GPU fetches, a
/// launch's whole block whatever its count.
pub const SHORT_LIST_ENTRIES: usize = 256;

/// Whether the crate was built with its kernels (nvcc was found at build time).
pub const fn kernels_built() -> bool {
    !FATBIN.is_empty()
}

/// Loads `f` onto the device now rather than at its first launch (the driver's lazy loading,
/// the default since CUDA 12.2, may wait for running kernels at that launch — and tcpxsock's
/// staging kernels keep running while their comms send).
pub(crate) fn load_now(f: &CudaFunction, what: &'static str) -> Result<()> {
    // SAFETY: a function handle of a loaded module, in the current context.
    unsafe { cudarc::driver::sys::cuFuncLoad(f.cu_function()) }
        .result()
        .context(what)
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
    /// No usable CUDA driver or device (the reason [`gpu_available`] gives).
    NoDriver(String),
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
            Error::NoDriver(why) => f.write_str(why),
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
    /// Table slot to apply (taken modulo [`TCPX_REQUESTS`]).
    pub slot: u32,
    /// Fragments to apply (entries `0..count` of the slot), or [`COUNT_FROM_TABLE`].
    pub count: u32,
}

impl UnpackJob {
    /// A job applying `slot` of `meta` from `bounce` into `dst`, its count read on the device.
    pub const fn new(meta: CUdeviceptr, bounce: CUdeviceptr, slot: u32, dst: CUdeviceptr) -> Self {
        UnpackJob {
            meta,
            bounce,
            dst,
            slot,
            count: COUNT_FROM_TABLE,
        }
    }

    /// The same job with its fragment count given by the host (the fast path).
    pub const fn with_count(self, count: u32) -> Self {
        UnpackJob { count, ..self }
    }

    /// Blocks that cover this job with one fragment per warp, or `table_blocks` when the count
    /// is read on the device; 0 when there is nothing to do.
    const fn blocks(&self, table_blocks: u32) -> u32 {
        if self.count == COUNT_FROM_TABLE {
            return table_blocks;
        }
        let count = if self.count < ENTRIES_PER_SLOT as u32 {
            self.count
        } else {
            ENTRIES_PER_SLOT as u32
        };
        count.div_ceil(ENTRIES_PER_BLOCK)
    }
}

/// The batched kernel's by-value parameter block (1 KiB).
#[repr(C)]
#[derive(Clone, Copy)]
struct UnpackBatch {
    jobs: [UnpackJob; MAX_BATCH_JOBS],
}

/// One job of an [`UnpackList`]; layout shared with the kernel (24 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ListJob {
    bounce: CUdeviceptr,
    dst: CUdeviceptr,
    first: u32,
    count: u32,
}

/// Fragment lists the host has read, carried whole in the launch parameters of
/// `tcpx_unpack_list` (16,784 bytes): the kernel starts copying without reading a host-memory
/// table first, and copies exactly the entries the host checked. Fill it with
/// [`UnpackList::push`], launch it with [`Kernels::launch_unpack_list`], then
/// [`UnpackList::clear`]. Big: keep one boxed ([`UnpackList::new_boxed`]) and reuse it.
#[repr(C)]
#[derive(Clone)]
pub struct UnpackList {
    jobs: [ListJob; MAX_LIST_JOBS],
    njobs: u32,
    count: u32,
    reserved: [u32; 2],
    entries: [LoadMeta; MAX_LIST_ENTRIES],
}

impl fmt::Debug for UnpackList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnpackList")
            .field("jobs", &self.njobs)
            .field("entries", &self.count)
            .finish()
    }
}

impl UnpackList {
    /// An empty list on the heap.
    pub fn new_boxed() -> Box<UnpackList> {
        Box::new(UnpackList {
            jobs: [ListJob::default(); MAX_LIST_JOBS],
            njobs: 0,
            count: 0,
            reserved: [0; 2],
            entries: [LoadMeta::default(); MAX_LIST_ENTRIES],
        })
    }

    /// Jobs in the list.
    pub fn jobs(&self) -> usize {
        self.njobs as usize
    }

    /// Whether the list holds no job.
    pub fn is_empty(&self) -> bool {
        self.njobs == 0
    }

    /// Whether a job of `entries` fragments fits.
    pub fn fits(&self, entries: usize) -> bool {
        (self.njobs as usize) < MAX_LIST_JOBS && self.count as usize + entries <= MAX_LIST_ENTRIES
    }

    /// Appends a job copying `entries` from `bounce + src_off` to `dst + dst_off`, and returns
    /// the list's copy of them (what the kernel will apply: check that one, since `entries`
    /// may change after this); `None` when it does not fit.
    pub fn push(
        &mut self,
        bounce: CUdeviceptr,
        dst: CUdeviceptr,
        entries: &[LoadMeta],
    ) -> Option<&[LoadMeta]> {
        let n = entries.len();
        if !self.fits(n) {
            return None;
        }
        let first = self.count as usize;
        self.jobs[self.njobs as usize] = ListJob {
            bounce,
            dst,
            first: first as u32,
            count: n as u32,
        };
        self.njobs += 1;
        self.count += n as u32;
        let copy = &mut self.entries[first..first + n];
        copy.copy_from_slice(entries);
        Some(copy)
    }

    /// Removes the last job pushed (one whose entries failed the caller's check).
    pub fn pop(&mut self) {
        if self.njobs > 0 {
            self.njobs -= 1;
            self.count = self.jobs[self.njobs as usize].first;
        }
    }

    /// Empties the list.
    pub fn clear(&mut self) {
        self.njobs = 0;
        self.count = 0;
    }
}

/// Bytes of `tcpx_unpack_short_list`'s parameter block: [`UnpackList`]'s header and its first
/// [`SHORT_LIST_ENTRIES`] entries, laid out exactly as the start of an `UnpackList`, so the
/// launch passes the list itself and the driver copies only that much.
const SHORT_LIST_BYTES: usize =
    std::mem::offset_of!(UnpackList, entries) + SHORT_LIST_ENTRIES * size_of::<LoadMeta>();

/// Which list kernel a launch of `count` entries uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ListBlock {
    Short,
    Long,
}

impl ListBlock {
    fn for_count(count: usize, short_lists: bool) -> ListBlock {
        if short_lists && count <= SHORT_LIST_ENTRIES {
            ListBlock::Short
        } else {
            ListBlock::Long
        }
    }
}

const _: () = assert!(size_of::<ListJob>() == 24);
const _: () = assert!(size_of::<UnpackList>() == 16784);
const _: () = assert!(SHORT_LIST_BYTES == 4496);
const _: () = assert!(std::mem::offset_of!(UnpackList, entries) == 400);
const _: () = assert!(size_of::<UnpackJob>() == 32);
const _: () = assert!(size_of::<UnpackBatch>() == 1024);
const _: () = assert!(MAX_BLOCKS_PER_SLOT == 256);

/// The unpack kernels loaded into one CUDA context.
#[derive(Debug)]
pub struct Kernels {
    ctx: Arc<CudaContext>,
    slot_fn: CudaFunction,
    batch_fn: CudaFunction,
    list_fn: CudaFunction,
    short_list_fn: CudaFunction,
    /// Whether lists of at most [`SHORT_LIST_ENTRIES`] launch with the short parameter block.
    short_lists: bool,
    blocks_per_slot: u32,
    max_blocks_per_launch: u32,
}

impl Kernels {
    /// Loads the embedded fatbin into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self> {
        if !kernels_built() {
            return Err(Error::KernelsNotBuilt);
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(FATBIN.to_vec()))
            .context("loading the unpack fatbin (cuModuleLoadData)")?;
        let slot_fn = module
            .load_function(SLOT_KERNEL)
            .context("cuModuleGetFunction(tcpx_unpack_slot)")?;
        let batch_fn = module
            .load_function(BATCH_KERNEL)
            .context("cuModuleGetFunction(tcpx_unpack_batch)")?;
        let list_fn = module
            .load_function(LIST_KERNEL)
            .context("cuModuleGetFunction(tcpx_unpack_list)")?;
        let short_list_fn = module
            .load_function(SHORT_LIST_KERNEL)
            .context("cuModuleGetFunction(tcpx_unpack_short_list)")?;
        for f in [&slot_fn, &batch_fn, &list_fn, &short_list_fn] {
            load_now(f, "cuFuncLoad(unpack kernels)")?;
        }
        Ok(Kernels {
            ctx: ctx.clone(),
            slot_fn,
            batch_fn,
            list_fn,
            short_list_fn,
            short_lists: true,
            blocks_per_slot: DEFAULT_BLOCKS_PER_SLOT,
            max_blocks_per_launch: DEFAULT_MAX_BLOCKS_PER_LAUNCH,
        })
    }

    /// The context the kernels live in.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Blocks launched per slot whose count is read on the device.
    pub fn blocks_per_slot(&self) -> u32 {
        self.blocks_per_slot
    }

    /// Sets the blocks per slot whose count is read on the device, clamped to
    /// `1..=MAX_BLOCKS_PER_SLOT`. Any value is correct; it only tunes speed. (With a count given
    /// by the host, the grid is sized to the count: one fragment per warp.)
    pub fn set_blocks_per_slot(&mut self, blocks: u32) {
        self.blocks_per_slot = blocks.clamp(1, MAX_BLOCKS_PER_SLOT);
    }

    /// Cap on the blocks of one batched launch, spread evenly over its jobs.
    pub fn max_blocks_per_launch(&self) -> u32 {
        self.max_blocks_per_launch
    }

    /// Sets the cap on the blocks of one batched launch (at least 1). Any value is correct.
    pub fn set_max_blocks_per_launch(&mut self, blocks: u32) {
        self.max_blocks_per_launch = blocks.max(1);
    }

    fn check_stream(&self, stream: &CudaStream) -> Result<()> {
        if stream.context().cu_ctx() != self.ctx.cu_ctx() {
            return Err(Error::WrongContext);
        }
        self.ctx.bind_to_thread().context("cuCtxSetCurrent")
    }

    /// Enqueues on `stream` the copy of every fragment of `slot` from `bounce + src_off` to
    /// `dst + dst_off`, the fragment count read from `cnt[slot]` on the device. Returns once
    /// enqueued; record an event after it to learn completion. Prefer
    /// [`Kernels::launch_unpack_counted`] when the host can read the count: it is faster.
    ///
    /// # Safety
    /// When the kernel runs: `meta` is a device-visible [`NetUnpackMeta`] (16-byte aligned) whose
    /// slot `slot % 16` holds its published entries; every entry's source bytes lie in the
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
        // SAFETY: the caller's contract is this function's.
        unsafe { self.launch_job(stream, &UnpackJob::new(meta, bounce, slot, dst)) }
    }

    /// As [`Kernels::launch_unpack`], applying entries `0..count` of the slot (the host read
    /// `cnt[slot]` itself, e.g. from the mapped table). Nothing is enqueued when `count` is 0.
    ///
    /// # Safety
    /// As [`Kernels::launch_unpack`], for the first `count` entries of the slot.
    pub unsafe fn launch_unpack_counted(
        &self,
        stream: &CudaStream,
        meta: CUdeviceptr,
        bounce: CUdeviceptr,
        slot: u32,
        count: u32,
        dst: CUdeviceptr,
    ) -> Result<()> {
        let job = UnpackJob::new(meta, bounce, slot, dst).with_count(count);
        // SAFETY: the caller's contract is this function's.
        unsafe { self.launch_job(stream, &job) }
    }

    /// # Safety
    /// See [`Kernels::launch_unpack`].
    unsafe fn launch_job(&self, stream: &CudaStream, job: &UnpackJob) -> Result<()> {
        self.check_stream(stream)?;
        let blocks = job.blocks(self.blocks_per_slot);
        if blocks == 0 {
            return Ok(());
        }
        let (mut meta, mut bounce, mut slot, mut count, mut dst) =
            (job.meta, job.bounce, job.slot, job.count, job.dst);
        let mut params: [*mut c_void; 5] = [
            (&raw mut meta).cast(),
            (&raw mut bounce).cast(),
            (&raw mut slot).cast(),
            (&raw mut count).cast(),
            (&raw mut dst).cast(),
        ];
        // SAFETY: the parameters match `tcpx_unpack_slot(const NetUnpackMeta*, const uint8_t*,
        // uint32_t slot, uint32_t count, uint8_t*)` in order and size and outlive the call (the
        // driver copies them); the memory contract is the caller's.
        unsafe {
            result::launch_kernel(
                self.slot_fn.cu_function(),
                (blocks, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                stream.cu_stream(),
                &mut params,
            )
        }
        .context("cuLaunchKernel(tcpx_unpack_slot)")
    }

    /// Enqueues every job of `jobs` on `stream`: one launch per [`MAX_BATCH_JOBS`] jobs, none for
    /// an empty list or jobs whose given counts are all 0. Jobs may mix given counts and
    /// [`COUNT_FROM_TABLE`], tables, bounce regions and destinations. The descriptors travel in
    /// the launch parameters, so `jobs` may be reused as soon as this returns.
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
            let needed = chunk
                .iter()
                .map(|j| j.blocks(self.blocks_per_slot))
                .max()
                .unwrap_or(0);
            if needed == 0 {
                continue;
            }
            // Blocks loop over tiles, so a cap below `needed` is still complete.
            let cap = (self.max_blocks_per_launch / chunk.len() as u32).max(1);
            let blocks = needed.min(cap);
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
                    (blocks, chunk.len() as u32, 1),
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

impl Kernels {
    /// Enqueues every job of `list` on `stream` in one launch (none for an empty list). The
    /// list travels in the launch parameters, so it may be cleared and refilled as soon as this
    /// returns.
    ///
    /// # Safety
    /// When the kernel runs, every entry's source bytes lie in the allocation at its job's
    /// `bounce` and its destination bytes in the allocation at its job's `dst`; no two entries
    /// write overlapping bytes, nor any byte an entry reads; nothing else writes them
    /// meanwhile. Reads and writes as [`Kernels::launch_unpack`].
    pub unsafe fn launch_unpack_list(&self, stream: &CudaStream, list: &UnpackList) -> Result<()> {
        self.check_stream(stream)?;
        if list.count == 0 {
            return Ok(());
        }
        let blocks = list.count.div_ceil(ENTRIES_PER_BLOCK);
        let (f, what) = match ListBlock::for_count(list.count as usize, self.short_lists) {
            ListBlock::Short => (
                &self.short_list_fn,
                "cuLaunchKernel(tcpx_unpack_short_list)",
            ),
            ListBlock::Long => (&self.list_fn, "cuLaunchKernel(tcpx_unpack_list)"),
        };
        let block = std::ptr::from_ref(list).cast::<c_void>();
        let mut params: [*mut c_void; 1] = [block.cast_mut()];
        // SAFETY: `UnpackList` matches the long kernel's by-value parameter, and its first
        // SHORT_LIST_BYTES the short kernel's (the driver copies the kernel's parameter size
        // from the list); the kernel only reads the copy; `count` and `njobs` never exceed the
        // arrays (`push` keeps them so, and the short kernel runs only for a count that fits
        // its block); the memory contract is the caller's.
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                (blocks, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                stream.cu_stream(),
                &mut params,
            )
        }
        .context(what)
    }

    /// Whether lists of at most [`SHORT_LIST_ENTRIES`] entries launch with the short parameter
    /// block (default on; for benchmarks and tests of the long one).
    pub fn set_short_lists(&mut self, on: bool) {
        self.short_lists = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lists_take_the_short_block_up_to_its_capacity() {
        assert_eq!(ListBlock::for_count(0, true), ListBlock::Short);
        assert_eq!(
            ListBlock::for_count(SHORT_LIST_ENTRIES, true),
            ListBlock::Short
        );
        assert_eq!(
            ListBlock::for_count(SHORT_LIST_ENTRIES + 1, true),
            ListBlock::Long
        );
        assert_eq!(ListBlock::for_count(1, false), ListBlock::Long);
        // The short block is the start of a list, entries included.
        assert_eq!(
            SHORT_LIST_BYTES,
            std::mem::offset_of!(UnpackList, entries) + SHORT_LIST_ENTRIES * 16
        );
    }

    #[test]
    fn embedded_blob_matches_the_build() {
        assert_eq!(kernels_built(), !cfg!(tcpx_no_kernels));
        if kernels_built() {
            // A fatbin container starts with its magic, 0xBA55ED50 little-endian.
            assert_eq!(FATBIN[..4], 0xBA55_ED50u32.to_le_bytes());
        }
    }
}
