//! The bounce pool of one GPU, shared by every TCPX-mode recv comm of that GPU in the process
//! (TCPX's RX pool: one per GPU, `gpu_get_rxmem`).
//!
//! NCCL's unpack keeps ONE bounce base per kernel block (`ncclShmem.devicePlugin.unpack.
//! bounce_buf`, written by every connection's `ncclNetDeviceUnpackSetup`), while each
//! connection's meta table and head are kept per group and peer. A block that unpacks from
//! several receive connections therefore applies every connection's `src_off` to whichever
//! base was set last. That is only right if every recv comm of the GPU publishes the same
//! `bounce_buf` and its `src_off` values are offsets from it, which is what this pool gives:
//! one region per GPU, 4 KiB pages handed to the comms' receives (all or nothing per receive)
//! and returned at `irecvConsumed` (or when a comm closes with receives outstanding).
//!
//! The pool is made by the first recv comm that needs it and freed with the last comm holding
//! it; a later comm makes a new one (same size unless the configuration changed). Its size is
//! `Config::bounce_bytes` (at most 4 GiB, so every `src_off` fits in 32 bits). Comms whose
//! configuration differs in what the pool is (bounce pages in device memory or mapped host
//! memory, its size, its page order, the installed allocator) get separate pools, so one
//! process only ever has one pool per GPU unless it reconfigures the plugin.

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tcpx_core::unpack::PAGE_SIZE;

use crate::config::Config;
use crate::cuda::DeviceMem;
use crate::error::Result;
use crate::mem::{self, OwnedRegion, PagePool};

/// The memory of a bounce pool.
enum BounceMem {
    /// Host memory mapped into the device (the default): written by the CPU.
    Host(OwnedRegion),
    /// Device memory of the GPU (`Config::bounce_device`): written by device copies.
    Device(DeviceMem),
}

/// What makes two pools different; comms with equal keys share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    /// The GPU (CUDA machines); `None` without CUDA, where all comms share one pool.
    gpu: Option<usize>,
    device: bool,
    bytes: usize,
    shuffle: bool,
    /// Identity of the mapped-memory allocator that made a host pool.
    alloc: usize,
}

/// A GPU's bounce region and its free pages.
pub(crate) struct BouncePool {
    mem: BounceMem,
    len: usize,
    free: Mutex<PagePool>,
}

// Pools alive in this process. Only `Weak` references: the comms own the pools.
static POOLS: Mutex<Vec<(Key, Weak<BouncePool>)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BouncePool {
    /// The pool of GPU `gpu` (CUDA machines; `None` without CUDA) for a comm configured by
    /// `cfg`: the live one, or a new one.
    pub(crate) fn for_gpu(cfg: &Config, gpu: Option<usize>) -> Result<Arc<BouncePool>> {
        let device = gpu.is_some() && cfg.bounce_device;
        let key = Key {
            gpu,
            device,
            bytes: cfg.bounce_bytes,
            shuffle: cfg.shuffle,
            alloc: if device { 0 } else { mem::allocator_id() },
        };
        // Held while a new pool is made: two comms of one GPU never make two pools.
        let mut pools = lock(&POOLS);
        pools.retain(|(_, w)| w.strong_count() > 0);
        if let Some(p) = pools
            .iter()
            .filter(|(k, _)| *k == key)
            .find_map(|(_, w)| w.upgrade())
        {
            return Ok(p);
        }
        if cfg.bounce_device && gpu.is_none() {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                crate::log_info(
                    "tcpxsock: TCPX_SOCK_BOUNCE_DEVICE ignored: no CUDA device; \
                     bounce pages are host memory",
                )
            });
        }
        let mem = match gpu {
            Some(g) if device => BounceMem::Device(DeviceMem::new(g, cfg.bounce_bytes)?),
            _ => BounceMem::Host(OwnedRegion::new(cfg.bounce_bytes, gpu)?),
        };
        // The seed only orders a shuffled pool; fixed per GPU so runs repeat.
        let seed = 0x9e37_79b9_7f4a_7c15 ^ gpu.map_or(0, |g| g as u64 + 1);
        let p = Arc::new(BouncePool {
            mem,
            len: cfg.bounce_bytes,
            free: Mutex::new(PagePool::new(
                cfg.bounce_bytes / PAGE_SIZE,
                cfg.shuffle,
                seed,
            )),
        });
        pools.push((key, Arc::downgrade(&p)));
        crate::log_info(&format!(
            "tcpxsock: bounce pool of {} MiB ({}) for {}, shared by its recv comms",
            cfg.bounce_bytes >> 20,
            if device {
                "device memory"
            } else {
                "mapped host memory"
            },
            gpu.map_or("this process".to_string(), |g| format!("GPU {g}")),
        ));
        Ok(p)
    }

    /// The base the plugin writes through: a host address, or the device address.
    pub(crate) fn base(&self) -> *mut u8 {
        match &self.mem {
            BounceMem::Host(r) => r.region.host,
            BounceMem::Device(d) => d.ptr() as usize as *mut u8,
        }
    }

    /// The base every comm of the pool publishes as `bounce_buf`.
    pub(crate) fn device_base(&self) -> *mut core::ffi::c_void {
        match &self.mem {
            BounceMem::Host(r) => r.region.device,
            BounceMem::Device(d) => d.ptr() as usize as *mut core::ffi::c_void,
        }
    }

    /// The pool is device memory.
    pub(crate) fn is_device(&self) -> bool {
        matches!(self.mem, BounceMem::Device(_))
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Fills `out` with free pages, all or nothing; false if too few are free.
    pub(crate) fn take(&self, out: &mut [u32]) -> bool {
        lock(&self.free).take(out)
    }

    /// Returns pages taken with [`BouncePool::take`]; nothing may write them any more.
    pub(crate) fn give(&self, pages: &[u32]) {
        if !pages.is_empty() {
            lock(&self.free).give(pages);
        }
    }

    /// Pages free now.
    pub(crate) fn available(&self) -> usize {
        lock(&self.free).available()
    }
}
