//! `Transfer`: a posted transfer, driven by `poll`/`status`/`wait`.

use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tcpx::engine::{Progress, XferId};
use tcpx::Error;

use super::{closed, Direction, Session};
use crate::error::{invalid, to_py, IntoPy};

/// How long `Transfer.wait` polls without the GIL before it looks at Python's signals
/// (Ctrl-C) and its deadline again.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// A posted transfer. Drive it with `poll` (never blocks) or `wait`; `release` it when done
/// (dropping it or leaving its `with` block releases it too).
#[pyclass(module = "tcpx")]
pub struct Transfer {
    pub(super) session: Py<Session>,
    pub(super) id: XferId,
    pub(super) direction: Direction,
    pub(super) bytes_total: u64,
    pub(super) bytes_done: u64,
    pub(super) done: bool,
    pub(super) released: bool,
}

impl Transfer {
    fn check(&self) -> PyResult<()> {
        if self.released {
            return Err(invalid("invalid use: the transfer was released"));
        }
        Ok(())
    }

    fn update(&mut self, p: Progress) -> bool {
        match p {
            Progress::Done { bytes } => {
                self.bytes_done = bytes;
                self.done = true;
            }
            Progress::Pending { bytes_done, .. } => self.bytes_done = bytes_done,
        }
        self.done
    }
}

#[pymethods]
impl Transfer {
    /// Drives every channel of the session once, then returns whether the transfer is done
    /// (received bytes are in place). Raises if the session broke.
    fn poll(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.check()?;
        let p = {
            let mut g = self.session.get().lock(py);
            let engine = g.engine.as_mut().ok_or_else(closed).py_err()?;
            engine.poll(self.id).py_err()?
        };
        Ok(self.update(p))
    }

    /// Where the transfer stands, without driving anything: whether it is done (and
    /// `bytes_done` as of now). For loops that drive many transfers with one
    /// `Session.progress` per round.
    fn status(&mut self, py: Python<'_>) -> PyResult<bool> {
        self.check()?;
        let p = {
            let g = self.session.get().lock(py);
            let engine = g.engine.as_ref().ok_or_else(closed).py_err()?;
            engine.status(self.id).py_err()?
        };
        Ok(self.update(p))
    }

    /// Polls until done, at most `timeout` seconds (default: the session's `timeout_ms`),
    /// without the GIL; returns the bytes moved. Raises `tcpx.TimeoutError` (the transfer
    /// stays live) or the session's failure. Ctrl-C interrupts it.
    #[pyo3(signature = (timeout = None))]
    fn wait(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<u64> {
        self.check()?;
        let handle = self.session.clone_ref(py);
        let session = handle.get();
        let timeout = match timeout {
            None => session.config.get().inner.timeout,
            Some(t) => Duration::try_from_secs_f64(t).map_err(|_| {
                PyValueError::new_err("wait: timeout is a number of seconds, 0 or more")
            })?,
        };
        let deadline = Instant::now() + timeout;
        let id = self.id;
        loop {
            let p = py
                .detach(|| {
                    let until = (Instant::now() + WAIT_SLICE).min(deadline);
                    loop {
                        let p = {
                            let mut g = session.inner.lock().unwrap_or_else(|p| p.into_inner());
                            g.engine.as_mut().ok_or_else(closed)?.poll(id)?
                        };
                        if matches!(p, Progress::Done { .. }) || Instant::now() >= until {
                            return Ok::<_, Error>(p);
                        }
                        std::thread::yield_now();
                    }
                })
                .py_err()?;
            if self.update(p) {
                return Ok(self.bytes_done);
            }
            if Instant::now() >= deadline {
                return Err(to_py(Error::Timeout("transfer did not complete in time")));
            }
            py.check_signals()?;
        }
    }

    /// Forgets the transfer. One still in flight keeps moving into memory (it cannot be
    /// recalled) and frees its slot when its last chunk completes. Idempotent.
    fn release(&mut self, py: Python<'_>) -> PyResult<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        let mut g = self.session.get().lock(py);
        match g.engine.as_mut() {
            Some(e) => e.release(self.id).py_err(),
            // Closing the session dropped it.
            None => Ok(()),
        }
    }

    /// Whether the last `poll`/`wait` saw it done.
    #[getter]
    fn done(&self) -> bool {
        self.done
    }

    /// Bytes in place so far, as of the last `poll`/`wait`.
    #[getter]
    fn bytes_done(&self) -> u64 {
        self.bytes_done
    }

    /// Bytes of the whole transfer.
    #[getter]
    fn bytes_total(&self) -> u64 {
        self.bytes_total
    }

    /// `SEND` or `RECV`.
    #[getter]
    fn direction(&self) -> Direction {
        self.direction
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.release(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "tcpx.Transfer({}, {}/{} bytes{})",
            match self.direction {
                Direction::Send => "SEND",
                Direction::Recv => "RECV",
            },
            self.bytes_done,
            self.bytes_total,
            if self.released {
                ", released"
            } else if self.done {
                ", done"
            } else {
                ""
            }
        )
    }
}

impl Drop for Transfer {
    /// An unreleased transfer dropped by Python frees its slot, so forgetting `release`
    /// cannot exhaust `max_transfers`.
    fn drop(&mut self) {
        if !self.released {
            Python::attach(|py| {
                let _ = self.release(py);
            });
        }
    }
}
