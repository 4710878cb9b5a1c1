//! Engine errors as Python exceptions: each `tcpx::Error` variant maps to one class of
//! `tcpx.errors` (defined in Python, so classes can also derive from `ValueError`,
//! `TimeoutError` or `OSError`), with the engine's message as its text.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyType;

use tcpx::Error;

/// The `tcpx.errors` class for an engine error.
fn class_of(e: &Error) -> &'static str {
    match e {
        Error::Invalid(_) => "InvalidError",
        Error::BadMemory(_) => "BadMemoryError",
        Error::Timeout(_) => "TimeoutError",
        Error::PluginNotFound { .. }
        | Error::NotSharedObject { .. }
        | Error::NoSymbol { .. }
        | Error::Plugin { .. }
        | Error::MissingFunction { .. }
        | Error::NoDevices { .. }
        | Error::UnknownDeviceOffload { .. } => "PluginError",
        Error::Broken(_) => "BrokenError",
        Error::Unsupported(_) => "UnsupportedError",
        Error::Config(_) => "ConfigError",
        Error::Protocol(_) => "ProtocolError",
        Error::Io(..) => "IoError",
        Error::Gpu(_) => "GpuError",
    }
}

/// An exception of class `name` from `tcpx.errors` carrying `msg`.
pub(crate) fn raise(name: &str, msg: String) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("tcpx.errors")
            .and_then(|m| m.getattr(name))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match class {
            Ok(c) => PyErr::from_type(c, msg),
            // Only when the package is broken: still say what failed.
            Err(e) => PyTypeError::new_err(format!("{msg} (tcpx.errors.{name} unavailable: {e})")),
        }
    })
}

/// The engine error `e` as its Python exception.
pub(crate) fn to_py(e: Error) -> PyErr {
    raise(class_of(&e), e.to_string())
}

/// `InvalidError` for a misuse found by this layer (the engine's `Error::Invalid` class).
pub(crate) fn invalid(msg: impl Into<String>) -> PyErr {
    raise("InvalidError", msg.into())
}

/// Extension for `Result<T, tcpx::Error>`.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
