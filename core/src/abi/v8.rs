//! `ncclNet_v8_t` (NCCL 2.20+): v7 plus `regIsGlobal` in the properties and a `size_t`
//! `regMr` size. Every other slot keeps its v7 signature, so those types are re-used.

use core::ffi::{c_char, c_int, c_void};
use core::mem::{offset_of, size_of};

use static_assertions::const_assert_eq;

use super::v7::{
    AcceptFn, CloseFn, ConnectFn, DeregMrFn, DevicesFn, GetDeviceMrFn, IflushFn, InitFn,
    IrecvConsumedFn, IrecvFn, IsendFn, ListenFn, RegMrDmaBufFn, TestFn,
};
use super::NcclResult;

/// Exported symbol name (NUL-terminated).
pub const SYMBOL: &[u8] = b"ncclNetPlugin_v8\0";

/// `ncclNetProperties_v8_t`: v7's fields with `reg_is_global` after `ptr_support`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Properties {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    /// Non-zero: a registration is usable with every comm, not only the one it was made on.
    pub reg_is_global: c_int,
    /// Mbps.
    pub speed: c_int,
    pub port: c_int,
    /// Microseconds.
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
}

impl Properties {
    /// All-zero properties, for out-parameters.
    pub const fn zeroed() -> Self {
        Properties {
            name: core::ptr::null_mut(),
            pci_path: core::ptr::null_mut(),
            guid: 0,
            ptr_support: 0,
            reg_is_global: 0,
            speed: 0,
            port: 0,
            latency: 0.0,
            max_comms: 0,
            max_recvs: 0,
            net_device_type: 0,
            net_device_version: 0,
        }
    }
}

const_assert_eq!(size_of::<Properties>(), 64);
const_assert_eq!(offset_of!(Properties, name), 0);
const_assert_eq!(offset_of!(Properties, pci_path), 8);
const_assert_eq!(offset_of!(Properties, guid), 16);
const_assert_eq!(offset_of!(Properties, ptr_support), 24);
const_assert_eq!(offset_of!(Properties, reg_is_global), 28);
const_assert_eq!(offset_of!(Properties, speed), 32);
const_assert_eq!(offset_of!(Properties, port), 36);
const_assert_eq!(offset_of!(Properties, latency), 40);
const_assert_eq!(offset_of!(Properties, max_comms), 44);
const_assert_eq!(offset_of!(Properties, max_recvs), 48);
const_assert_eq!(offset_of!(Properties, net_device_type), 52);
const_assert_eq!(offset_of!(Properties, net_device_version), 56);

pub type GetPropertiesFn = unsafe extern "C" fn(dev: c_int, props: *mut Properties) -> NcclResult;
/// From v8 on the registered size is a `size_t`.
pub type RegMrFn = unsafe extern "C" fn(
    comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    type_: c_int,
    mhandle: *mut *mut c_void,
) -> NcclResult;

/// `ncclNet_v8_t`: 19 pointer-sized slots, same order as v7.
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
}

// SAFETY: the table is immutable after construction; `name` points at a static C string.
unsafe impl Sync for Net {}
// SAFETY: as above; the table holds only function pointers and a static string.
unsafe impl Send for Net {}

const_assert_eq!(size_of::<Net>(), 152);
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
