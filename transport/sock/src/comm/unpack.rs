//! A recv comm's TCPX-mode memory: the meta table, the device handle and the GPU's bounce pool.

use core::ffi::c_void;
use std::sync::Arc;

use tcpx_core::unpack::{NetUnpackMeta, UnpackDevHandle};

use crate::config::Config;
use crate::cuda::{DeviceMem, DeviceWriter};
use crate::error::Result;
use crate::frag::Shape;
use crate::mem::OwnedRegion;
use crate::pool::BouncePool;

/// What the device handle's `handle` points at.
enum HandleMem {
    /// Without CUDA: host memory.
    Host(Box<UnpackDevHandle>),
    /// On a CUDA machine: device memory, as TCPX's (`cuMemAlloc`, filled by a copy).
    Device(DeviceMem),
}

/// TCPX-mode state of a recv comm.
pub(super) struct Unpack {
    pub(super) meta: OwnedRegion,
    /// The GPU's bounce pool, shared with every other recv comm of that GPU: its base is the
    /// `bounce_buf` of every one of their device handles.
    pub(super) bounce: Arc<BouncePool>,
    handle: HandleMem,
    /// Device copies made on the calling thread (the handle; inline payloads into device
    /// memory); CUDA machines.
    pub(super) writer: Option<DeviceWriter>,
    /// The comm's GPU (CUDA machines).
    pub(super) gpu: Option<usize>,
    pub(super) shape: Shape,
    /// Seeds each receive's fragment layout.
    pub(super) seed: u64,
}

impl Unpack {
    /// Meta table and device handle for a comm of GPU `gpu` (CUDA machines), and that GPU's
    /// bounce pool.
    pub(super) fn new(cfg: &Config, gpu: Option<usize>, seed: u64) -> Result<Self> {
        let meta = OwnedRegion::new(core::mem::size_of::<NetUnpackMeta>(), gpu)?;
        let writer = gpu.map(DeviceWriter::new).transpose()?;
        let bounce = BouncePool::for_gpu(cfg, gpu)?;
        let h = UnpackDevHandle {
            meta: meta.region.device.cast(),
            bounce_buf: bounce.device_base(),
            head: u64::MAX,
        };
        let handle = match (&writer, gpu) {
            (Some(w), Some(g)) => {
                let m = DeviceMem::new(g, core::mem::size_of::<UnpackDevHandle>())?;
                // SAFETY: `h` lives across the batch, which waits for the copy; `m` is ours.
                w.batch(|c| unsafe {
                    c.htod(
                        m.ptr(),
                        (&h as *const UnpackDevHandle).cast(),
                        core::mem::size_of::<UnpackDevHandle>(),
                    )
                })?;
                HandleMem::Device(m)
            }
            _ => HandleMem::Host(Box::new(h)),
        };
        Ok(Unpack {
            meta,
            bounce,
            handle,
            writer,
            gpu,
            shape: Shape {
                odd: cfg.odd_fragments,
                linear_bytes: cfg.linear_bytes,
            },
            seed,
        })
    }

    /// What the device handle's `handle` points at.
    pub(super) fn handle_ptr(&self) -> *mut c_void {
        match &self.handle {
            HandleMem::Host(b) => (&**b as *const UnpackDevHandle).cast_mut().cast(),
            HandleMem::Device(d) => d.ptr() as usize as *mut c_void,
        }
    }
}

/// Host views of a recv comm's TCPX-mode memory, for in-process tests and tools.
#[derive(Debug, Clone, Copy)]
pub struct UnpackView {
    /// The meta table (host address).
    pub meta: *const NetUnpackMeta,
    /// Base of the bounce region: its host address, or its device address when
    /// `bounce_device` (read it with a device-to-host copy).
    pub bounce: *const u8,
    /// Length of the bounce region.
    pub bounce_len: usize,
    /// The bounce region is device memory (`Config::bounce_device` on a CUDA machine).
    pub bounce_device: bool,
    /// Pages of the bounce region free when the view was taken (the region is the GPU's pool,
    /// shared by all its recv comms).
    pub bounce_pages_free: usize,
}
