//! Owned CUDA buffers for the unpack path: device memory and pinned, device-mapped host memory.
//!
//! TCPX keeps its `netUnpackMeta` table (and our TCP emulation may keep its bounce pages) in
//! pinned host memory mapped into the GPU, not write-combined, so the CPU can read it cheaply.
//! Both types are set-up objects: allocate once, reuse. Making one, or using it, binds its
//! context to the calling thread; dropping one puts the dropping thread's context back.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{result, CudaContext};

use crate::driver::with_context;
use crate::{Context, Error, Result};

fn check_range(what: &'static str, offset: usize, len: usize, size: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds {
            what,
            offset,
            len,
            size,
        }),
    }
}

/// Device memory (`cuMemAlloc`), freed on drop.
#[derive(Debug)]
pub struct DeviceBuffer {
    ctx: Arc<CudaContext>,
    ptr: CUdeviceptr,
    len: usize,
}

// SAFETY: the buffer owns a device allocation; nothing about it is tied to the creating thread
// (every call binds the context first).
unsafe impl Send for DeviceBuffer {}
// SAFETY: shared access reads the address and length, or copies out of the allocation with the
// driver (thread-safe) into the caller's memory; writes take `&mut self`.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `len` bytes (at least one) of uninitialised device memory.
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        // SAFETY: plain allocation in the bound context; the contents stay uninitialised bytes,
        // which is fine for u8 storage.
        let ptr = unsafe { result::malloc_sync(len.max(1)) }.context("cuMemAlloc")?;
        Ok(DeviceBuffer {
            ctx: ctx.clone(),
            ptr,
            len,
        })
    }

    /// Device address of the first byte.
    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets every byte to `byte`; complete on return.
    pub fn fill(&mut self, byte: u8) -> Result<()> {
        self.ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        // SAFETY: the range is exactly this allocation.
        unsafe { result::memset_d8_sync(self.ptr, byte, self.len) }.context("cuMemsetD8")?;
        // cuMemsetD8 may return before the device is written; work on non-blocking streams is
        // not ordered after it, so finish it here.
        self.ctx
            .synchronize()
            .context("cuCtxSynchronize after cuMemsetD8")
    }

    /// Copies `src` to `offset`; complete on return.
    pub fn write(&mut self, offset: usize, src: &[u8]) -> Result<()> {
        check_range("DeviceBuffer::write", offset, src.len(), self.len)?;
        self.ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        // SAFETY: the destination range was checked against this allocation.
        unsafe { result::memcpy_htod_sync(self.ptr + offset as u64, src) }
            .context("cuMemcpyHtoD")?;
        // From pageable memory cuMemcpyHtoD may return before the DMA lands; work on
        // non-blocking streams is not ordered after it, so finish it here.
        self.ctx
            .synchronize()
            .context("cuCtxSynchronize after cuMemcpyHtoD")
    }

    /// Copies bytes from `offset` into `dst`; complete on return. Work queued on other streams is
    /// not waited for: synchronize them first.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        check_range("DeviceBuffer::read", offset, dst.len(), self.len)?;
        self.ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        // SAFETY: the source range was checked against this allocation.
        unsafe { result::memcpy_dtoh_sync(dst, self.ptr + offset as u64) }.context("cuMemcpyDtoH")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks the allocation. The
        // dropping thread's context is put back: it may be an application's thread.
        let _ = with_context(&self.ctx, |_| {
            // SAFETY: `ptr` came from cuMemAlloc in this context and is freed once.
            let _ = unsafe { result::free_sync(self.ptr) };
        });
    }
}

/// Pinned host memory mapped into the device (`cuMemHostAlloc(PORTABLE | DEVICEMAP)`, not
/// write-combined), zeroed, freed on drop.
#[derive(Debug)]
pub struct MappedHostBuffer {
    ctx: Arc<CudaContext>,
    host: *mut u8,
    dev: CUdeviceptr,
    len: usize,
}

// SAFETY: the buffer owns its allocation; access from the host goes through &self / &mut self.
unsafe impl Send for MappedHostBuffer {}

impl MappedHostBuffer {
    /// Allocates `len` bytes (at least one), page-aligned and zeroed.
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self> {
        ctx.bind_to_thread().context("cuCtxSetCurrent")?;
        let size = len.max(1);
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: plain allocation; the memory is zeroed below before any read.
        let host =
            unsafe { result::malloc_host(size, flags) }.context("cuMemHostAlloc")? as *mut u8;
        let mut dev: CUdeviceptr = 0;
        // SAFETY: `host` is a live DEVICEMAP allocation; the out pointer is valid.
        let mapped =
            unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0) }.result();
        if let Err(source) = mapped {
            // SAFETY: `host` came from cuMemHostAlloc and is not used after this.
            let _ = unsafe { result::free_host(host.cast::<c_void>()) };
            return Err(Error::Cuda {
                what: "cuMemHostGetDevicePointer",
                source,
            });
        }
        // SAFETY: `host` points to `size` writable bytes owned by us.
        unsafe { host.write_bytes(0, size) };
        Ok(MappedHostBuffer {
            ctx: ctx.clone(),
            host,
            dev,
            len,
        })
    }

    /// Device-visible address of the first byte.
    pub fn dev_ptr(&self) -> CUdeviceptr {
        self.dev
    }

    /// Host address of the first byte.
    pub fn host_ptr(&self) -> *mut u8 {
        self.host
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, as the host sees them. Do not hold this across a kernel that writes them.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `host` points to `len` initialised bytes owned by self for its lifetime.
        unsafe { std::slice::from_raw_parts(self.host, self.len) }
    }

    /// The bytes, mutably. Do not write while a kernel reads them.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes this the only host view.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.len) }
    }
}

impl Drop for MappedHostBuffer {
    fn drop(&mut self) {
        // As for DeviceBuffer: a failed free leaks, the dropping thread's context is put back.
        let _ = with_context(&self.ctx, |_| {
            // SAFETY: `host` came from cuMemHostAlloc and is freed once.
            let _ = unsafe { result::free_host(self.host.cast::<c_void>()) };
        });
    }
}
