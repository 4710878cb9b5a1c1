//! Device memory and the plugin's own host-to-device copies.

use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use tcpx_kernels::mem::{DeviceBuffer, MappedHostBuffer};

use super::pinned::pinned;
use super::{cuda_err, driver_err, with_ctx, with_this_ctx};
use crate::error::Result;

/// Device memory of one GPU (`cuMemAlloc`, through the primary context), freed on drop with
/// the dropping thread's context put back.
pub(crate) struct DeviceMem(DeviceBuffer);

impl DeviceMem {
    /// `len` bytes (not zeroed) on device `ordinal`.
    pub(crate) fn new(ordinal: usize, len: usize) -> Result<Self> {
        with_ctx(ordinal, |c| {
            DeviceBuffer::new(c, len).map(DeviceMem).map_err(driver_err)
        })
    }

    /// Its device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.0.ptr()
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
    scratch: MappedHostBuffer,
    len: usize,
}

// SAFETY: owned by one helper thread; see DeviceWriter and MappedHostBuffer.
unsafe impl Send for Landing {}

impl Landing {
    /// `len` bytes of scratch and a writer, for device `ordinal`.
    pub(crate) fn new(ordinal: usize, len: usize) -> Result<Self> {
        let writer = DeviceWriter::new(ordinal)?;
        let scratch = with_ctx(ordinal, |c| pinned(c, len))?;
        Ok(Landing {
            writer,
            scratch,
            len,
        })
    }

    /// The scratch and the writer that copies out of it.
    pub(crate) fn parts(&mut self) -> (&mut [u8], &DeviceWriter) {
        // SAFETY: `len` pinned bytes owned by this value, borrowed mutably with it.
        let s = unsafe { core::slice::from_raw_parts_mut(self.scratch.host_ptr(), self.len) };
        (s, &self.writer)
    }

    /// The device this lands on.
    pub(crate) fn ordinal(&self) -> usize {
        self.writer.ctx.ordinal()
    }
}
