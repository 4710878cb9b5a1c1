//! Optional CUDA support, decided at run time.
//!
//! The plugin must load and work on boxes without a GPU, so libcuda is opened lazily by
//! cudarc's `dynamic-loading` and probed with `is_culib_present` before the first driver call
//! (cudarc panics on a missing library otherwise). The answer is cached for the process.
//!
//! Contexts: every driver call runs with the *primary* context of a device current
//! ([`with_ctx`]); the caller's previous context is restored afterwards so an engine thread
//! that had its own context current is not disturbed. Primary contexts are retained once per
//! device (cudarc's `CudaContext::new`) and kept for the process lifetime, so memory made
//! through them never outlives its context.

use core::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, DriverError};

use crate::config::StageKernel;
use crate::error::{Error, Result};
use tcpx_core::unpack::PAGE_SIZE;

use crate::mem::{MappedAllocator, MappedRegion};

fn cuda_err(ctx: &'static str, e: DriverError) -> Error {
    Error::Cuda(ctx, e.0 as i32)
}

fn kernels_err(ctx: &'static str, e: tcpx_kernels::Error) -> Error {
    match e {
        tcpx_kernels::Error::Cuda { source, .. } => cuda_err(ctx, source),
        _ => Error::Internal(ctx),
    }
}

/// Whether a CUDA driver with at least one device is present. Cached; never panics.
pub fn present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        std::panic::catch_unwind(|| {
            // SAFETY: only tries to open libcuda; no driver call is made if it is absent.
            if !unsafe { sys::is_culib_present() } {
                return false;
            }
            matches!(CudaContext::device_count(), Ok(n) if n >= 1)
        })
        .unwrap_or(false)
    })
}

/// Primary contexts retained so far, by ordinal; never released (see module docs).
static CTXS: Mutex<Vec<Option<Arc<CudaContext>>>> = Mutex::new(Vec::new());

/// The retained primary context of device `ordinal`.
pub(crate) fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !present() {
        return Err(Error::InvalidArgument("no CUDA driver or device"));
    }
    let mut g = CTXS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Some(c)) = g.get(ordinal) {
        return Ok(c.clone());
    }
    // CudaContext::new makes the context current on this thread; callers go through
    // with_ctx, which restores the previous one.
    let c = CudaContext::new(ordinal).map_err(|e| cuda_err("cuDevicePrimaryCtxRetain", e))?;
    if g.len() <= ordinal {
        g.resize(ordinal + 1, None);
    }
    g[ordinal] = Some(c.clone());
    Ok(c)
}

/// Restores the thread's previous context (possibly none) on drop.
struct Restore(Option<sys::CUcontext>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(prev) = self.0 {
            // SAFETY: `prev` is NULL (unbinds) or was current on this thread a moment ago and
            // is still alive (its owner cannot destroy it while this thread is in a plugin call).
            let _ = unsafe { result::ctx::set_current(prev) };
        }
    }
}

/// Runs `f` with the primary context of `ordinal` current, then restores the caller's context.
pub(crate) fn with_ctx<T>(
    ordinal: usize,
    f: impl FnOnce(&Arc<CudaContext>) -> Result<T>,
) -> Result<T> {
    let prev = result::ctx::get_current()
        .map_err(|e| cuda_err("cuCtxGetCurrent", e))?
        .unwrap_or(core::ptr::null_mut());
    let c = context(ordinal)?;
    // `prev` was read before context() may bind, so the caller's thread ends as it began.
    bound(prev, &c, f)
}

/// [`with_ctx`] for a context already in hand (no lookup): what a per-request call uses.
pub(crate) fn with_this_ctx<T>(
    c: &Arc<CudaContext>,
    f: impl FnOnce(&Arc<CudaContext>) -> Result<T>,
) -> Result<T> {
    let prev = result::ctx::get_current()
        .map_err(|e| cuda_err("cuCtxGetCurrent", e))?
        .unwrap_or(core::ptr::null_mut());
    bound(prev, c, f)
}

/// Runs `f` with `c` current, then makes `prev` current again unless it was `c` already (an
/// engine thread usually has the same primary context current: then nothing is rebound).
fn bound<T>(
    prev: sys::CUcontext,
    c: &Arc<CudaContext>,
    f: impl FnOnce(&Arc<CudaContext>) -> Result<T>,
) -> Result<T> {
    if prev == c.cu_ctx() {
        return f(c);
    }
    let _restore = Restore(Some(prev));
    c.bind_to_thread()
        .map_err(|e| cuda_err("cuCtxSetCurrent", e))?;
    f(c)
}

/// The device a caller means when it names none: the device of the context current on the
/// calling thread (as NCCL's proxy thread has), else device 0.
pub(crate) fn home_ordinal() -> usize {
    if !present() {
        return 0;
    }
    if !matches!(result::ctx::get_current(), Ok(Some(_))) {
        return 0;
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: a context is current; the out pointer is valid.
    if unsafe { sys::cuCtxGetDevice(&mut dev) }.result().is_err() {
        return 0;
    }
    // CUdevice is a handle, not documented to equal the ordinal: look it up.
    let n = CudaContext::device_count().unwrap_or(0).max(0) as usize;
    (0..n)
        .find(|&i| result::device::get(i as i32).is_ok_and(|d| d == dev))
        .unwrap_or(0)
}

/// The device ordinal owning CUDA pointer `p`, if the driver knows it as device memory.
fn pointer_ordinal(p: u64) -> Option<usize> {
    let mut ord: i32 = -1;
    // SAFETY: the attribute is an int; the out pointer is valid; a context is current (callers
    // run inside `with_ctx`).
    unsafe {
        sys::cuPointerGetAttribute(
            (&mut ord as *mut i32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            p as sys::CUdeviceptr,
        )
    }
    .result()
    .ok()?;
    usize::try_from(ord).ok()
}

/// The device that owns the CUDA buffer `p..p+len` (a `regMr` of type CUDA): asked of its last
/// byte, else of its first. A caller that registers from the 4 KiB boundary below its buffer
/// (as TCPX requires) may start outside any allocation, or in a neighbour's; its last byte is
/// its own.
pub(crate) fn buffer_ordinal(p: *const c_void, len: usize) -> Result<usize> {
    with_ctx(home_ordinal(), |_| {
        let first = p as u64;
        pointer_ordinal(first + len.max(1) as u64 - 1)
            .or_else(|| pointer_ordinal(first))
            .ok_or(Error::InvalidArgument("regMr(CUDA): not a CUDA pointer"))
    })
}

/// Device memory of one GPU (`cuMemAlloc`), freed on drop.
pub(crate) struct DeviceMem {
    ptr: u64,
    ctx: Arc<CudaContext>,
}

// SAFETY: a device allocation is not tied to a thread; it is freed once, by its owner.
unsafe impl Send for DeviceMem {}
// SAFETY: shared access only reads the address.
unsafe impl Sync for DeviceMem {}

impl DeviceMem {
    /// `len` bytes (not zeroed) on device `ordinal`.
    pub(crate) fn new(ordinal: usize, len: usize) -> Result<Self> {
        with_ctx(ordinal, |c| {
            // SAFETY: a plain allocation in the bound context.
            let ptr = unsafe { result::malloc_sync(len.max(1)) }
                .map_err(|e| cuda_err("cuMemAlloc", e))?;
            Ok(DeviceMem {
                ptr,
                ctx: c.clone(),
            })
        })
    }

    /// Its device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks.
        let _ = with_this_ctx(&self.ctx, |_| {
            // SAFETY: allocated by `new` and freed once; every copy into it was waited for.
            let _ = unsafe { result::free_sync(self.ptr) };
            Ok(())
        });
    }
}

/// Host-to-device copies made by the plugin itself (linear bytes into CUDA buffers, bytes into
/// device bounce pages, the device handle): queued on a private non-blocking stream of a
/// device's primary context, so they never wait behind the application's work, and waited for
/// before anything that depends on them is published.
pub(crate) struct DeviceWriter {
    ctx: Arc<CudaContext>,
    stream: sys::CUstream,
}

// SAFETY: the stream is owned by this value; one thread at a time queues on it (the comm's
// lock, or the one helper that owns it).
unsafe impl Send for DeviceWriter {}
// SAFETY: see Send.
unsafe impl Sync for DeviceWriter {}

/// Copies queued inside [`DeviceWriter::batch`].
pub(crate) struct Copies {
    stream: sys::CUstream,
}

impl Copies {
    /// Queues a copy of `n` bytes from `src` to device address `dst`.
    ///
    /// # Safety
    /// `src..src+n` stays readable until the batch returns; `dst..dst+n` is device memory (or a
    /// CUDA buffer) that nothing else writes meanwhile.
    pub(crate) unsafe fn htod(&self, dst: u64, src: *const u8, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        // SAFETY: per the contract; the batch has the stream's context current.
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), n, self.stream) }
            .result()
            .map_err(|e| cuda_err("cuMemcpyHtoDAsync", e))
    }
}

impl DeviceWriter {
    /// A writer into memory of device `ordinal`.
    pub(crate) fn new(ordinal: usize) -> Result<Self> {
        with_ctx(ordinal, |c| {
            let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| cuda_err("cuStreamCreate", e))?;
            Ok(DeviceWriter {
                ctx: c.clone(),
                stream,
            })
        })
    }

    /// Runs `f`, which queues copies, with the device's context current, then waits until they
    /// are done (even when `f` or a copy failed: no copy may read its source after this).
    pub(crate) fn batch<T>(&self, f: impl FnOnce(&Copies) -> Result<T>) -> Result<T> {
        with_this_ctx(&self.ctx, |_| {
            let r = f(&Copies {
                stream: self.stream,
            });
            // SAFETY: the stream is owned by this value.
            let synced = unsafe { result::stream::synchronize(self.stream) }
                .map_err(|e| cuda_err("cuStreamSynchronize", e));
            let v = r?;
            synced?;
            Ok(v)
        })
    }
}

impl Drop for DeviceWriter {
    fn drop(&mut self) {
        let _ = with_this_ctx(&self.ctx, |_| {
            // SAFETY: created by `new` and destroyed once; every batch waited for its copies.
            let _ = unsafe { result::stream::destroy(self.stream) };
            Ok(())
        });
    }
}

/// A helper thread's way into device memory: pinned scratch that received bytes land in, and a
/// writer that copies them on (pinned, so each copy is a plain DMA).
pub(crate) struct Landing {
    writer: DeviceWriter,
    scratch: Pinned,
    len: usize,
}

// SAFETY: owned by one helper thread; see DeviceWriter and Pinned.
unsafe impl Send for Landing {}

impl Landing {
    /// `len` bytes of scratch and a writer, for device `ordinal`.
    pub(crate) fn new(ordinal: usize, len: usize) -> Result<Self> {
        let writer = DeviceWriter::new(ordinal)?;
        let scratch = with_ctx(ordinal, |_| Pinned::new(len))?;
        Ok(Landing {
            writer,
            scratch,
            len,
        })
    }

    /// The scratch and the writer that copies out of it.
    pub(crate) fn parts(&mut self) -> (&mut [u8], &DeviceWriter) {
        // SAFETY: `len` pinned bytes owned by this value, borrowed mutably with it.
        let s = unsafe { core::slice::from_raw_parts_mut(self.scratch.host, self.len) };
        (s, &self.writer)
    }

    /// The device this lands on.
    pub(crate) fn ordinal(&self) -> usize {
        self.writer.ctx.ordinal()
    }
}

/// Pinned, device-mapped, NOT write-combined host memory: page-aligned anonymous memory
/// registered with `cuMemHostRegister(PORTABLE | DEVICEMAP)`, so the plugin's CPU writes stay
/// fast (cached) and the unpack kernel reads over PCIe. `cuMemHostAlloc` is not used because
/// the driver sub-allocates small requests without 4 KiB alignment (seen on H100: parallel
/// accepts got unaligned meta tables). Used for the meta table and bounce region when CUDA is
/// present and no allocator was installed.
#[derive(Debug, Default)]
pub struct CudaMappedAllocator;

fn map_len(len: usize) -> usize {
    len.max(1).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl MappedAllocator for CudaMappedAllocator {
    fn alloc(&self, len: usize) -> Result<MappedRegion> {
        self.alloc_on(len, home_ordinal())
    }

    fn alloc_on(&self, len: usize, gpu: usize) -> Result<MappedRegion> {
        let size = map_len(len);
        // SAFETY: a fresh private anonymous mapping (zero-filled, page-aligned).
        let host = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if host == libc::MAP_FAILED {
            return Err(Error::System(
                "mmap for pinned region",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            ));
        }
        let r = with_ctx(gpu, |_| {
            let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
            // SAFETY: `host..host+size` is our live mapping.
            unsafe { sys::cuMemHostRegister_v2(host, size, flags) }
                .result()
                .map_err(|e| cuda_err("cuMemHostRegister", e))?;
            let mut dev: sys::CUdeviceptr = 0;
            // SAFETY: `host` is registered with DEVICEMAP; flags must be 0.
            let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0) }.result();
            if let Err(e) = r {
                // SAFETY: registered just above, not used after this.
                let _ = unsafe { sys::cuMemHostUnregister(host) };
                return Err(cuda_err("cuMemHostGetDevicePointer", e));
            }
            Ok(dev)
        });
        match r {
            // With UVA `dev` usually equals `host`; both are kept, never assumed equal.
            Ok(dev) => Ok(MappedRegion {
                host: host.cast(),
                device: dev as usize as *mut c_void,
                len,
            }),
            Err(e) => {
                // SAFETY: our mapping, unused.
                unsafe { libc::munmap(host, size) };
                Err(e)
            }
        }
    }

    unsafe fn free(&self, region: MappedRegion) {
        // PORTABLE registrations may be dropped with any context current.
        let _ = with_ctx(home_ordinal(), |_| {
            // SAFETY: per the contract, `host` was registered by alloc and is released once.
            unsafe { sys::cuMemHostUnregister(region.host.cast()) }
                .result()
                .map_err(|e| cuda_err("cuMemHostUnregister", e))
        });
        // SAFETY: the mapping made by alloc, with the same rounded length; no user is left.
        unsafe { libc::munmap(region.host.cast(), map_len(region.len)) };
    }
}

/// The built-in allocator used when CUDA is present.
pub(crate) static CUDA_ALLOCATOR: CudaMappedAllocator = CudaMappedAllocator;

/// Pinned, device-mapped host memory of `len` bytes (zeroed), freed on drop.
struct Pinned {
    host: *mut u8,
    dev: u64,
    /// The device whose context allocated it (bound again to free it).
    ordinal: usize,
}

impl Pinned {
    /// Allocates in the current context.
    fn new(len: usize) -> Result<Self> {
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: a plain pinned allocation.
        let host = unsafe { result::malloc_host(len, flags) }
            .map_err(|e| cuda_err("cuMemHostAlloc", e))?
            .cast::<u8>();
        let mut p = Pinned {
            host,
            dev: 0,
            ordinal: home_ordinal(),
        };
        // SAFETY: the allocation just made.
        unsafe { core::ptr::write_bytes(host, 0, len) };
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `host` was allocated with DEVICEMAP; flags must be 0.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) }
            .result()
            .map_err(|e| cuda_err("cuMemHostGetDevicePointer", e))?;
        p.dev = dev;
        Ok(p)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = with_ctx(self.ordinal, |_| {
            // SAFETY: allocated by `new`, freed once, no user left.
            let _ = unsafe { result::free_host(self.host.cast()) };
            Ok(())
        });
    }
}

/// The staging kernel's lanes of one send comm ([`tcpx_kernels::stage`]): per data socket a
/// queue in pinned, device-mapped memory and a stream, per request slot and lane a progress
/// word (bytes of the share staged), and one abort word. Shares are queued under the comm's
/// lock; a lane's kernel is launched only when none is running, so a burst of requests costs
/// one launch per lane and none per request.
pub(crate) struct StageLanes {
    ctx: Arc<CudaContext>,
    kernels: Arc<tcpx_kernels::stage::StageKernels>,
    lanes: usize,
    /// `lanes` [`tcpx_kernels::stage::Lane`]s.
    ctl: Pinned,
    /// progress[slot][lane], then the abort word.
    words: Pinned,
    streams: Vec<sys::CUstream>,
    piece: u64,
    idle_ns: u64,
    /// `kick` calls on running lanes (paces its fault checks).
    kicks: core::sync::atomic::AtomicU32,
}

// SAFETY: all members are owned by this value; the pinned words are shared with helpers and
// kernels through volatile accesses and fences only; driver objects are not tied to a thread.
unsafe impl Send for StageLanes {}
// SAFETY: see Send; shared access reads words and returns pointers, and queueing happens only
// under the comm's lock.
unsafe impl Sync for StageLanes {}

/// Shares queued for staging kernels by this process (see [`kernel_shares`]).
static KERNEL_SHARES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many request shares this process has queued for staging kernels so far: tests use it
/// to tell kernel-staged sends from copy-engine ones (both deliver the same bytes).
pub fn kernel_shares() -> u64 {
    KERNEL_SHARES.load(core::sync::atomic::Ordering::Relaxed)
}

/// Bytes the staging kernel copies between two progress updates.
const STAGE_PIECE: u64 = 64 << 10;
/// Longest pause between two polls of an idle lane's queue.
const STAGE_POLL_NS: u32 = 8_000;
const SLOTS: usize = tcpx_core::ring::TCPX_REQUESTS;

/// The staging kernel, loaded once per device (a module per comm would cost each comm time and
/// device memory) and kept for the process lifetime like the primary contexts.
fn stage_kernels(c: &Arc<CudaContext>) -> Result<Arc<tcpx_kernels::stage::StageKernels>> {
    static LOADED: Mutex<Vec<Option<Arc<tcpx_kernels::stage::StageKernels>>>> =
        Mutex::new(Vec::new());
    let mut g = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let i = c.ordinal();
    if let Some(Some(k)) = g.get(i) {
        return Ok(k.clone());
    }
    let k = Arc::new(
        tcpx_kernels::stage::StageKernels::load(c)
            .map_err(|e| kernels_err("loading the staging kernel", e))?,
    );
    if g.len() <= i {
        g.resize(i + 1, None);
    }
    g[i] = Some(k.clone());
    Ok(k)
}

impl StageLanes {
    /// Lanes for a comm of `lanes` data sockets on the GPU of `c` (current on this thread);
    /// a lane's kernel stops after `idle_ns` with nothing queued.
    fn new(c: &Arc<CudaContext>, lanes: usize, idle_ns: u64) -> Result<Self> {
        let kernels = stage_kernels(c)?;
        let ctl = Pinned::new(lanes * size_of::<tcpx_kernels::stage::Lane>())?;
        let words = Pinned::new((SLOTS * lanes + 1) * 8)?;
        let mut d = StageLanes {
            ctx: c.clone(),
            kernels,
            lanes,
            ctl,
            words,
            streams: Vec::with_capacity(lanes),
            piece: STAGE_PIECE,
            idle_ns,
            kicks: core::sync::atomic::AtomicU32::new(0),
        };
        for _ in 0..lanes {
            d.streams.push(
                result::stream::create(result::stream::StreamKind::NonBlocking)
                    .map_err(|e| cuda_err("cuStreamCreate", e))?,
            );
        }
        Ok(d)
    }

    fn word(&self, i: usize) -> *mut u64 {
        debug_assert!(i <= SLOTS * self.lanes);
        self.words.host.cast::<u64>().wrapping_add(i)
    }

    fn abort_index(&self) -> usize {
        SLOTS * self.lanes
    }

    fn ctl(&self, lane: usize) -> *mut tcpx_kernels::stage::Lane {
        self.ctl
            .host
            .cast::<tcpx_kernels::stage::Lane>()
            .wrapping_add(lane)
    }

    /// Request slot `slot`'s progress word of lane `lane` (host address): bytes of the share
    /// in the ring, written by the kernel.
    pub(crate) fn progress_word(&self, slot: usize, lane: usize) -> *mut u64 {
        self.word(slot * self.lanes + lane)
    }

    /// Queues request slot `slot`'s share on `lane` (its progress word is reset and filled in
    /// here) and launches the lane's kernel if none is running. Call it before the helper gets
    /// its job.
    ///
    /// # Safety
    /// The share names live memory as [`tcpx_kernels::stage::Share`] documents until its
    /// request completes; the slot's previous request has completed; the comm's lock is held
    /// (one writer of the lane's queue).
    pub(crate) unsafe fn queue(
        &self,
        slot: usize,
        lane: usize,
        mut share: tcpx_kernels::stage::Share,
    ) -> Result<()> {
        if lane >= self.lanes || slot >= SLOTS {
            return Err(Error::Internal("staging share outside the comm"));
        }
        let pw = self.progress_word(slot, lane);
        share.progress = self.words.dev + (pw as usize - self.words.host as usize) as u64;
        let ctl = self.ctl(lane);
        // SAFETY: `ctl` is this lane's queue in the pinned allocation; the host is the only
        // writer of `tail`, `state` and queued shares; the ring entry at `tail` is finished (at
        // most one share per request slot is queued per lane, and 16 slots fit the ring).
        unsafe {
            pw.write_volatile(0);
            let tail = core::ptr::addr_of!((*ctl).tail).read_volatile();
            let at =
                core::ptr::addr_of_mut!((*ctl).ring[tail as usize % tcpx_kernels::stage::RING]);
            at.write_volatile(share);
            // The share and its word before the tail that announces it.
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            core::ptr::addr_of_mut!((*ctl).tail).write_volatile(tail + 1);
            KERNEL_SHARES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            // Tail before reading state: the host's half of the exit protocol (stage.cu).
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            if core::ptr::addr_of!((*ctl).state).read_volatile() != 0 {
                return Ok(());
            }
            core::ptr::addr_of_mut!((*ctl).state).write_volatile(1);
        }
        self.launch(lane)
    }

    /// Launches `lane`'s kernel if it stopped with shares still queued (one queued just as the
    /// kernel went idle). Two reads of pinned memory when it does not; every 64th call on a
    /// running lane also asks the driver whether its kernel faulted, so a broken kernel fails
    /// the comm instead of leaving its helper waiting for bytes. Call it under the comm's lock
    /// while a request waits on the lane.
    pub(crate) fn kick(&self, lane: usize) -> Result<()> {
        if lane >= self.lanes {
            return Ok(());
        }
        let ctl = self.ctl(lane);
        // SAFETY: this lane's queue; `state` and `head` are written by the kernel over PCIe.
        unsafe {
            if core::ptr::addr_of!((*ctl).state).read_volatile() != 0 {
                let n = self
                    .kicks
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                if n % 64 == 63 {
                    // SAFETY: the lane's stream, owned by this value.
                    match sys::cuStreamQuery(self.streams[lane]) {
                        sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_NOT_READY => {}
                        e => return Err(Error::Cuda("staging kernel (cuStreamQuery)", e as i32)),
                    }
                }
                return Ok(());
            }
            if core::ptr::addr_of!((*ctl).head).read_volatile()
                >= core::ptr::addr_of!((*ctl).tail).read_volatile()
            {
                return Ok(());
            }
            core::ptr::addr_of_mut!((*ctl).state).write_volatile(1);
        }
        self.launch(lane)
    }

    fn launch(&self, lane: usize) -> Result<()> {
        let lane_dev = self.ctl.dev + (lane * size_of::<tcpx_kernels::stage::Lane>()) as u64;
        let abort = self.words.dev + 8 * self.abort_index() as u64;
        with_this_ctx(&self.ctx, |_| {
            // SAFETY: the lane's queue and words are pinned memory of this value; its shares
            // name live memory (`queue`'s contract); one stream per lane keeps one kernel per
            // lane running.
            unsafe {
                self.kernels.launch_lane(
                    self.streams[lane],
                    lane_dev,
                    abort,
                    self.piece,
                    self.idle_ns,
                    STAGE_POLL_NS,
                )
            }
            .map_err(|e| kernels_err("cuLaunchKernel(tcpx_stage_lane)", e))
        })
    }

    /// Stops every lane's kernel (close): it exits at its next look at the queue.
    fn abort(&self) {
        // SAFETY: inside the words allocation; read by kernels over PCIe.
        unsafe { self.word(self.abort_index()).write_volatile(1) };
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Stops every lane's kernel and waits until none runs.
    fn stop(&self) {
        self.abort();
        let _ = with_this_ctx(&self.ctx, |_| {
            for s in &self.streams {
                // SAFETY: the lane's stream, owned by this value; the kernels exit on the
                // abort word, so it drains.
                let _ = unsafe { result::stream::synchronize(*s) };
            }
            Ok(())
        });
    }
}

impl Drop for StageLanes {
    fn drop(&mut self) {
        self.stop();
        // Errors cannot be returned from drop; a failed release leaks.
        let _ = with_this_ctx(&self.ctx, |_| {
            for s in &self.streams {
                // SAFETY: made by `new` and destroyed once; no kernel runs on it any more.
                let _ = unsafe { result::stream::destroy(*s) };
            }
            Ok(())
        });
        // `ctl` and `words` are freed after this, with no kernel left to use them.
    }
}

/// Per-send-comm staging for CUDA sources: one ring of pinned, device-mapped host memory (not
/// write-combined: the sockets read it with the CPU), filled in request order by copies that
/// the comm's caller starts in `isend` (so they neither wait for nor hold up the user's work
/// on the legacy default stream).
///
/// Two ways of filling it ([`Staging`]): by default one copy-engine copy per request and an
/// event per request slot, which the helpers query once; with the staging kernel
/// (`TCPX_SOCK_STAGE_KERNEL=1`, where it loads) each lane's kernel stages its share of the
/// request piece by piece and publishes how much is in, so each helper sends as the bytes land,
/// and neither `isend` nor the helpers make a driver call per request (a source on another GPU
/// than the ring's, or not 16-byte aligned, still takes the copy engine). Which bytes of the
/// ring a request uses is [`crate::mem::StageRing`]'s business, under the comm's lock.
pub(crate) struct SendStage {
    ctx: Arc<CudaContext>,
    ring: Pinned,
    len: usize,
    stream: sys::CUstream,
    /// Per request slot.
    done: [sys::CUevent; tcpx_core::ring::TCPX_REQUESTS],
    /// The staging kernel's lanes, when on and loadable.
    lanes: Option<StageLanes>,
}

/// How a request's staging copy reports that its bytes are in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staging {
    /// The request slot's event, once for the whole request.
    Event,
    /// Each lane's share: the slot's progress word of lane `l` is at `staged + l` and counts
    /// the share's bytes in the ring; `lanes` has bit `l` set for every lane with a share.
    Lanes { staged: *const u64, lanes: u32 },
}

// SAFETY: the ring, events, stream and lanes are owned by this value; copies are started under
// the comm's lock, and the driver objects are not tied to a thread.
unsafe impl Send for SendStage {}
// SAFETY: see Send; helpers only query events, read progress words and read ring bytes their
// request owns.
unsafe impl Sync for SendStage {}

/// Whether the GPU of `c` is in exclusive-process compute mode (no other process can have a
/// context on it). An unreadable attribute counts as shared.
pub fn exclusive_process(c: &Arc<CudaContext>) -> bool {
    c.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE)
        .is_ok_and(|m| m == sys::CUcomputemode::CU_COMPUTEMODE_EXCLUSIVE_PROCESS as i32)
}

impl SendStage {
    /// A `len`-byte ring, its stream and events in the primary context of `ordinal`, and, when
    /// `kernel` asks for it on this GPU, the staging kernel's lanes for `lanes` data sockets
    /// whose kernels exit after `idle_ns` idle (used only if the kernel loads; else the copy
    /// engine stages every request).
    pub(crate) fn new(
        ordinal: usize,
        len: usize,
        lanes: usize,
        kernel: StageKernel,
        idle_ns: u64,
    ) -> Result<Self> {
        with_ctx(ordinal, |c| {
            let mut s = SendStage {
                ctx: c.clone(),
                ring: Pinned::new(len)?,
                len,
                stream: core::ptr::null_mut(),
                done: [core::ptr::null_mut(); tcpx_core::ring::TCPX_REQUESTS],
                lanes: None,
            };
            // Each handle is stored as soon as it exists, so Drop frees whatever was made
            // before a failure.
            s.stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| cuda_err("cuStreamCreate", e))?;
            for i in 0..s.done.len() {
                s.done[i] = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(|e| cuda_err("cuEventCreate", e))?;
            }
            let use_kernel = match kernel {
                StageKernel::On => true,
                StageKernel::Off => false,
                StageKernel::Auto => {
                    // Said once per process, not per comm.
                    static TOLD: AtomicBool = AtomicBool::new(false);
                    let excl = exclusive_process(c);
                    if excl && !TOLD.swap(true, Ordering::Relaxed) {
                        crate::log_info(&format!(
                            "tcpxsock: GPU {ordinal} is in exclusive-process compute mode: \
                             CUDA sends staged by the staging kernel"
                        ));
                    }
                    excl
                }
            };
            if use_kernel {
                s.lanes = match StageLanes::new(c, lanes, idle_ns) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        crate::log_warn(&format!(
                            "tcpxsock: CUDA sends staged by the copy engine: {e}"
                        ));
                        None
                    }
                };
            }
            Ok(s)
        })
    }

    /// Starts copying the `size`-byte request in slot `req` from device address `src` (memory of
    /// GPU `ordinal`) into the ring at `off`; it is spread over lanes as the helpers will send it (chunks of
    /// `chunk_bytes`, chunk `k` on lane `(chunk_base + k) % lanes`). Returns where the bytes
    /// will be and how the helpers learn they are there.
    ///
    /// # Safety
    /// `off..off+size` lies in the ring and belongs to request slot `req` until it completes;
    /// `src` is the caller's CUDA buffer of at least `size` bytes, unchanged until then; the
    /// comm's lock is held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn copy(
        &self,
        req: usize,
        off: usize,
        src: u64,
        ordinal: usize,
        size: usize,
        chunk_bytes: usize,
        chunk_base: u64,
    ) -> Result<(*const u8, Staging)> {
        if off.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(Error::Internal("staging copy outside the ring"));
        }
        let at = self.ring.host.wrapping_add(off).cast_const();
        // The kernel runs on the ring's GPU and moves 16-byte vectors; a source on another GPU
        // (the kernel would need peer access) or at another alignment goes to the copy engine.
        let kernel_ok = ordinal == self.ctx.ordinal() && (src as usize | off) % 16 == 0;
        if let Some(d) = self.lanes.as_ref().filter(|_| kernel_ok) {
            let n = d.lanes as u64;
            let used = (size.div_ceil(chunk_bytes) as u64).min(n);
            let mut mask = 0u32;
            for k in 0..used {
                let lane = ((chunk_base + k) % n) as usize;
                let share = tcpx_kernels::stage::Share {
                    src,
                    dst: self.ring.dev + off as u64,
                    size: size as u64,
                    chunk_bytes: chunk_bytes as u64,
                    first: k,
                    lanes: n,
                    ..Default::default()
                };
                // SAFETY: per the contract; the slot's previous request completed before
                // its slot was reused.
                unsafe { d.queue(req, lane, share)? };
                mask |= 1 << lane;
            }
            let staged = d.progress_word(req, 0);
            return Ok((
                at,
                Staging::Lanes {
                    staged,
                    lanes: mask,
                },
            ));
        }
        with_this_ctx(&self.ctx, |_| {
            // SAFETY: per the contract.
            unsafe {
                let dst = core::slice::from_raw_parts_mut(self.ring.host.add(off), size);
                result::memcpy_dtoh_async(dst, src, self.stream)
                    .map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))?;
                result::event::record(self.done[req], self.stream)
                    .map_err(|e| cuda_err("cuEventRecord", e))?;
            }
            Ok((at, Staging::Event))
        })
    }

    /// Stops the staging kernels and waits for them and for any copy in flight (close: nothing
    /// may read the caller's buffers once the comm is closed). Idempotent.
    pub(crate) fn stop(&self) {
        if let Some(l) = &self.lanes {
            l.stop();
        }
        let _ = with_this_ctx(&self.ctx, |_| {
            // SAFETY: the stream is owned by this value.
            let _ = unsafe { result::stream::synchronize(self.stream) };
            Ok(())
        });
    }

    /// Relaunches the stopped kernels of the lanes in `mask` that still have shares queued.
    pub(crate) fn kick(&self, mask: u32) -> Result<()> {
        if let Some(d) = &self.lanes {
            for lane in (0..32).filter(|l| mask & (1 << l) != 0) {
                d.kick(lane)?;
            }
        }
        Ok(())
    }

    /// Waits until request slot `req`'s copy-engine copy is done (polling, not sleeping: it
    /// is nearly always done already, and when not, it is a copy's length away).
    pub(crate) fn wait(&self, req: usize) -> Result<()> {
        loop {
            // SAFETY: the event belongs to this value; a query needs no current context.
            match unsafe { sys::cuEventQuery(self.done[req]) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => std::thread::yield_now(),
                e => return Err(Error::Cuda("cuEventQuery", e as i32)),
            }
        }
    }
}

impl Drop for SendStage {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks. May run on the caller's
        // thread (close), so its context is restored.
        let _ = with_ctx(self.ctx.ordinal(), |_| {
            // The lanes' kernels stop and drain before the ring goes.
            self.lanes = None;
            // SAFETY: created by this value and freed once; copies still in flight finish
            // before the stream goes, and the helpers have exited.
            unsafe {
                if !self.stream.is_null() {
                    let _ = result::stream::synchronize(self.stream);
                    let _ = result::stream::destroy(self.stream);
                }
                for ev in self.done.iter().filter(|e| !e.is_null()) {
                    let _ = result::event::destroy(*ev);
                }
            }
            Ok(())
        });
        // `ring` is freed after this (field drop), with a context restored; PORTABLE memory
        // does not need one.
    }
}
