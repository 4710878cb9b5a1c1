//! tcpx-nixl: the NIXL backend plugin `TCPX` (`libplugin_TCPX.so`).
//!
//! A C++ shim (`cpp/`) presents NIXL 1.5.x's backend-engine ABI and forwards every call through
//! the C functions in [`ffi`] to a [`Backend`]. Transfers an agent makes to itself run here;
//! transfers to other agents go through [`remote::RemotePath`], where the tcpx engine plugs in.
// The library must be named plugin_TCPX: NIXL takes the backend name from the file name.
#![allow(non_snake_case)]
#![deny(unsafe_op_in_unsafe_fn)]

/// Writes one log line to stderr; the only way the crate prints.
macro_rules! log {
    ($($t:tt)*) => { eprintln!("tcpx-nixl: {}", format_args!($($t)*)) };
}
pub(crate) use log;

pub mod backend;
pub mod blob;
pub mod config;
pub mod control;
pub mod error;
pub mod ffi;
pub mod registry;
pub mod remote;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xfer;

pub use backend::Backend;
pub use config::Config;
pub use error::{Error, Status};
