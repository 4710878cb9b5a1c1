//! tcpx-nixl: the NIXL backend plugin `TCPX` (`libplugin_TCPX.so`).
//!
//! A C++ shim (`cpp/`) presents NIXL 1.5.x's backend-engine ABI and forwards every call through
//! the C functions in [`ffi`] to a [`Backend`]. Transfers an agent makes to itself run here;
//! transfers to other agents go through [`remote::RemotePath`], where the tcpx engine plugs in.
// The library must be named plugin_TCPX: NIXL takes the backend name from the file name.
#![allow(non_snake_case)]

/// Writes one log line through the engine's logger (`tcpx::log`: level from `TCPX_LOG`,
/// default warn), under the target `nixl`: `log!(Warn, "...")`. The only way the crate prints.
/// Refusals and failures are `Error`/`Warn`, connections coming and going `Info`.
macro_rules! log {
    ($level:ident, $($t:tt)*) => {
        tcpx::log_at!(tcpx::log::Level::$level, crate::LOG_TARGET, $($t)*)
    };
}
pub(crate) use log;

/// The target (subsystem) of this crate's log lines: `tcpx WARN [nixl] ...`.
pub const LOG_TARGET: &str = "nixl";

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
