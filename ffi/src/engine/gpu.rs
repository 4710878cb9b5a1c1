//! The engine's CUDA side: a context and stream per session, one event per window slot, and
//! the unpack launches that move TCPX bounce fragments into device memory.
//!
//! Created at setup (the first device-memory registration); the hot path only launches,
//! records and queries — no allocation, no blocking.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use tcpx_core::unpack::{LoadMeta, NetUnpackMeta, UnpackDevHandle, ENTRIES_PER_SLOT, PAGE_SIZE};
use tcpx_kernels::{Kernels, UnpackJob};

use super::config::MAX_WINDOW;
use crate::error::{Error, Result};

/// Where a recv comm's plugin publishes fragments (from its UNPACK device handle).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UnpackSource {
    /// Device address of the table (what the kernel reads).
    pub meta: *const NetUnpackMeta,
    /// Host address of the same table (what the engine reads `cnt` from). Equal to `meta`
    /// under unified addressing; resolved through the driver once a GPU is open.
    pub meta_host: *const NetUnpackMeta,
    pub bounce: u64,
}

impl UnpackSource {
    /// Reads the handle an UNPACK recv comm returned from `accept`.
    ///
    /// # Safety
    /// `handle` points at a live `UnpackDevHandle` owned by the comm.
    pub unsafe fn from_handle(handle: *const UnpackDevHandle) -> Option<UnpackSource> {
        if handle.is_null() {
            return None;
        }
        // SAFETY: per the caller's contract.
        let h = unsafe { *handle };
        (!h.meta.is_null()).then_some(UnpackSource {
            meta: h.meta,
            meta_host: h.meta,
            bounce: h.bounce_buf as u64,
        })
    }

    /// The published fragment count of `slot`, checked so the kernel never writes outside
    /// the chunk's `len` bytes at its destination, whatever the plugin wrote.
    pub fn checked_count(&self, slot: usize, len: u32) -> Result<u32> {
        // SAFETY: the table stays mapped while the recv comm lives (the comm outlives the
        // chunks in its window); the plugin published `cnt[slot]` before `test` said done.
        let meta = unsafe { &*self.meta_host };
        let count = meta.cnt[slot];
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        if count > ENTRIES_PER_SLOT as u64 {
            return Err(Error::Protocol(format!(
                "plugin published {count} fragments in slot {slot} (max {ENTRIES_PER_SLOT})"
            )));
        }
        let entries: &[LoadMeta] = &meta.mem[slot][..count as usize];
        for e in entries {
            let end = e.dst_off.checked_add(u64::from(e.len));
            if e.len as usize > PAGE_SIZE || end.is_none_or(|end| end > u64::from(len)) {
                return Err(Error::Protocol(format!(
                    "plugin fragment {e:?} in slot {slot} falls outside the {len}-byte chunk"
                )));
            }
        }
        Ok(count as u32)
    }
}

// SAFETY: the pointers name plugin-owned memory that lives as long as the recv comm, which
// moves with the session.
unsafe impl Send for UnpackSource {}

pub(crate) struct Gpu {
    device: i32,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// `events[channel][seq % MAX_WINDOW]`: at most MAX_WINDOW chunks are in a window.
    events: Vec<Vec<CudaEvent>>,
}

fn cuda(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

impl Gpu {
    /// Context, stream, kernels and events for `channels` channels on `device`.
    pub fn open(device: i32, channels: usize) -> Result<Gpu> {
        tcpx_kernels::gpu_available().map_err(Error::Gpu)?;
        let ctx = CudaContext::new(device as usize).map_err(cuda("CUDA context"))?;
        // SAFETY: the engine orders its own work with explicit events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda("CUDA stream"))?;
        let kernels = Kernels::load(&ctx).map_err(|e| Error::Gpu(e.to_string()))?;
        let events = (0..channels)
            .map(|_| {
                (0..MAX_WINDOW)
                    .map(|_| ctx.new_event(None).map_err(cuda("CUDA event")))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpu {
            device,
            stream,
            kernels,
            events,
        })
    }

    pub fn device(&self) -> i32 {
        self.device
    }

    /// The host address of mapped host memory known to the device by `dev`; `dev` itself
    /// when the driver has no host alias for it (plain host memory of a CUDA-less plugin).
    pub fn host_alias(&self, dev: *const NetUnpackMeta) -> *const NetUnpackMeta {
        let mut host: *mut std::ffi::c_void = std::ptr::null_mut();
        let bound = self.stream.context().bind_to_thread().is_ok();
        // SAFETY: a pure query; `host` is a valid out-pointer of pointer size.
        let r = unsafe {
            cudarc::driver::sys::cuPointerGetAttribute(
                (&mut host as *mut *mut std::ffi::c_void).cast(),
                cudarc::driver::sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_HOST_POINTER,
                dev as u64,
            )
        };
        if bound && r == cudarc::driver::sys::CUresult::CUDA_SUCCESS && !host.is_null() {
            host.cast()
        } else {
            dev
        }
    }

    /// Enqueues every queued unpack in one launch (the kernel takes a batch of jobs, each
    /// with its own table, bounce region, slot, count and destination).
    pub fn launch_batch(&self, jobs: &[UnpackJob]) -> Result<()> {
        // SAFETY: every job's count came from `checked_count`, which bounded its fragments to
        // the chunk at its destination inside registered device memory; destinations of
        // distinct chunks do not overlap; bounce pages stay untouched until irecvConsumed,
        // which follows the event recorded after this launch.
        unsafe { self.kernels.launch_unpack_batch(&self.stream, jobs) }
            .map_err(|e| Error::Gpu(e.to_string()))
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
/// short to be worth a window of chunks (the NIXL backend's inline READs). They run on a
/// non-blocking stream of their own, so they neither wait for nor hold up the application's
/// work on the legacy default stream; each returns once its bytes have arrived.
pub struct Copier {
    device: u32,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Copier {
    /// A copier for `device` (its primary context). Fails without a driver or device.
    pub fn open(device: u32) -> Result<Copier> {
        tcpx_kernels::gpu_available().map_err(Error::Gpu)?;
        let ctx = CudaContext::new(device as usize).map_err(cuda("CUDA context"))?;
        // SAFETY: the copier orders its own work: every copy is waited for before it returns.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda("CUDA stream"))?;
        Ok(Copier { device, stream })
    }

    pub fn device(&self) -> u32 {
        self.device
    }

    /// Copies `dst.len()` bytes from device address `src` into `dst`.
    ///
    /// # Safety
    /// `src..src + dst.len()` is memory this device can read, allocated for the whole call.
    pub unsafe fn to_host(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda("CUDA context"))?;
        // SAFETY: per the contract; `dst` is borrowed until the stream is synchronised below.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream())
                .map_err(cuda("cuMemcpyDtoHAsync"))?;
            cudarc::driver::result::stream::synchronize(self.stream.cu_stream())
                .map_err(cuda("cuStreamSynchronize"))
        }
    }

    /// Copies `src` to device address `dst`.
    ///
    /// # Safety
    /// `dst..dst + src.len()` is memory of this device that nothing else uses during the call.
    pub unsafe fn to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(cuda("CUDA context"))?;
        // SAFETY: per the contract; `src` is borrowed until the stream is synchronised below.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream())
                .map_err(cuda("cuMemcpyHtoDAsync"))?;
            cudarc::driver::result::stream::synchronize(self.stream.cu_stream())
                .map_err(cuda("cuStreamSynchronize"))
        }
    }
}
