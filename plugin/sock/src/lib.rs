//! tcpx-sock: `tcpxsock`, our TCP ncclNet plugin emulating the TCPX receive path.
//!
//! Exports the v7 table as the C data symbol `ncclNetPlugin_v7`.

use core::ffi::{c_char, c_int, c_void};

use tcpx_core::abi::v7::{Net, Properties};
use tcpx_core::abi::{result, DevHandle, Logger, NcclResult};

unsafe extern "C" fn stub_init(_l: Logger) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_devices(_n: *mut c_int) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_props(_d: c_int, _p: *mut Properties) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_listen(_d: c_int, _h: *mut c_void, _l: *mut *mut c_void) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_connect(_d: c_int, _h: *mut c_void, _s: *mut *mut c_void, _x: *mut *mut DevHandle) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_accept(_l: *mut c_void, _r: *mut *mut c_void, _x: *mut *mut DevHandle) -> NcclResult { result::INTERNAL_ERROR }
unsafe extern "C" fn stub_close(_c: *mut c_void) -> NcclResult { result::INTERNAL_ERROR }

/// The plugin table, exported with C linkage.
#[no_mangle]
pub static ncclNetPlugin_v7: Net = Net {
    name: c"tcpxsock".as_ptr() as *const c_char,
    init: Some(stub_init),
    devices: Some(stub_devices),
    get_properties: Some(stub_props),
    listen: Some(stub_listen),
    connect: Some(stub_connect),
    accept: Some(stub_accept),
    reg_mr: None,
    reg_mr_dma_buf: None,
    dereg_mr: None,
    isend: None,
    irecv: None,
    iflush: None,
    test: None,
    close_send: Some(stub_close),
    close_recv: Some(stub_close),
    close_listen: Some(stub_close),
    get_device_mr: None,
    irecv_consumed: None,
};
