//! Our own declarations of the ncclNet plugin ABI (NCCL net v7 … v10).
//!
//! These live in the core so that both sides share one declaration: the loader in `tcpx`
//! reads foreign tables through them and `tcpx-sock` exports its table with them. Every
//! function slot is an `Option` because foreign plugins may leave slots NULL.
//! Layouts are pinned by const asserts; facts come from `docs/TCPX.md`.

use core::ffi::{c_char, c_int, c_ulong, c_void};

use static_assertions::{assert_eq_size, const_assert_eq};

use crate::mem::MemKind;

pub mod v10;
pub mod v7;
pub mod v8;
pub mod v9;

/// `ncclResult_t`.
pub type NcclResult = c_int;

/// Values of `ncclResult_t`.
pub mod result {
    use super::NcclResult;
    pub const SUCCESS: NcclResult = 0;
    pub const UNHANDLED_CUDA_ERROR: NcclResult = 1;
    pub const SYSTEM_ERROR: NcclResult = 2;
    pub const INTERNAL_ERROR: NcclResult = 3;
    pub const INVALID_ARGUMENT: NcclResult = 4;
    pub const INVALID_USAGE: NcclResult = 5;
    pub const REMOTE_ERROR: NcclResult = 6;
    pub const IN_PROGRESS: NcclResult = 7;
    /// Only from NCCL 2.30 on.
    pub const TIMEOUT: NcclResult = 8;

    /// The C name of a result code, for error messages.
    pub const fn name(r: NcclResult) -> &'static str {
        match r {
            SUCCESS => "ncclSuccess",
            UNHANDLED_CUDA_ERROR => "ncclUnhandledCudaError",
            SYSTEM_ERROR => "ncclSystemError",
            INTERNAL_ERROR => "ncclInternalError",
            INVALID_ARGUMENT => "ncclInvalidArgument",
            INVALID_USAGE => "ncclInvalidUsage",
            REMOTE_ERROR => "ncclRemoteError",
            IN_PROGRESS => "ncclInProgress",
            TIMEOUT => "ncclTimeout",
            _ => "unknown ncclResult_t",
        }
    }
}

/// Size of the opaque listen handle that travels out of band.
pub const HANDLE_MAX_SIZE: usize = 128;

/// Pointer kinds (`ptrSupport` bits and `regMr` `type`).
pub const PTR_HOST: c_int = 0x1;
pub const PTR_CUDA: c_int = 0x2;
pub const PTR_DMABUF: c_int = 0x4;

/// The `regMr` `type` of memory of `kind`.
pub const fn ptr_type(kind: MemKind) -> c_int {
    match kind {
        MemKind::Host => PTR_HOST,
        MemKind::Device => PTR_CUDA,
    }
}

/// `netDeviceType` values.
pub const NET_DEVICE_HOST: c_int = 0;
pub const NET_DEVICE_UNPACK: c_int = 1;
/// The only `netDeviceVersion` of the UNPACK offload in NCCL 2.19 … 2.32.
pub const NET_UNPACK_VERSION: c_int = 0x7;

/// Outstanding requests per comm allowed by NCCL (TCPX allows only 16).
pub const NCCL_NET_MAX_REQUESTS: usize = 32;

/// NCCL log levels (`ncclDebugLogLevel`).
pub mod log_level {
    use core::ffi::c_int;
    pub const NONE: c_int = 0;
    pub const VERSION: c_int = 1;
    pub const WARN: c_int = 2;
    pub const INFO: c_int = 3;
    pub const ABORT: c_int = 4;
    pub const TRACE: c_int = 5;
}
/// The NET subsystem bit of NCCL's log `flags`.
pub const LOG_SUBSYS_NET: c_ulong = 16;

/// NCCL's printf-style logger, handed to `init`.
pub type Logger = Option<
    unsafe extern "C" fn(
        level: c_int,
        flags: c_ulong,
        file: *const c_char,
        line: c_int,
        fmt: *const c_char,
        ...
    ),
>;

/// `ncclNetDeviceHandle_t` (identical in v7 … v12): describes a device-side offload.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct DevHandle {
    pub net_device_type: c_int,
    pub net_device_version: c_int,
    /// For UNPACK: points at an [`crate::unpack::UnpackDevHandle`].
    pub handle: *mut c_void,
    pub size: usize,
    pub needs_proxy_progress: c_int,
}

const_assert_eq!(core::mem::size_of::<DevHandle>(), 32);
const_assert_eq!(core::mem::offset_of!(DevHandle, net_device_type), 0);
const_assert_eq!(core::mem::offset_of!(DevHandle, net_device_version), 4);
const_assert_eq!(core::mem::offset_of!(DevHandle, handle), 8);
const_assert_eq!(core::mem::offset_of!(DevHandle, size), 16);
const_assert_eq!(core::mem::offset_of!(DevHandle, needs_proxy_progress), 24);
assert_eq_size!(Logger, *const c_void);
