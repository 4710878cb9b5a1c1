//! tcpx-sock: `tcpxsock`, our ncclNet v7 plugin over plain TCP, with a faithful emulation
//! of the GPUDirect-TCPX receive path ("TCPX mode").
//!
//! Built as a cdylib it exports the C data symbol `ncclNetPlugin_v7`, loadable by NCCL and
//! by our engine; as an rlib the same table is called in-process (the engine's embedded
//! default). Per comm: one non-blocking control socket driven on the caller's thread
//! (request headers, payloads ≤ 64 KiB inline) and `TCPX_SOCK_NSOCKS` data sockets, each
//! served by a helper thread that moves its share of every request's 512 KiB chunks.
//!
//! The device type is UNPACK v7 when CUDA is present or [`Config::unpack`] /
//! [`Config::host_bounce`] is set, and then the plugin behaves as Google's GPUDirect-TCPX
//! plugin does ("TCPX mode"): `accept` fills the caller's device handle in place (its
//! `UnpackDevHandle` in device memory on a CUDA machine), `test` never writes sizes, `iflush`
//! is an error, NULL memory handles are refused, CUDA registrations are page-aligned and bound
//! to the current GPU. Receives into CUDA buffers (host ones too with `host_bounce`) land in
//! 4 KiB bounce pages of the GPU's pool (one per GPU, shared by its recv comms, as TCPX's RX
//! pool: every comm publishes its base), one `LoadMeta` per fragment in slot `k % 16` of a
//! `NetUnpackMeta` table; host receives land in their buffer with `cnt = 0`. Every receive
//! holds its request and slot until `irecvConsumed`, in order; 16 requests per comm, `test` on
//! the oldest only, order-only matching, `n == 1`, all with TCPX's error codes. Knobs add
//! TCPX's accept delay, devmem-like odd fragments, plugin-written linear bytes and bounce pages
//! in device memory. See README.md.

use core::ffi::{c_char, c_void};
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tcpx_core::abi::v7::Net;
use tcpx_core::abi::{log_level, Logger, LOG_SUBSYS_NET};

mod comm;
pub mod config;
pub mod cuda;
pub mod dev;
pub mod error;
mod ffi;
mod frag;
pub mod mem;
mod pool;
mod sys;
pub mod trace;
mod worker;

pub use comm::{direct_requests, RecvComm, UnpackView};
pub use config::{configure, Config, StageKernel};
pub use cuda::CudaMappedAllocator;
pub use error::Error;
pub use mem::{set_mapped_allocator, HostAllocator, MappedAllocator, MappedRegion};

/// The plugin's name field.
pub const NAME: &core::ffi::CStr = c"tcpxsock";

/// The plugin table, exported with C linkage for NCCL-style loaders.
#[no_mangle]
pub static ncclNetPlugin_v7: Net = Net {
    name: NAME.as_ptr() as *const c_char,
    init: Some(ffi::init),
    devices: Some(ffi::devices),
    get_properties: Some(ffi::get_properties),
    listen: Some(ffi::listen),
    connect: Some(ffi::connect),
    accept: Some(ffi::accept),
    reg_mr: Some(ffi::reg_mr),
    // Like TCPX: no dma-buf registration.
    reg_mr_dma_buf: None,
    dereg_mr: Some(ffi::dereg_mr),
    isend: Some(ffi::isend),
    irecv: Some(ffi::irecv),
    iflush: Some(ffi::iflush),
    test: Some(ffi::test),
    close_send: Some(ffi::close_send),
    close_recv: Some(ffi::close_recv),
    close_listen: Some(ffi::close_listen),
    get_device_mr: Some(ffi::get_device_mr),
    irecv_consumed: Some(ffi::irecv_consumed),
};

/// The table, for in-process callers.
pub fn table() -> &'static Net {
    &ncclNetPlugin_v7
}

/// Host views of a recv comm's meta table and bounce region; `None` in host mode.
///
/// # Safety
/// `recv_comm` is a live recv comm returned by this plugin's `accept`.
pub unsafe fn recv_unpack_view(recv_comm: *mut c_void) -> Option<UnpackView> {
    // SAFETY: per the contract, the pointer is a live RecvComm.
    unsafe { recv_comm.cast::<RecvComm>().as_ref() }?.unpack_view()
}

/// What a comm's CUDA transfers need that is made at its CUDA registrations: for a send comm,
/// whether its staging ring exists; for a recv comm, how many of its helpers have their
/// landing on device `gpu`.
///
/// # Safety
/// `comm` is a live comm of this plugin: a send comm from `connect` when `send`, else a recv
/// comm from `accept`.
pub unsafe fn cuda_prepared(comm: *mut c_void, send: bool, gpu: usize) -> usize {
    if send {
        // SAFETY: per the contract, a live SendComm.
        unsafe { comm.cast::<comm::SendComm>().as_ref() }.map_or(0, |c| c.staging_ready() as usize)
    } else {
        // SAFETY: per the contract, a live RecvComm.
        unsafe { comm.cast::<RecvComm>().as_ref() }.map_or(0, |c| c.landings_on(gpu))
    }
}

static LOGGER: AtomicUsize = AtomicUsize::new(0);

fn set_logger(l: Logger) {
    LOGGER.store(l.map_or(0, |f| f as usize), Ordering::Release);
}

/// [`log_warn`] the first time `told` is seen unset in this process.
pub(crate) fn log_warn_once(told: &AtomicBool, msg: &str) {
    if !told.swap(true, Ordering::Relaxed) {
        log_warn(msg);
    }
}

/// Sends a warning to NCCL's logger, if one was given to `init`.
pub(crate) fn log_warn(msg: &str) {
    log(log_level::WARN, msg)
}

/// Sends an informational line to NCCL's logger, if one was given to `init`.
pub(crate) fn log_info(msg: &str) {
    log(log_level::INFO, msg)
}

fn log(level: core::ffi::c_int, msg: &str) {
    let raw = LOGGER.load(Ordering::Acquire);
    if raw == 0 {
        return;
    }
    let Ok(c) = CString::new(msg) else { return };
    // SAFETY: `raw` was stored from a non-NULL logger of exactly this type.
    let f: Logger = unsafe { core::mem::transmute::<usize, Logger>(raw) };
    if let Some(f) = f {
        // SAFETY: NCCL's logger is printf-like; "%s" consumes exactly the one C string.
        unsafe {
            f(
                level,
                LOG_SUBSYS_NET,
                c"tcpxsock".as_ptr(),
                0,
                c"%s".as_ptr(),
                c.as_ptr(),
            )
        };
    }
}
