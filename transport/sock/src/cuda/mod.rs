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

mod device;
mod lanes;
mod pinned;
mod stage;

use core::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext, DriverError};

use crate::error::{Error, Result};

pub(crate) use device::{Copies, DeviceMem, DeviceWriter, Landing};
pub use lanes::kernel_shares;
pub use pinned::CudaMappedAllocator;
pub(crate) use pinned::CUDA_ALLOCATOR;
pub use stage::exclusive_process;
pub(crate) use stage::{SendStage, Staging};

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
