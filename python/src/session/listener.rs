//! `Listener`: the first half of the handshake.

use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tcpx::engine;

use super::{config_or_env, take, Session};
use crate::config::Config;
use crate::error::{invalid, IntoPy};

/// The first half of the handshake: listen comms are open, `conn_info` can travel to the
/// peer by any means; then `connect(peer_info)` on both sides at the same time.
#[pyclass(module = "tcpx", frozen)]
pub struct Listener {
    inner: Mutex<Option<engine::Listener>>,
    info: Py<PyBytes>,
    config: Py<Config>,
}

#[pymethods]
impl Listener {
    /// Opens the configured plugin (`TCPX_PLUGIN`, else the embedded `tcpxsock`) and one
    /// listen comm per channel.
    #[new]
    #[pyo3(signature = (config = None))]
    fn new(py: Python<'_>, config: Option<Py<Config>>) -> PyResult<Listener> {
        let config = config_or_env(py, config)?;
        let cfg = config.get().inner.clone();
        let l = py
            .detach(|| {
                let net = engine::Session::open_net(&cfg)?;
                engine::Session::listen(net, cfg)
            })
            .py_err()?;
        let info = PyBytes::new(py, l.conn_info()).unbind();
        Ok(Listener {
            inner: Mutex::new(Some(l)),
            info,
            config,
        })
    }

    /// Bytes the peer needs for its `connect` (the listen handles and the chunk size).
    #[getter]
    fn conn_info(&self, py: Python<'_>) -> Py<PyBytes> {
        self.info.clone_ref(py)
    }

    /// The configuration the session will run with.
    #[getter]
    fn config(&self, py: Python<'_>) -> Py<Config> {
        self.config.clone_ref(py)
    }

    /// Connects to the peer's `conn_info` while accepting its connects, without the GIL,
    /// bounded by `config.timeout_ms`. Uses the listener up, whether it succeeds or not.
    fn connect(&self, py: Python<'_>, peer_info: &[u8]) -> PyResult<Session> {
        let l = take(py, &self.inner)
            .ok_or_else(|| invalid("invalid use: the listener was already connected or closed"))?;
        let peer = peer_info.to_vec();
        let s = py.detach(move || l.connect(&peer)).py_err()?;
        Ok(Session::new(s, self.config.clone_ref(py)))
    }

    /// Closes the listen comms of a listener that will not be connected. Idempotent.
    fn close(&self, py: Python<'_>) {
        let l = take(py, &self.inner);
        py.detach(move || drop(l));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) {
        self.close(py);
    }
}
