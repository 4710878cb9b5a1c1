//! One normalized function table built from whichever ncclNet version a plugin exports.
//!
//! Slots whose C signature is the same in v7 … v10 are copied as they are; the few that
//! changed become small enums, so each call site matches once instead of per version.

use std::ffi::{c_int, c_void};

use tcpx_core::abi::{v10, v7, v8, v9};

use super::AbiVersion;

pub(crate) enum Init {
    V7(v7::InitFn),
    V10(v10::InitFn),
}

pub(crate) enum GetProperties {
    V7(v7::GetPropertiesFn),
    V8(v8::GetPropertiesFn),
    /// v9 and v10 share one properties layout.
    V9(v9::GetPropertiesFn),
}

pub(crate) enum Connect {
    V7(v7::ConnectFn),
    V10(v10::ConnectFn),
}

pub(crate) enum RegMr {
    /// v7: `int` size.
    Int(v7::RegMrFn),
    /// v8+: `size_t` size.
    Size(v8::RegMrFn),
}

pub(crate) enum Isend {
    Int(v7::IsendFn),
    Size(v9::IsendFn),
    Profiled(v10::IsendFn),
}

pub(crate) enum Irecv {
    Int(v7::IrecvFn),
    Size(v9::IrecvFn),
    Profiled(v10::IrecvFn),
}

/// The plugin's functions, version-independent. `None` = the plugin left the slot NULL.
pub(crate) struct Table {
    pub version: AbiVersion,
    pub init: Option<Init>,
    pub devices: Option<v7::DevicesFn>,
    pub get_properties: Option<GetProperties>,
    pub listen: Option<v7::ListenFn>,
    pub connect: Option<Connect>,
    pub accept: Option<v7::AcceptFn>,
    pub reg_mr: Option<RegMr>,
    pub reg_mr_dma_buf: Option<v7::RegMrDmaBufFn>,
    pub dereg_mr: Option<v7::DeregMrFn>,
    pub isend: Option<Isend>,
    pub irecv: Option<Irecv>,
    pub iflush: Option<v7::IflushFn>,
    pub test: Option<v7::TestFn>,
    pub close_send: Option<v7::CloseFn>,
    pub close_recv: Option<v7::CloseFn>,
    pub close_listen: Option<v7::CloseFn>,
    pub get_device_mr: Option<v7::GetDeviceMrFn>,
    pub irecv_consumed: Option<v7::IrecvConsumedFn>,
}

/// Copies the slots every version shares; `$t` is any of the four tables.
macro_rules! common {
    ($t:expr, $version:expr, init: $init:expr, get_properties: $gp:expr, connect: $c:expr,
     reg_mr: $r:expr, isend: $is:expr, irecv: $ir:expr) => {
        Table {
            version: $version,
            init: $init,
            devices: $t.devices,
            get_properties: $gp,
            listen: $t.listen,
            connect: $c,
            accept: $t.accept,
            reg_mr: $r,
            reg_mr_dma_buf: $t.reg_mr_dma_buf,
            dereg_mr: $t.dereg_mr,
            isend: $is,
            irecv: $ir,
            iflush: $t.iflush,
            test: $t.test,
            close_send: $t.close_send,
            close_recv: $t.close_recv,
            close_listen: $t.close_listen,
            get_device_mr: $t.get_device_mr,
            irecv_consumed: $t.irecv_consumed,
        }
    };
}

impl Table {
    pub fn from_v7(t: &v7::Net) -> Table {
        common!(t, AbiVersion::V7,
            init: t.init.map(Init::V7),
            get_properties: t.get_properties.map(GetProperties::V7),
            connect: t.connect.map(Connect::V7),
            reg_mr: t.reg_mr.map(RegMr::Int),
            isend: t.isend.map(Isend::Int),
            irecv: t.irecv.map(Irecv::Int))
    }

    pub fn from_v8(t: &v8::Net) -> Table {
        common!(t, AbiVersion::V8,
            init: t.init.map(Init::V7),
            get_properties: t.get_properties.map(GetProperties::V8),
            connect: t.connect.map(Connect::V7),
            reg_mr: t.reg_mr.map(RegMr::Size),
            isend: t.isend.map(Isend::Int),
            irecv: t.irecv.map(Irecv::Int))
    }

    pub fn from_v9(t: &v9::Net) -> Table {
        common!(t, AbiVersion::V9,
            init: t.init.map(Init::V7),
            get_properties: t.get_properties.map(GetProperties::V9),
            connect: t.connect.map(Connect::V7),
            reg_mr: t.reg_mr.map(RegMr::Size),
            isend: t.isend.map(Isend::Size),
            irecv: t.irecv.map(Irecv::Size))
    }

    pub fn from_v10(t: &v10::Net) -> Table {
        common!(t, AbiVersion::V10,
            init: t.init.map(Init::V10),
            get_properties: t.get_properties.map(GetProperties::V9),
            connect: t.connect.map(Connect::V10),
            reg_mr: t.reg_mr.map(RegMr::Size),
            isend: t.isend.map(Isend::Profiled),
            irecv: t.irecv.map(Irecv::Profiled))
    }
}

/// Most receives grouped in one `irecv` (NCCL's own limit for any plugin is 8).
pub const MAX_RECVS: usize = 8;

/// Arguments of one grouped receive, laid out as the C arrays the ABI wants.
pub(crate) struct RecvArgs {
    pub n: c_int,
    pub data: [*mut c_void; MAX_RECVS],
    pub sizes: [usize; MAX_RECVS],
    pub tags: [c_int; MAX_RECVS],
    pub mhandles: [*mut c_void; MAX_RECVS],
}
