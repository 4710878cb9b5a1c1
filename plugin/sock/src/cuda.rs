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
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, DriverError};

use crate::error::{Error, Result};
use tcpx_core::unpack::PAGE_SIZE;

use crate::mem::{MappedAllocator, MappedRegion};

fn cuda_err(ctx: &'static str, e: DriverError) -> Error {
    Error::Cuda(ctx, e.0 as i32)
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

/// The device ordinal owning CUDA pointer `p` (a `regMr` of type CUDA).
pub(crate) fn pointer_ordinal(p: *const c_void) -> Result<usize> {
    with_ctx(home_ordinal(), |_| {
        let mut ord: i32 = -1;
        // SAFETY: the attribute is an int; the out pointer is valid.
        unsafe {
            sys::cuPointerGetAttribute(
                (&mut ord as *mut i32).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                p as sys::CUdeviceptr,
            )
        }
        .result()
        .map_err(|_| Error::InvalidArgument("regMr(CUDA): not a CUDA pointer"))?;
        usize::try_from(ord).map_err(|_| Error::InvalidArgument("regMr(CUDA): no device"))
    })
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
        let r = with_ctx(home_ordinal(), |_| {
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

/// Per-send-comm staging for CUDA sources: one ring of pinned host memory (not
/// write-combined: the sockets read it with the CPU), filled by device-to-host copies that the
/// comm's caller starts in `isend`, in request order on one non-blocking stream (so they
/// neither wait for nor hold up the user's work on the legacy default stream), with an event
/// per request slot. The helper threads make no driver call but one event query per request,
/// which the window of queued requests has almost always made moot: copies run up to the
/// whole window ahead of the sockets. Which bytes of the ring a request uses is
/// [`crate::mem::StageRing`]'s business, under the comm's lock.
pub(crate) struct SendStage {
    ctx: Arc<CudaContext>,
    ring: *mut u8,
    len: usize,
    stream: sys::CUstream,
    /// Per request slot.
    done: [sys::CUevent; crate::worker::MAX_REQUESTS],
}

// SAFETY: the ring, events and stream are owned by this value; copies are started under the
// comm's lock, and the driver objects are not tied to a thread.
unsafe impl Send for SendStage {}
// SAFETY: see Send; helpers only query events and read ring bytes their request owns.
unsafe impl Sync for SendStage {}

impl SendStage {
    /// A `len`-byte ring, its stream and events, in the primary context of `ordinal`.
    pub(crate) fn new(ordinal: usize, len: usize) -> Result<Self> {
        with_ctx(ordinal, |c| {
            let mut s = SendStage {
                ctx: c.clone(),
                ring: core::ptr::null_mut(),
                len,
                stream: core::ptr::null_mut(),
                done: [core::ptr::null_mut(); crate::worker::MAX_REQUESTS],
            };
            // Each handle is stored as soon as it exists, so Drop frees whatever was made
            // before a failure.
            // SAFETY: plain pinned allocation, only written by device-to-host copies.
            s.ring = unsafe { result::malloc_host(len, sys::CU_MEMHOSTALLOC_PORTABLE) }
                .map_err(|e| cuda_err("cuMemHostAlloc", e))?
                .cast::<u8>();
            s.stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| cuda_err("cuStreamCreate", e))?;
            for i in 0..s.done.len() {
                s.done[i] = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(|e| cuda_err("cuEventCreate", e))?;
            }
            Ok(s)
        })
    }

    /// Starts copying `size` bytes from device address `src` into the ring at `off`, then
    /// records request slot `req`'s event; returns where the bytes will be.
    ///
    /// # Safety
    /// `off..off+size` lies in the ring and belongs to request slot `req` until it completes;
    /// `src` is the caller's CUDA buffer of at least `size` bytes, unchanged until then.
    pub(crate) unsafe fn copy(
        &self,
        req: usize,
        off: usize,
        src: u64,
        size: usize,
    ) -> Result<*const u8> {
        if off.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(Error::Internal("staging copy outside the ring"));
        }
        with_this_ctx(&self.ctx, |_| {
            // SAFETY: per the contract.
            unsafe {
                let dst = core::slice::from_raw_parts_mut(self.ring.add(off), size);
                result::memcpy_dtoh_async(dst, src, self.stream)
                    .map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))?;
                result::event::record(self.done[req], self.stream)
                    .map_err(|e| cuda_err("cuEventRecord", e))?;
                Ok(self.ring.add(off).cast_const())
            }
        })
    }

    /// Waits until request slot `req`'s copy is done (polling, not sleeping: it is nearly
    /// always done already, and when not, it is a copy's length away).
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
                if !self.ring.is_null() {
                    let _ = result::free_host(self.ring.cast());
                }
            }
            Ok(())
        });
    }
}
