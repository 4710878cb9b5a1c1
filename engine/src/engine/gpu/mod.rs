//! The engine's CUDA side: a context and stream per session, one event per window slot, and
//! the unpack launches that move TCPX bounce fragments into device memory.
//!
//! Created at setup (the first device-memory registration); the hot path only launches,
//! records and queries — no allocation, no blocking.
//!
//! The driver primitives (presence probe, [`CtxGuard`], primary-context retain, the calling
//! thread's device, pointer attributes) are the shared CUDA layer's, `tcpx_kernels::driver`;
//! this module keeps the engine's policy over them. Its contexts are retained per object
//! (binding, GPU, copier: `driver::retain_primary`) and released with it, not kept in the
//! process-wide table tcpxsock uses: [`Gpu`] and [`Copier`] turn event tracking off on their
//! own `CudaContext`, which must not reach tcpxsock's.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaEvent, CudaStream};
use tcpx_core::unpack::{LoadMeta, NetUnpackMeta, UnpackDevHandle, ENTRIES_PER_SLOT, PAGE_SIZE};
use tcpx_kernels::driver::{
    self, device_ordinal, is_backed, is_device, is_legacy_allocation, memory_type,
};
use tcpx_kernels::{Kernels, UnpackJob, UnpackList, MAX_LIST_ENTRIES};

use super::registry::Memory;
use crate::error::{Error, Result};
use tcpx_core::ring::TCPX_REQUESTS;

/// Where a recv comm's plugin publishes fragments (from its UNPACK device handle).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackSource {
    /// Device address of the table (what the kernel reads).
    pub meta: *const NetUnpackMeta,
    /// Host address of the same table (what the engine reads `cnt` from). Equal to `meta`
    /// under unified addressing; resolved through the driver once a GPU is open.
    pub meta_host: *const NetUnpackMeta,
    pub bounce: u64,
    /// Bytes from `bounce` to the end of the allocation holding it, as the driver knows it
    /// (resolved once a GPU is open); `None` when the driver does not know the address, and
    /// fragment sources are then not bounded.
    pub bounce_len: Option<u64>,
}

impl UnpackSource {
    /// Reads the UNPACK handle a recv comm's device handle points at. TCPX keeps the 24-byte
    /// handle in device memory (a host read would fault) and its bounce pages are GPU memory;
    /// tcpxsock keeps both in host memory mapped into the device. With `gpu` (the session's
    /// GPU, made current for the driver's answers) a device handle is read with a
    /// device-to-host copy, the table's host address is asked from the driver and the bounce
    /// region is measured; without a driver the handle can only be host memory.
    ///
    /// # Safety
    /// `handle` is NULL or points at a live `UnpackDevHandle` owned by the comm.
    pub unsafe fn resolve(
        handle: *const UnpackDevHandle,
        gpu: Option<&GpuBinding>,
    ) -> Result<Option<UnpackSource>> {
        if handle.is_null() {
            return Ok(None);
        }
        let Some(gpu) = gpu else {
            // SAFETY: per the caller's contract; without a driver no device memory exists.
            let h = unsafe { *handle };
            return Ok((!h.meta.is_null()).then_some(UnpackSource {
                meta: h.meta,
                meta_host: h.meta,
                bounce: h.bounce_buf as u64,
                bounce_len: None,
            }));
        };
        let _current = gpu.enter()?;
        let h = if memory_type(handle as u64).is_some_and(is_device) {
            let mut h = std::mem::MaybeUninit::<UnpackDevHandle>::uninit();
            // SAFETY: a synchronous copy of the handle's 24 bytes from device memory the
            // comm owns into a local of the same size.
            unsafe {
                sys::cuMemcpyDtoH_v2(
                    h.as_mut_ptr().cast(),
                    handle as u64,
                    std::mem::size_of::<UnpackDevHandle>(),
                )
                .result()
                .map_err(cuda("cuMemcpyDtoH (UNPACK handle)"))?;
                h.assume_init()
            }
        } else {
            // SAFETY: per the caller's contract; the driver says it is not device memory.
            unsafe { *handle }
        };
        if h.meta.is_null() {
            return Ok(None);
        }
        let bounce = h.bounce_buf as u64;
        let bounce_len = mapped_len(bounce);
        if bounce_len.is_none() {
            crate::log_warn!(
                "engine",
                "the driver does not know the plugin's bounce region {bounce:#x}: fragment \
                 sources are not bounded"
            );
        }
        Ok(Some(UnpackSource {
            meta: h.meta,
            meta_host: host_alias(h.meta),
            bounce,
            bounce_len,
        }))
    }

    /// Reads a host-memory handle (no driver involved), for tests.
    ///
    /// # Safety
    /// As for [`UnpackSource::resolve`].
    #[cfg(test)]
    unsafe fn from_host_handle(handle: *const UnpackDevHandle) -> Option<UnpackSource> {
        // SAFETY: `resolve`'s contract is this function's, which the caller upholds; with
        // `None` the handle is read directly, as the host memory this function is for.
        unsafe { UnpackSource::resolve(handle, None) }
            .ok()
            .flatten()
    }

    /// Checks that the plugin published no fragment for the host-memory receive in `slot`:
    /// TCPX receives host buffers in place (`cnt = 0`); fragments would mean the bytes sit in
    /// bounce pages that nothing copies out, and the buffer was never written.
    pub fn check_host_receive(&self, slot: usize) -> Result<()> {
        match self.count(slot)? {
            0 => Ok(()),
            n => Err(Error::Protocol(format!(
                "plugin published {n} fragments for a host-memory receive (slot {slot}): its \
                 bytes are in bounce pages, not in the buffer (tcpxsock does this only with its \
                 TCPX_SOCK_HOST_BOUNCE=1 test knob)"
            ))),
        }
    }

    /// The published fragment count of `slot`, checked against the table's capacity.
    fn count(&self, slot: usize) -> Result<usize> {
        // SAFETY: the table stays mapped while the recv comm lives (the comm outlives the
        // chunks in its window); the plugin published `cnt[slot]` before `test` said done.
        let count = unsafe { (*self.meta_host).cnt[slot] };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if count > ENTRIES_PER_SLOT as u64 {
            return Err(Error::Protocol(format!(
                "plugin published {count} fragments in slot {slot} (max {ENTRIES_PER_SLOT})"
            )));
        }
        Ok(count as usize)
    }

    /// The published entries of `slot`, as the table holds them now.
    fn entries(&self, slot: usize, count: usize) -> &[LoadMeta] {
        // SAFETY: as in `count`.
        let meta = unsafe { &*self.meta_host };
        &meta.mem[slot][..count]
    }

    /// The published fragment count of `slot`, checked so the kernel never writes outside
    /// the chunk's `len` bytes at its destination, whatever the plugin wrote.
    pub fn checked_count(&self, slot: usize, len: u32) -> Result<u32> {
        let count = self.count(slot)?;
        self.check(self.entries(slot, count), slot, len)?;
        Ok(count as u32)
    }

    /// Every fragment is at most a page, lies inside the chunk's `len` bytes at its
    /// destination, and (when its size is known) reads inside the bounce allocation.
    fn check(&self, entries: &[LoadMeta], slot: usize, len: u32) -> Result<()> {
        for e in entries {
            let end = e.dst_off.checked_add(u64::from(e.len));
            if e.len as usize > PAGE_SIZE || end.is_none_or(|end| end > u64::from(len)) {
                return Err(Error::Protocol(format!(
                    "plugin fragment {e:?} in slot {slot} falls outside the {len}-byte chunk"
                )));
            }
            let src_end = u64::from(e.src_off) + u64::from(e.len);
            if let Some(bounce) = self.bounce_len.filter(|&b| src_end > b) {
                return Err(Error::Protocol(format!(
                    "plugin fragment {e:?} in slot {slot} reads past the {bounce}-byte bounce \
                     region"
                )));
            }
        }
        Ok(())
    }
}

// SAFETY: the pointers name plugin-owned memory that lives as long as the recv comm, which
// moves with the session.
unsafe impl Send for UnpackSource {}

/// The calling thread's current CUDA context, put back when dropped (the shared driver
/// layer's guard). The engine's and the copiers' driver calls run on application threads
/// (NIXL's `postXfer` and `checkXfer` among them), whose current context — their CUDA runtime
/// device — must not change under them.
pub(crate) use tcpx_kernels::driver::CtxGuard;

/// The CUDA device the calling thread would report with `cudaGetDevice`: the device of its
/// current context, else device 0 where a driver with devices exists (the runtime's default);
/// `None` without a driver or device.
pub fn current_device() -> Option<i32> {
    if !driver::present() {
        return None;
    }
    if let Some(d) = driver::current_ordinal() {
        return Some(d as i32);
    }
    (CudaContext::device_count().unwrap_or(0) > 0).then_some(0)
}

/// A session's GPU, known before its handshake: TCPX binds the listen comm (flow steering),
/// the recv comm (its unpack queue, at the first `accept` call), the send comm and every CUDA
/// registration to the device current on the calling thread, so the session makes its own
/// device current around those calls and puts the caller's context back after.
pub struct GpuBinding {
    device: i32,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for GpuBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBinding(GPU {})", self.device)
    }
}

impl GpuBinding {
    /// Retains `device`'s primary context; fails by name without a driver or that device.
    pub fn open(device: i32) -> Result<GpuBinding> {
        tcpx_kernels::gpu_available().map_err(|why| {
            Error::Config(format!(
                "GPU {device} named for the session (TCPX_GPU / NIXL parameter gpu): {why}"
            ))
        })?;
        let n = CudaContext::device_count().unwrap_or(0);
        if device < 0 || device >= n {
            return Err(Error::Config(format!(
                "GPU {device} named for the session (TCPX_GPU / NIXL parameter gpu), but this \
                 machine has {n} GPU(s)"
            )));
        }
        let ctx = driver::retain_primary(device as usize).map_err(driver_err("CUDA context"))?;
        Ok(GpuBinding { device, ctx })
    }

    /// The device ordinal.
    pub fn device(&self) -> i32 {
        self.device
    }

    /// GPU `device`'s PCI bus id as sysfs names it (`0000:04:00.0`, lower case); `None`
    /// without a driver or that device.
    pub fn pci_bus_id(device: i32) -> Option<String> {
        tcpx_kernels::gpu_available().ok()?;
        let mut buf = [0 as std::ffi::c_char; 32];
        // SAFETY: the driver writes a NUL-terminated id of at most `len` bytes into `buf`.
        let r = unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, device) };
        if r != sys::CUresult::CUDA_SUCCESS {
            return None;
        }
        // SAFETY: NUL-terminated by the driver (the buffer is larger than any id).
        let id = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
        Some(id.to_string_lossy().to_ascii_lowercase())
    }

    /// Makes the device current on the calling thread until the guard drops.
    pub(crate) fn enter(&self) -> Result<CtxGuard> {
        CtxGuard::bind(&self.ctx).map_err(driver_err("cuCtxSetCurrent"))
    }
}

/// The end of the piece of memory holding `a`: for host memory and `cuMemAlloc` allocations,
/// the end of their driver range; for other device memory (`cuMemMap` pieces, memory pools)
/// the end of the mapping holding it, `a` itself when nothing is mapped there (reserved
/// address space is known to the driver too), or the driver range's end where it reports no
/// mapping.
fn piece_end(a: u64) -> Option<u64> {
    let holding = |(base, size): (u64, usize)| {
        let end = base.checked_add(size as u64)?;
        (base <= a && a < end).then_some(end)
    };
    let range = || driver::range(a).and_then(holding);
    if !memory_type(a).is_some_and(is_device) || is_legacy_allocation(a) {
        return range();
    }
    if !is_backed(a) {
        return Some(a);
    }
    driver::mapping(a).and_then(holding).or_else(range)
}

/// Where the memory holding `p` ends: the end of its piece ([`piece_end`]), continued through
/// pieces that start exactly where the previous one ends while `same` accepts both sides of the
/// seam — device memory mapped in pieces back to back, as `cuMemMap`-based allocators
/// (PyTorch's expandable segments among them) make it. Walked no further than `until`; `None`
/// when the driver does not know `p`.
fn mapped_end(p: u64, until: u64, same: impl Fn(u64) -> bool) -> Option<u64> {
    let mut end = piece_end(p)?;
    while end > p && end < until && same(end - 1) && same(end) {
        match piece_end(end) {
            Some(next) if next > end => end = next,
            _ => break,
        }
    }
    Some(end)
}

/// Checks a registration against what the CUDA driver knows of `[ptr, ptr + len)`, so a wrong
/// kind, device or length is refused before any copy or kernel could touch memory outside it
/// (a kernel writing where it should not kills the whole CUDA context): `Cuda { device }` must
/// be device (or managed) memory of GPU `device`, mapped for the whole length; `Host` must not
/// be device memory. Without a CUDA driver only host memory passes. A host registration is
/// checked only when the calling thread has a current context (where device pointers are
/// used, one is; opening one just to look would cost a host-only user a GPU context).
/// The caller's current context is left as it was.
pub fn check_registration(ptr: u64, len: u64, memory: Memory) -> Result<()> {
    let range = || format!("[{ptr:#x}, +{len})");
    if let Err(why) = tcpx_kernels::gpu_available() {
        return match memory {
            Memory::Host => Ok(()),
            Memory::Cuda { device } => Err(Error::BadMemory(format!(
                "{} registered as memory of GPU {device}: {why}",
                range()
            ))),
        };
    }
    let _restore = CtxGuard::save();
    match memory {
        Memory::Host => {
            if !driver::current_context().is_ok_and(|c| !c.is_null()) {
                return Ok(());
            }
            if memory_type(ptr).is_some_and(is_device) {
                let on = device_ordinal(ptr).map_or(String::new(), |d| format!(" of GPU {d}"));
                return Err(Error::BadMemory(format!(
                    "{} registered as host memory is device memory{on}",
                    range()
                )));
            }
            Ok(())
        }
        Memory::Cuda { device } => {
            let n = CudaContext::device_count().unwrap_or(0);
            if device < 0 || device >= n {
                return Err(Error::BadMemory(format!(
                    "{} registered as memory of GPU {device}, but this machine has {n} GPU(s)",
                    range()
                )));
            }
            // Queries need a context; the caller's usually is the device's primary one.
            let ctx =
                driver::retain_primary(device as usize).map_err(driver_err("CUDA context"))?;
            ctx.bind_to_thread().map_err(cuda("cuCtxSetCurrent"))?;
            match memory_type(ptr) {
                Some(t) if is_device(t) => {}
                Some(_) => {
                    return Err(Error::BadMemory(format!(
                        "{} registered as memory of GPU {device} is host memory",
                        range()
                    )))
                }
                None => {
                    return Err(Error::BadMemory(format!(
                        "{} registered as memory of GPU {device} is not memory the CUDA driver \
                         knows",
                        range()
                    )))
                }
            }
            if let Some(d) = device_ordinal(ptr).filter(|&d| d != device) {
                return Err(Error::BadMemory(format!(
                    "{} registered as memory of GPU {device} is memory of GPU {d}",
                    range()
                )));
            }
            let end = ptr.checked_add(len).ok_or_else(|| {
                Error::BadMemory(format!("{} wraps around the address space", range()))
            })?;
            // Pieces of one mapping continue each other; separate cuMemAlloc allocations,
            // even adjacent ones, do not.
            let ours = |a: u64| {
                memory_type(a).is_some_and(is_device)
                    && device_ordinal(a) == Some(device)
                    && !is_legacy_allocation(a)
                    && is_backed(a)
            };
            if let Some(mapped) = mapped_end(ptr, end, ours).filter(|&m| end > m) {
                return Err(Error::BadMemory(format!(
                    "{} runs past the end of the device memory mapped there (it ends at \
                     {mapped:#x}, {} bytes short)",
                    range(),
                    end - mapped
                )));
            }
            Ok(())
        }
    }
}

/// The host address of mapped host memory known to the device by `dev`; `dev` itself when
/// the driver has no host alias for it. A context must be current.
fn host_alias(dev: *const NetUnpackMeta) -> *const NetUnpackMeta {
    driver::host_pointer(dev as u64).map_or(dev, |host| host.cast_const().cast())
}

/// Bytes from device address `p` to the end of the memory mapped there (device memory,
/// through pieces mapped back to back; or host memory mapped into the device); `None` when
/// the driver does not know `p`. A context must be current.
fn mapped_len(p: u64) -> Option<u64> {
    // The furthest a fragment can read: a 32-bit offset plus a page.
    let until = p.saturating_add(u64::from(u32::MAX) + PAGE_SIZE as u64);
    // Device memory mapped in pieces continues; host memory and cuMemAlloc'd memory end with
    // their range.
    let piece =
        |a: u64| memory_type(a).is_some_and(is_device) && !is_legacy_allocation(a) && is_backed(a);
    let end = mapped_end(p, until, piece)?;
    end.checked_sub(p)
}

pub(crate) struct Gpu {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// `events[channel][seq % TCPX_REQUESTS]`: at most TCPX_REQUESTS chunks are in a window.
    events: Vec<Vec<CudaEvent>>,
    /// Queued unpacks whose entries were copied out of the table and checked: they travel in
    /// the launch parameters.
    list: Box<UnpackList>,
    /// Queued unpacks with more fragments than a list holds: the kernel reads their entries
    /// from the table (capacity: every window slot of every channel, so pushing never
    /// allocates).
    jobs: Vec<UnpackJob>,
}

fn cuda(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

/// An error of the shared driver layer as ours, under `what` (a driver error's text as
/// [`cuda`] writes it).
fn driver_err(what: &'static str) -> impl Fn(tcpx_kernels::Error) -> Error {
    move |e| match e {
        tcpx_kernels::Error::Cuda { source, .. } => cuda(what)(source),
        e => Error::Gpu(format!("{what}: {e}")),
    }
}

impl Gpu {
    /// Context, stream, kernels and events for `channels` channels on `device`.
    pub fn open(device: i32, channels: usize) -> Result<Gpu> {
        tcpx_kernels::gpu_available().map_err(Error::Gpu)?;
        let _restore = CtxGuard::save();
        let ctx = driver::retain_primary(device as usize).map_err(driver_err("CUDA context"))?;
        // SAFETY: the engine orders its own work with explicit events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda("CUDA stream"))?;
        let kernels = Kernels::load(&ctx).map_err(|e| Error::Gpu(e.to_string()))?;
        let events = (0..channels)
            .map(|_| {
                (0..TCPX_REQUESTS)
                    .map(|_| ctx.new_event(None).map_err(cuda("CUDA event")))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpu {
            stream,
            kernels,
            events,
            list: UnpackList::new_boxed(),
            jobs: Vec::with_capacity(channels * TCPX_REQUESTS),
        })
    }

    /// Bytes from device address `p` to the end of the memory mapped there ([`mapped_len`]).
    #[cfg(test)]
    fn range_len(&self, p: u64) -> Option<u64> {
        self.stream.context().bind_to_thread().ok()?;
        mapped_len(p)
    }

    /// Queues the unpack of the `len`-byte chunk that `src` published in `slot` into device
    /// address `dst`. Its entries are copied out of the table and checked there, so the kernel
    /// applies exactly what was checked, whatever the table holds by then; a chunk with more
    /// fragments than a list holds is queued for the table-reading kernel (its count and
    /// entries checked in the table). A full list is launched first.
    pub fn queue(&mut self, src: &UnpackSource, slot: usize, len: u32, dst: u64) -> Result<()> {
        let count = src.count(slot)?;
        if count > MAX_LIST_ENTRIES {
            let count = src.checked_count(slot, len)?;
            self.jobs.push(
                UnpackJob::new(src.meta as u64, src.bounce, slot as u32, dst).with_count(count),
            );
            return Ok(());
        }
        if !self.list.fits(count) {
            self.launch()?;
        }
        let entries = self
            .list
            .push(src.bounce, dst, src.entries(slot, count))
            .ok_or(Error::Invalid("unpack list full after a launch"))?;
        if let Err(e) = src.check(entries, slot, len) {
            self.list.pop();
            return Err(e);
        }
        Ok(())
    }

    /// Whether unpacks are queued.
    pub fn queued(&self) -> bool {
        !self.list.is_empty() || !self.jobs.is_empty()
    }

    /// Enqueues every queued unpack: the list in one launch, the table-reading jobs in
    /// batches (each job with its own table, bounce region, slot, count and destination).
    pub fn launch(&mut self) -> Result<()> {
        // SAFETY: every list entry was checked after it was copied (`queue`), every job's
        // count by `checked_count`: fragments stay inside their chunk at its destination in
        // registered device memory; destinations of distinct chunks do not overlap; bounce
        // pages stay untouched until irecvConsumed, which follows the event recorded after
        // these launches.
        let r = unsafe {
            self.kernels
                .launch_unpack_list(&self.stream, &self.list)
                .and_then(|()| self.kernels.launch_unpack_batch(&self.stream, &self.jobs))
        };
        self.list.clear();
        self.jobs.clear();
        r.map_err(|e| Error::Gpu(e.to_string()))
    }

    /// Drops every queued unpack (the session broke).
    pub fn discard(&mut self) {
        self.list.clear();
        self.jobs.clear();
    }

    /// Records event `ev` of `channel` after everything enqueued so far.
    pub fn record(&self, channel: usize, ev: u8) -> Result<()> {
        self.events[channel][usize::from(ev)]
            .record(&self.stream)
            .map_err(cuda("cuEventRecord"))
    }

    /// Whether event `ev` of `channel` has completed. Never blocks.
    pub fn done(&self, channel: usize, ev: u8) -> Result<bool> {
        self.events[channel][usize::from(ev)]
            .try_is_complete()
            .map_err(cuda("cuEventQuery"))
    }
}

/// Small synchronous copies between host memory and one device's memory, for transfers too
/// short to be worth a window of chunks and for copies within one agent (the NIXL backend's
/// inline READs and WRITEs and its transfers to itself). They run on a non-blocking stream of
/// their own, so they neither wait for nor hold up the application's work on the legacy
/// default stream; each returns once its bytes have arrived.
pub struct Copier {
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier").finish_non_exhaustive()
    }
}

impl Copier {
    /// A copier for `device` (its primary context). Fails without a driver or device.
    pub fn open(device: u32) -> Result<Copier> {
        tcpx_kernels::gpu_available().map_err(Error::Gpu)?;
        let _restore = CtxGuard::save();
        let ctx = driver::retain_primary(device as usize).map_err(driver_err("CUDA context"))?;
        // SAFETY: the copier orders its own work: every copy is waited for before it returns.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda("CUDA stream"))?;
        Ok(Copier { stream })
    }

    /// Copies `dst.len()` bytes from device address `src` into `dst`.
    ///
    /// # Safety
    /// `src..src + dst.len()` is memory this device can read, allocated for the whole call.
    pub unsafe fn to_host(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        // SAFETY: per the contract; `dst` is ours and cannot overlap device memory.
        unsafe { self.copy(dst.as_mut_ptr() as u64, src, dst.len()) }
    }

    /// Copies `src` to device address `dst`.
    ///
    /// # Safety
    /// `dst..dst + src.len()` is memory of this device that nothing else uses during the call.
    pub unsafe fn to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        // SAFETY: per the contract; `src` is ours and cannot overlap device memory.
        unsafe { self.copy(dst, src.as_ptr() as u64, src.len()) }
    }

    /// Copies `len` bytes from `src` to `dst`, either of them host memory (pinned or not) or
    /// device memory, possibly of another device: the driver tells them apart by address
    /// (unified addressing).
    ///
    /// # Safety
    /// Both ranges are allocated for the whole call and do not overlap; nothing else writes
    /// `dst` meanwhile.
    pub unsafe fn copy(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let _restore = CtxGuard::bind(self.stream.context()).map_err(driver_err("CUDA context"))?;
        // SAFETY: per the contract; the copy is complete when the stream is synchronised.
        unsafe {
            cudarc::driver::sys::cuMemcpyAsync(dst, src, len, self.stream.cu_stream())
                .result()
                .map_err(cuda("cuMemcpyAsync"))?;
            cudarc::driver::result::stream::synchronize(self.stream.cu_stream())
                .map_err(cuda("cuStreamSynchronize"))
        }
    }
}

#[cfg(test)]
mod tests;
