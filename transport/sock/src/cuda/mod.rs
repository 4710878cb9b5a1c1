//! Optional CUDA support, decided at run time.
//!
//! The plugin must load and work on boxes without a GPU: [`present`] (the shared driver
//! layer's probe, `tcpx_kernels::driver`) says whether a driver with a device is there, cached
//! for the process, before any driver call.
//!
//! Contexts: every driver call runs with the *primary* context of a device current
//! ([`with_ctx`]); the caller's previous context is restored afterwards so an engine thread
//! that had its own context current is not disturbed. Primary contexts come from the process's
//! one table (`tcpx_kernels::driver::primary_context`), retained once per device and kept for
//! the process lifetime, so memory made through them never outlives its context. This module
//! keeps only tcpxsock's policy (which device a call means, which byte of a buffer names its
//! device) and its error mapping.

mod device;
mod lanes;
mod pinned;
mod stage;

use core::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaContext, DriverError};
use tcpx_kernels::driver;

use crate::error::{Error, Result};

pub(crate) use device::{Copies, DeviceMem, DeviceWriter, Landing};
pub use lanes::kernel_shares;
pub use pinned::CudaMappedAllocator;
pub(crate) use pinned::CUDA_ALLOCATOR;
pub use stage::exclusive_process;
pub(crate) use stage::{SendStage, Staging};
pub use tcpx_kernels::driver::present;

fn cuda_err(ctx: &'static str, e: DriverError) -> Error {
    Error::Cuda(ctx, e.0 as i32)
}

/// A `tcpx-kernels` error as ours: a driver error keeps its code under `ctx`, anything else
/// becomes an internal error named `ctx`.
fn kernels_err(ctx: &'static str, e: tcpx_kernels::Error) -> Error {
    match e {
        tcpx_kernels::Error::Cuda { source, .. } => cuda_err(ctx, source),
        _ => Error::Internal(ctx),
    }
}

/// A `tcpx-kernels` error of the shared driver layer as ours, the driver step it names kept.
fn driver_err(e: tcpx_kernels::Error) -> Error {
    match e {
        tcpx_kernels::Error::Cuda { what, source } => cuda_err(what, source),
        tcpx_kernels::Error::NoDriver(_) => Error::InvalidArgument("no CUDA driver or device"),
        _ => Error::Internal("CUDA driver"),
    }
}

/// Runs `f` with the primary context of `ordinal` current, then restores the caller's context.
pub(crate) fn with_ctx<T>(
    ordinal: usize,
    f: impl FnOnce(&Arc<CudaContext>) -> Result<T>,
) -> Result<T> {
    driver::with_primary(ordinal, f).map_err(driver_err)?
}

/// [`with_ctx`] for a context already in hand (no lookup): what a per-request call uses.
pub(crate) fn with_this_ctx<T>(
    c: &Arc<CudaContext>,
    f: impl FnOnce(&Arc<CudaContext>) -> Result<T>,
) -> Result<T> {
    driver::with_context(c, f).map_err(driver_err)?
}

/// The device a caller means when it names none: the device of the context current on the
/// calling thread (as NCCL's proxy thread has), else device 0.
pub(crate) fn home_ordinal() -> usize {
    driver::current_ordinal().unwrap_or(0)
}

/// The device ordinal owning CUDA pointer `p`, if the driver knows it as device memory.
fn pointer_ordinal(p: u64) -> Option<usize> {
    driver::device_ordinal(p).and_then(|o| usize::try_from(o).ok())
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
