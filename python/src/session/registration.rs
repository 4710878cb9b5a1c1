//! `Registration`: a registered region of a session.

use pyo3::prelude::*;
use tcpx::engine::Memory;

use super::Session;

/// A registered region of a session: pass it (or `(registration, offset, length)`) to
/// `Session.post`. Holds the registered object.
#[pyclass(module = "tcpx", frozen)]
pub struct Registration {
    pub(super) session: Py<Session>,
    pub(super) mem: u64,
    pub(super) nbytes: u64,
    pub(super) address: u64,
    pub(super) memory: Memory,
    pub(super) readonly: bool,
    pub(super) via: &'static str,
    pub(super) object: Py<PyAny>,
}

#[pymethods]
impl Registration {
    /// Bytes registered.
    #[getter]
    fn nbytes(&self) -> u64 {
        self.nbytes
    }

    fn __len__(&self) -> usize {
        self.nbytes as usize
    }

    /// The region's first byte (a device address for CUDA memory).
    #[getter]
    fn address(&self) -> u64 {
        self.address
    }

    /// The CUDA device of device memory; `None` for host memory.
    #[getter]
    fn device(&self) -> Option<i32> {
        match self.memory {
            Memory::Host => None,
            Memory::Cuda { device } => Some(device),
        }
    }

    /// Whether the object's memory is read-only (it can only be sent).
    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    /// The registered object.
    #[getter]
    fn object(&self, py: Python<'_>) -> Py<PyAny> {
        self.object.clone_ref(py)
    }

    /// The session the region belongs to.
    #[getter]
    fn session(&self, py: Python<'_>) -> Py<Session> {
        self.session.clone_ref(py)
    }

    /// Releases the registration and lets go of the object. Fails (`InvalidError`) while a
    /// live transfer names the region. Idempotent; nothing to do once the session closed.
    fn deregister(&self, py: Python<'_>) -> PyResult<()> {
        self.session.get().deregister_raw(py, self.mem)
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
    ) -> PyResult<()> {
        self.deregister(py)
    }

    fn __repr__(&self) -> String {
        let kind = match self.memory {
            Memory::Host => self.memory.kind().name().to_string(),
            Memory::Cuda { device } => format!("{}:{device}", self.memory.kind().name()),
        };
        format!(
            "tcpx.Registration({} bytes of {kind} memory at {:#x} via {}{})",
            self.nbytes,
            self.address,
            self.via,
            if self.readonly { ", read-only" } else { "" }
        )
    }
}
