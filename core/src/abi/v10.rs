//! `ncclNet_v10_t` (NCCL 2.26+): `init` also takes a profiler callback, `connect` takes a
//! per-connection config (traffic class), and `isend`/`irecv` take profiler handles.
//! Properties are byte-for-byte v9's.

use core::ffi::{c_char, c_int, c_void};
use core::mem::{offset_of, size_of};

use static_assertions::{assert_eq_size, const_assert_eq};

use super::v7::{
    AcceptFn, CloseFn, DeregMrFn, DevicesFn, GetDeviceMrFn, IflushFn, IrecvConsumedFn, ListenFn,
    RegMrDmaBufFn, TestFn,
};
use super::v8::RegMrFn;
use super::v9::{GetPropertiesFn, MakeVDeviceFn};
use super::{DevHandle, Logger, NcclResult};

/// `ncclNetProperties_v10_t` has v9's layout.
pub use super::v9::Properties;
/// `ncclNetVDeviceProps_v10_t` has v9's layout.
pub use super::v9::VDeviceProps;

/// Exported symbol name (NUL-terminated).
pub const SYMBOL: &[u8] = b"ncclNetPlugin_v10\0";

/// `trafficClass` value meaning "plugin default".
pub const TRAFFIC_CLASS_UNDEF: c_int = -1;

/// `ncclNetCommConfig_v10_t`: per-connection options passed to `connect`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CommConfig {
    pub traffic_class: c_int,
}

const_assert_eq!(size_of::<CommConfig>(), 4);

/// NCCL's profiler callback (`ncclProfilerCallback_t`), handed to `init`; may be NULL.
pub type ProfilerCallback = Option<
    unsafe extern "C" fn(
        e_handle: *mut *mut c_void,
        type_: c_int,
        p_handle: *mut c_void,
        plugin_id: i64,
        ext_data: *mut c_void,
    ) -> NcclResult,
>;
assert_eq_size!(ProfilerCallback, *const c_void);

pub type InitFn = unsafe extern "C" fn(logger: Logger, profiler: ProfilerCallback) -> NcclResult;
pub type ConnectFn = unsafe extern "C" fn(
    dev: c_int,
    config: *mut CommConfig,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    send_dev_comm: *mut *mut DevHandle,
) -> NcclResult;
/// v9's `isend` plus the profiler handle of the NCCL operation (may be NULL).
pub type IsendFn = unsafe extern "C" fn(
    send_comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    tag: c_int,
    mhandle: *mut c_void,
    p_handle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult;
/// v9's `irecv` plus one profiler handle per receive (array may be NULL).
pub type IrecvFn = unsafe extern "C" fn(
    recv_comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut usize,
    tags: *mut c_int,
    mhandles: *mut *mut c_void,
    p_handles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult;

/// `ncclNet_v10_t`: 20 slots, same order as v9.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Net {
    pub name: *const c_char,
    pub init: Option<InitFn>,
    pub devices: Option<DevicesFn>,
    pub get_properties: Option<GetPropertiesFn>,
    pub listen: Option<ListenFn>,
    pub connect: Option<ConnectFn>,
    pub accept: Option<AcceptFn>,
    pub reg_mr: Option<RegMrFn>,
    pub reg_mr_dma_buf: Option<RegMrDmaBufFn>,
    pub dereg_mr: Option<DeregMrFn>,
    pub isend: Option<IsendFn>,
    pub irecv: Option<IrecvFn>,
    pub iflush: Option<IflushFn>,
    pub test: Option<TestFn>,
    pub close_send: Option<CloseFn>,
    pub close_recv: Option<CloseFn>,
    pub close_listen: Option<CloseFn>,
    pub get_device_mr: Option<GetDeviceMrFn>,
    pub irecv_consumed: Option<IrecvConsumedFn>,
    pub make_v_device: Option<MakeVDeviceFn>,
}

// SAFETY: the table is immutable after construction; `name` points at a static C string.
unsafe impl Sync for Net {}
// SAFETY: as above; the table holds only function pointers and a static string.
unsafe impl Send for Net {}

const_assert_eq!(size_of::<Net>(), 160);
const_assert_eq!(offset_of!(Net, name), 0);
const_assert_eq!(offset_of!(Net, init), 8);
const_assert_eq!(offset_of!(Net, devices), 16);
const_assert_eq!(offset_of!(Net, get_properties), 24);
const_assert_eq!(offset_of!(Net, listen), 32);
const_assert_eq!(offset_of!(Net, connect), 40);
const_assert_eq!(offset_of!(Net, accept), 48);
const_assert_eq!(offset_of!(Net, reg_mr), 56);
const_assert_eq!(offset_of!(Net, reg_mr_dma_buf), 64);
const_assert_eq!(offset_of!(Net, dereg_mr), 72);
const_assert_eq!(offset_of!(Net, isend), 80);
const_assert_eq!(offset_of!(Net, irecv), 88);
const_assert_eq!(offset_of!(Net, iflush), 96);
const_assert_eq!(offset_of!(Net, test), 104);
const_assert_eq!(offset_of!(Net, close_send), 112);
const_assert_eq!(offset_of!(Net, close_recv), 120);
const_assert_eq!(offset_of!(Net, close_listen), 128);
const_assert_eq!(offset_of!(Net, get_device_mr), 136);
const_assert_eq!(offset_of!(Net, irecv_consumed), 144);
const_assert_eq!(offset_of!(Net, make_v_device), 152);
