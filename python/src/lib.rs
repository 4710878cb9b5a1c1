//! `tcpx._tcpx`: the engine (`tcpx::engine`) as a Python extension module.
//!
//! A thin layer: Python objects are turned into registered regions (`memory`), sessions and
//! transfers wrap the engine's (`session`), engine errors become the exception classes of
//! `tcpx.errors` (`error`). The Python half of the package (`python/tcpx/`) re-exports these.

use pyo3::prelude::*;

mod alloc;
mod config;
mod error;
mod memory;
mod session;

/// Runs the `tcpx` command line (`probe`, `bench`, `stream`, ...) with `argv` (without the
/// program name) and returns its exit code. The GIL is released while it runs.
#[pyfunction]
fn cli(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| tcpx_cli::run(&argv))
}

#[pymodule]
fn _tcpx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<config::Config>()?;
    m.add_class::<session::Direction>()?;
    m.add_class::<session::Listener>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<session::Registration>()?;
    m.add_class::<session::Transfer>()?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    m.add_function(wrap_pyfunction!(alloc::thread_allocations, m)?)?;
    Ok(())
}
