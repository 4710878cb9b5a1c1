//! Pinned, device-mapped host memory: the allocator for meta tables and bounce regions, and
//! the plugin's own pinned buffers (`tcpx_kernels::mem::MappedHostBuffer`).

use core::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};
use tcpx_core::unpack::PAGE_SIZE;
use tcpx_kernels::mem::MappedHostBuffer;

use super::{cuda_err, driver_err, home_ordinal, with_ctx};
use crate::error::{Error, Result};
use crate::mem::{MappedAllocator, MappedRegion};

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

/// Pinned, device-mapped host memory of `len` bytes (zeroed) in the context `c` (current on
/// the calling thread), freed on drop with the dropping thread's context put back.
pub(super) fn pinned(c: &Arc<CudaContext>, len: usize) -> Result<MappedHostBuffer> {
    MappedHostBuffer::new(c, len).map_err(driver_err)
}
