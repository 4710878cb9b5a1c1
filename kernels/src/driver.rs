//! Host-side CUDA driver work shared by the engine and tcpxsock: whether a driver is there, the
//! calling thread's current context and putting it back, devices' primary contexts, the device
//! current on the calling thread, and what the driver knows of a pointer.
//!
//! cudarc opens libcuda lazily and panics at the first driver call when it is missing, so every
//! function here that does not take a context asks [`present`] first and answers "none" (or an
//! [`Error::NoDriver`]) without a driver; none of them panics.
//!
//! Two ways of making a context current, for two kinds of caller:
//! - [`CtxGuard`]: save the caller's context and put it back when dropped, always, whatever is
//!   current by then. For code that calls out (into an ncclNet plugin, which may switch contexts
//!   itself) while its context is current.
//! - [`with_context`] / [`with_primary`]: run a closure with a context current and put the
//!   caller's back after; nothing is bound or restored when the caller already has that context
//!   current. For code that makes its own driver calls only and leaves the context as it found
//!   it.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result, sys, CudaContext};

use crate::{Context, Error, Result};

use sys::CUpointer_attribute as Attr;

/// The probe's answer, taken once per process.
fn probed() -> &'static std::result::Result<(), String> {
    static PROBE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        std::panic::catch_unwind(probe)
            .unwrap_or_else(|_| Err("the CUDA driver probe panicked".into()))
    })
}

fn probe() -> std::result::Result<(), String> {
    // SAFETY: only tries to dlopen libcuda under its usual names; no CUDA call is made.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda.so) found".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("CUDA driver present but no CUDA device".into()),
        Err(e) => Err(format!("CUDA driver present but unusable: {e}")),
    }
}

/// Probes for a usable CUDA driver and device without panicking: `Err(reason)` without one.
///
/// Call this (or [`present`]) before any cudarc call of your own. The answer is probed once per
/// process and kept: the probe dlopens libcuda's candidate names (~0.9 ms without a driver),
/// and registrations ask on every call.
pub fn gpu_available() -> std::result::Result<(), String> {
    probed().clone()
}

/// Whether a CUDA driver with at least one device is present ([`gpu_available`] as a bool; no
/// allocation, so hot paths may ask).
pub fn present() -> bool {
    probed().is_ok()
}

fn no_driver() -> Error {
    Error::NoDriver(match probed() {
        Ok(()) => String::new(),
        Err(why) => why.clone(),
    })
}

/// The calling thread's current context: NULL when none, or without a driver.
pub fn current_context() -> std::result::Result<sys::CUcontext, cudarc::driver::DriverError> {
    if !present() {
        return Ok(std::ptr::null_mut());
    }
    Ok(result::ctx::get_current()?.unwrap_or(std::ptr::null_mut()))
}

/// The calling thread's current context (possibly none), made current again when the guard
/// drops: unconditionally, so whatever the code in between made current is undone.
///
/// Drop it on the thread that saved it: it restores the context of whichever thread drops it.
/// The context it saved must outlive it; the caller's context does, since whoever made it
/// current holds it.
#[derive(Debug)]
pub struct CtxGuard(Option<sys::CUcontext>);

// SAFETY: a context handle may be made current on any thread; the guard only hands it to
// `cuCtxSetCurrent`. Which thread it restores is the caller's business (see the type's docs).
unsafe impl Send for CtxGuard {}

impl CtxGuard {
    /// Saves the calling thread's current context (NULL when none, or when the driver cannot
    /// say). Without a driver the guard restores nothing.
    pub fn save() -> CtxGuard {
        if !present() {
            return CtxGuard(None);
        }
        let current = result::ctx::get_current().ok().flatten();
        CtxGuard(Some(current.unwrap_or(std::ptr::null_mut())))
    }

    /// Saves the calling thread's current context, then makes `ctx` current until the guard
    /// drops. When binding fails the saved context is put back at once.
    pub fn bind(ctx: &CudaContext) -> Result<CtxGuard> {
        let guard = CtxGuard::save();
        ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        Ok(guard)
    }
}

impl Drop for CtxGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.0 {
            // SAFETY: a context the thread had current (or NULL, which unbinds); it outlives
            // this call, since whoever made it current still holds it (type docs).
            let _ = unsafe { result::ctx::set_current(prev) };
        }
    }
}

/// Runs `f` with `ctx` current on the calling thread, then makes the caller's context (possibly
/// none) current again. When the caller already has `ctx` current (an engine thread usually has
/// the same primary context), nothing is bound or restored: `f` must leave the thread's context
/// as it found it.
pub fn with_context<T>(
    ctx: &Arc<CudaContext>,
    f: impl FnOnce(&Arc<CudaContext>) -> T,
) -> Result<T> {
    let prev = current_context().context("cuCtxGetCurrent")?;
    if prev == ctx.cu_ctx() {
        return Ok(f(ctx));
    }
    let _restore = CtxGuard(Some(prev));
    ctx.bind_to_thread().context("cuCtxSetCurrent")?;
    Ok(f(ctx))
}

/// Retains device `ordinal`'s primary context (released when the last `Arc` drops), leaving
/// the calling thread's current context as it was.
pub fn retain_primary(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !present() {
        return Err(no_driver());
    }
    // cudarc makes the context current when it retains it.
    let _restore = CtxGuard::save();
    CudaContext::new(ordinal).context("cuDevicePrimaryCtxRetain")
}

/// Primary contexts retained through [`primary_context`], by ordinal; never released, so memory
/// made through them never outlives its context.
static PRIMARY: Mutex<Vec<Option<Arc<CudaContext>>>> = Mutex::new(Vec::new());

/// Device `ordinal`'s primary context, retained at the first call for the rest of the process
/// (one table for the whole process). The calling thread's current context is left as it was.
///
/// Each call of [`retain_primary`] gives its own `Arc<CudaContext>` (settings such as event
/// tracking are per `Arc`); this one shares one per device.
pub fn primary_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !present() {
        return Err(no_driver());
    }
    let mut table = PRIMARY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(Some(c)) = table.get(ordinal) {
        return Ok(c.clone());
    }
    let c = retain_primary(ordinal)?;
    if table.len() <= ordinal {
        table.resize(ordinal + 1, None);
    }
    table[ordinal] = Some(c.clone());
    Ok(c)
}

/// [`with_context`] with device `ordinal`'s [`primary_context`].
pub fn with_primary<T>(ordinal: usize, f: impl FnOnce(&Arc<CudaContext>) -> T) -> Result<T> {
    let ctx = primary_context(ordinal)?;
    with_context(&ctx, f)
}

/// The ordinal of the device whose context is current on the calling thread; `None` without a
/// driver, without a current context, or when the driver does not say.
pub fn current_ordinal() -> Option<usize> {
    if !matches!(current_context(), Ok(c) if !c.is_null()) {
        return None;
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: a context is current; the out pointer is a valid local.
    unsafe { sys::cuCtxGetDevice(&mut dev) }.result().ok()?;
    // CUdevice is a handle, not documented to equal the ordinal: look it up.
    let n = CudaContext::device_count().unwrap_or(0).max(0) as usize;
    (0..n).find(|&i| result::device::get(i as i32).is_ok_and(|d| d == dev))
}

/// A pointer attribute of `p`, read into `v`; `None` without a driver or when the driver does
/// not know `p`.
///
/// # Safety
/// `T` is the attribute's type (the driver writes that many bytes into `v`), or wider and
/// zeroed where the driver's width is not documented.
unsafe fn attribute<T: Copy>(p: u64, attr: sys::CUpointer_attribute, mut v: T) -> Option<T> {
    if !present() {
        return None;
    }
    // SAFETY: a pure query writing one value of the attribute's type into `v` (the caller's
    // contract).
    let r = unsafe { sys::cuPointerGetAttribute((&mut v as *mut T).cast(), attr, p) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

/// The memory type of `p` (a `CUmemorytype` value); `None` when the driver does not know `p`.
/// Pointer queries need a current context.
pub fn memory_type(p: u64) -> Option<u32> {
    // SAFETY: the attribute is an unsigned int.
    unsafe { attribute(p, Attr::CU_POINTER_ATTRIBUTE_MEMORY_TYPE, 0u32) }
}

/// Whether a [`memory_type`] is device memory (plain or managed).
pub fn is_device(memory_type: u32) -> bool {
    memory_type == sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32
        || memory_type == sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED as u32
}

/// The ordinal of the device `p` belongs to, as the driver reports it (`-1` is possible for
/// memory of no device); `None` when the driver does not know `p`.
pub fn device_ordinal(p: u64) -> Option<i32> {
    // SAFETY: the attribute is an int.
    unsafe { attribute(p, Attr::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, -1i32) }
}

/// Whether `p` lies in a `cuMemAlloc` allocation (suitable for legacy CUDA IPC): one driver
/// range per allocation, never continued by the next one.
pub fn is_legacy_allocation(p: u64) -> bool {
    // SAFETY: a boolean; read into a zeroed wider value, whatever width the driver writes.
    unsafe {
        attribute(
            p,
            Attr::CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
            0u64,
        )
    }
    .is_some_and(|v| v != 0)
}

/// Whether `p` lies in address space backed by memory (reserved but unmapped address space is
/// known to the driver too).
pub fn is_backed(p: u64) -> bool {
    // SAFETY: a boolean; read into a zeroed wider value, whatever width the driver writes.
    unsafe { attribute(p, Attr::CU_POINTER_ATTRIBUTE_MAPPED, 0u64) }.is_some_and(|v| v != 0)
}

/// The driver range holding `p` (the allocation, or host registration, it belongs to): its
/// start and size; `None` when the driver does not know `p`.
pub fn range(p: u64) -> Option<(u64, usize)> {
    // SAFETY: a device pointer and a size_t.
    unsafe {
        let start = attribute(p, Attr::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, 0u64)?;
        let size = attribute(p, Attr::CU_POINTER_ATTRIBUTE_RANGE_SIZE, 0usize)?;
        Some((start, size))
    }
}

/// The mapping holding `p` (one `cuMemMap` piece, or a memory pool's): its base and size;
/// `None` when the driver reports none.
pub fn mapping(p: u64) -> Option<(u64, usize)> {
    // SAFETY: a device pointer and a size_t.
    unsafe {
        let base = attribute(p, Attr::CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR, 0u64)?;
        let size = attribute(p, Attr::CU_POINTER_ATTRIBUTE_MAPPING_SIZE, 0usize)?;
        Some((base, size))
    }
}

/// The host address of mapped host memory the device knows by `p`; `None` when the driver has
/// no host alias for it.
pub fn host_pointer(p: u64) -> Option<*mut c_void> {
    // SAFETY: the attribute is a pointer.
    unsafe {
        attribute(
            p,
            Attr::CU_POINTER_ATTRIBUTE_HOST_POINTER,
            std::ptr::null_mut::<c_void>(),
        )
    }
    .filter(|h| !h.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver every answer is "none" and nothing panics; with one, the probe and the
    /// presence bit agree and a guard leaves the thread's context as it found it.
    #[test]
    fn the_probe_and_queries_answer_without_panicking() {
        assert_eq!(present(), gpu_available().is_ok());
        assert_eq!(gpu_available(), gpu_available(), "the answer is kept");
        let before = current_context().expect("the current context can be asked");
        {
            let _guard = CtxGuard::save();
        }
        assert_eq!(current_context().unwrap(), before);
        let host = [0u8; 8];
        let p = host.as_ptr() as u64;
        if !present() {
            assert!(before.is_null());
            assert_eq!(current_ordinal(), None);
            assert_eq!(memory_type(p), None);
            assert_eq!(device_ordinal(p), None);
            assert!(!is_legacy_allocation(p) && !is_backed(p));
            assert_eq!(range(p), None);
            assert_eq!(mapping(p), None);
            assert_eq!(host_pointer(p), None);
            let e = primary_context(0).unwrap_err();
            assert!(matches!(e, Error::NoDriver(_)), "{e}");
            assert!(e.to_string().contains("no CUDA"), "{e}");
            assert!(matches!(retain_primary(0), Err(Error::NoDriver(_))));
            assert!(matches!(with_primary(0, |_| ()), Err(Error::NoDriver(_))));
            return;
        }
        // Ordinary host memory is not device memory.
        assert!(!memory_type(p).is_some_and(is_device));
    }

    #[test]
    fn device_memory_types() {
        assert!(is_device(sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32));
        assert!(is_device(sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED as u32));
        assert!(!is_device(sys::CUmemorytype::CU_MEMORYTYPE_HOST as u32));
        assert!(!is_device(sys::CUmemorytype::CU_MEMORYTYPE_ARRAY as u32));
    }

    /// A guard restores the context it saved, even when another one was made current in
    /// between; with a GPU, `with_primary` runs with the device's context and puts the
    /// caller's (none) back, and binds nothing when that context is already current.
    #[test]
    fn contexts_are_put_back() {
        if !present() {
            eprintln!("SKIP: {}", gpu_available().unwrap_err());
            return;
        }
        std::thread::spawn(|| {
            assert!(current_context().unwrap().is_null());
            let c = primary_context(0).unwrap();
            assert!(
                current_context().unwrap().is_null(),
                "retaining binds nothing"
            );
            let inside = with_primary(0, |c| (current_context().unwrap(), c.cu_ctx())).unwrap();
            assert_eq!(inside.0, inside.1);
            assert!(current_context().unwrap().is_null());
            {
                let _g = CtxGuard::bind(&c).unwrap();
                assert_eq!(current_context().unwrap(), c.cu_ctx());
                assert_eq!(current_ordinal(), Some(0));
                assert_eq!(
                    with_context(&c, |_| current_context().unwrap()).unwrap(),
                    c.cu_ctx()
                );
                assert_eq!(current_context().unwrap(), c.cu_ctx());
            }
            assert!(current_context().unwrap().is_null());
            assert_eq!(current_ordinal(), None);
        })
        .join()
        .unwrap();
    }
}
