//! `ncclNet_v9_t` (NCCL 2.24+): larger properties (`forceFlush`, virtual-device list, size
//! limits), `size_t` sizes in `isend`/`irecv`, and a new last slot `makeVDevice`.
//! `iflush` and `test` keep `int` sizes.

use core::ffi::{c_char, c_int, c_void};
use core::mem::{offset_of, size_of};

use static_assertions::const_assert_eq;

use super::v7::{
    AcceptFn, CloseFn, ConnectFn, DeregMrFn, DevicesFn, GetDeviceMrFn, IflushFn, InitFn,
    IrecvConsumedFn, ListenFn, RegMrDmaBufFn, TestFn,
};
use super::v8::RegMrFn;
use super::NcclResult;

/// Exported symbol name (NUL-terminated).
pub const SYMBOL: &[u8] = b"ncclNetPlugin_v9\0";

/// Physical devices a virtual NIC may merge (v9 … v11).
pub const MAX_DEVS_PER_NIC: usize = 4;

/// `ncclNetVDeviceProps_v9_t`: the physical devices behind one virtual device.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VDeviceProps {
    pub ndevs: c_int,
    pub devs: [c_int; MAX_DEVS_PER_NIC],
}

const_assert_eq!(size_of::<VDeviceProps>(), 20);
const_assert_eq!(offset_of!(VDeviceProps, ndevs), 0);
const_assert_eq!(offset_of!(VDeviceProps, devs), 4);

/// `ncclNetProperties_v9_t` (104 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Properties {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: c_int,
    pub reg_is_global: c_int,
    /// Non-zero: NCCL must `iflush` every CUDA receive.
    pub force_flush: c_int,
    /// Mbps.
    pub speed: c_int,
    pub port: c_int,
    /// Microseconds.
    pub latency: f32,
    pub max_comms: c_int,
    pub max_recvs: c_int,
    pub net_device_type: c_int,
    pub net_device_version: c_int,
    pub v_props: VDeviceProps,
    /// Largest single point-to-point transfer.
    pub max_p2p_bytes: usize,
    /// Largest single collective transfer.
    pub max_coll_bytes: usize,
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
            force_flush: 0,
            speed: 0,
            port: 0,
            latency: 0.0,
            max_comms: 0,
            max_recvs: 0,
            net_device_type: 0,
            net_device_version: 0,
            v_props: VDeviceProps {
                ndevs: 0,
                devs: [0; MAX_DEVS_PER_NIC],
            },
            max_p2p_bytes: 0,
            max_coll_bytes: 0,
        }
    }
}

const_assert_eq!(size_of::<Properties>(), 104);
const_assert_eq!(offset_of!(Properties, name), 0);
const_assert_eq!(offset_of!(Properties, pci_path), 8);
const_assert_eq!(offset_of!(Properties, guid), 16);
const_assert_eq!(offset_of!(Properties, ptr_support), 24);
const_assert_eq!(offset_of!(Properties, reg_is_global), 28);
const_assert_eq!(offset_of!(Properties, force_flush), 32);
const_assert_eq!(offset_of!(Properties, speed), 36);
const_assert_eq!(offset_of!(Properties, port), 40);
const_assert_eq!(offset_of!(Properties, latency), 44);
const_assert_eq!(offset_of!(Properties, max_comms), 48);
const_assert_eq!(offset_of!(Properties, max_recvs), 52);
const_assert_eq!(offset_of!(Properties, net_device_type), 56);
const_assert_eq!(offset_of!(Properties, net_device_version), 60);
const_assert_eq!(offset_of!(Properties, v_props), 64);
const_assert_eq!(offset_of!(Properties, max_p2p_bytes), 88);
const_assert_eq!(offset_of!(Properties, max_coll_bytes), 96);

pub type GetPropertiesFn = unsafe extern "C" fn(dev: c_int, props: *mut Properties) -> NcclResult;
/// From v9 on the send size is a `size_t`.
pub type IsendFn = unsafe extern "C" fn(
    send_comm: *mut c_void,
    data: *mut c_void,
    size: usize,
    tag: c_int,
    mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult;
/// From v9 on the receive sizes are `size_t`.
pub type IrecvFn = unsafe extern "C" fn(
    recv_comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut usize,
    tags: *mut c_int,
    mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult;
/// Creates a virtual device merging `props.devs`; writes its index to `d`.
pub type MakeVDeviceFn =
    unsafe extern "C" fn(d: *mut c_int, props: *mut VDeviceProps) -> NcclResult;

/// `ncclNet_v9_t`: v8's 19 slots (with v9 signatures) plus `make_v_device`.
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
