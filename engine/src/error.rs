//! The crate's one error type.
//!
//! Every failing ncclNet call becomes [`Error::Plugin`], naming the plugin, the function and
//! the `ncclResult_t`; loader, configuration, bootstrap and CLI failures have their own
//! variants so callers can match on what went wrong.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use tcpx_core::abi::{result, NcclResult};

/// Every error tcpx reports.
#[derive(Debug)]
pub enum Error {
    /// The plugin path does not exist.
    PluginNotFound { path: PathBuf },
    /// The file exists but the dynamic loader rejected it.
    NotSharedObject { path: PathBuf, reason: String },
    /// The library exports none of the ncclNet symbols that were tried.
    NoSymbol {
        path: PathBuf,
        tried: Vec<&'static str>,
    },
    /// A plugin call returned something other than `ncclSuccess`.
    Plugin {
        plugin: Arc<str>,
        func: &'static str,
        code: NcclResult,
    },
    /// The plugin left a function slot NULL that this operation needs.
    MissingFunction {
        plugin: Arc<str>,
        func: &'static str,
    },
    /// `devices` reported no device.
    NoDevices { plugin: Arc<str> },
    /// A device advertises an offload type or version tcpx does not know.
    UnknownDeviceOffload {
        plugin: Arc<str>,
        dev: usize,
        device_type: i32,
        version: i32,
    },
    /// An argument the plugin ABI cannot express or a call out of order.
    Invalid(&'static str),
    /// A bad setting (environment, custom parameter, command line).
    Config(String),
    /// The peer sent something that breaks the protocol.
    Protocol(String),
    /// An operation did not finish in time.
    Timeout(&'static str),
    /// An OS-level I/O failure, with what was being done.
    Io(&'static str, std::io::Error),
    /// A feature this build or this plugin does not offer.
    Unsupported(&'static str),
    /// The session stopped working after a failure (the original error, as text).
    Broken(String),
    /// A CUDA failure (context, kernel load, launch, event), with what was being done.
    Gpu(String),
    /// Memory registered as a kind, device or length the CUDA driver contradicts.
    BadMemory(String),
}

impl Error {
    /// The `ncclResult_t` of a failed plugin call, if this is one.
    pub fn nccl_code(&self) -> Option<NcclResult> {
        match self {
            Error::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PluginNotFound { path } => {
                write!(f, "ncclNet plugin {}: file not found", path.display())
            }
            Error::NotSharedObject { path, reason } => write!(
                f,
                "ncclNet plugin {}: not a loadable shared object ({reason})",
                path.display()
            ),
            Error::NoSymbol { path, tried } => write!(
                f,
                "ncclNet plugin {}: exports none of the symbols tried ({})",
                path.display(),
                tried.join(", ")
            ),
            Error::Plugin { plugin, func, code } => write!(
                f,
                "ncclNet plugin {plugin}: {func} failed with {} ({code})",
                result::name(*code)
            ),
            Error::MissingFunction { plugin, func } => {
                write!(
                    f,
                    "ncclNet plugin {plugin}: {func} is not implemented (NULL)"
                )
            }
            Error::NoDevices { plugin } => {
                write!(f, "ncclNet plugin {plugin}: reports zero devices")
            }
            Error::UnknownDeviceOffload {
                plugin,
                dev,
                device_type,
                version,
            } => write!(
                f,
                "ncclNet plugin {plugin}: device {dev} has unknown offload type {device_type} \
                 version {version:#x} (known: HOST, UNPACK version 0x7)"
            ),
            Error::Invalid(what) => write!(f, "invalid use: {what}"),
            Error::Config(what) => write!(f, "configuration: {what}"),
            Error::Protocol(what) => write!(f, "protocol: {what}"),
            Error::Timeout(what) => write!(f, "timeout: {what}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::Broken(why) => write!(f, "session broken: {why}"),
            Error::BadMemory(why) => write!(f, "registration refused: {why}"),
            Error::Gpu(what) => write!(f, "GPU: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
