//! `Listener`, `Session`, `Registration`, `Transfer`: the engine's handshake, memory and
//! transfers as Python objects.
//!
//! A session's engine state sits behind one mutex. It is taken with the GIL held only by
//! `try_lock`; a caller that finds it busy lets go of the GIL while it waits, so a thread
//! inside `wait` (which polls without the GIL) and a thread holding the GIL never wait on
//! each other. `post`, `poll` and `release` allocate nothing on the Rust side: the segment
//! list is a buffer sized once from `Config::max_segments`.
mod listener;
mod registration;
mod transfer;

use std::ffi::c_void;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Mutex, MutexGuard, TryLockError};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use tcpx::engine::{self, MemId, Rendezvous, Segment};
use tcpx::Error;

use crate::config::Config;
use crate::error::{invalid, to_py, IntoPy};
use crate::memory::{self, Owner};

pub use listener::Listener;
pub use registration::Registration;
pub use transfer::Transfer;

/// Which way a transfer moves bytes. Both peers post mirror images: `SEND` on one side,
/// `RECV` with the same segment lengths in the same order on the other.
#[pyclass(module = "tcpx", eq, eq_int, frozen)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    #[pyo3(name = "SEND")]
    Send,
    #[pyo3(name = "RECV")]
    Recv,
}

impl Direction {
    /// A `Direction`, or its name: `"send"` / `"recv"` in any case.
    fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Direction> {
        if let Ok(d) = obj.cast::<Direction>() {
            return Ok(*d.get());
        }
        if let Ok(s) = obj.cast::<PyString>() {
            let s = s.to_str()?;
            if s.eq_ignore_ascii_case("send") {
                return Ok(Direction::Send);
            }
            if s.eq_ignore_ascii_case("recv") {
                return Ok(Direction::Recv);
            }
        }
        Err(PyValueError::new_err(
            "direction must be tcpx.SEND, tcpx.RECV, \"send\" or \"recv\"",
        ))
    }

    fn engine(self) -> engine::Direction {
        match self {
            Direction::Send => engine::Direction::Send,
            Direction::Recv => engine::Direction::Recv,
        }
    }
}

/// `config`, or one read from the environment.
fn config_or_env(py: Python<'_>, config: Option<Py<Config>>) -> PyResult<Py<Config>> {
    match config {
        Some(c) => Ok(c),
        None => Py::new(
            py,
            Config {
                inner: engine::Config::from_env().py_err()?,
            },
        ),
    }
}

/// `m`'s value, taken out, with the GIL let go while the mutex is busy.
fn take<T: Send>(py: Python<'_>, m: &Mutex<Option<T>>) -> Option<T> {
    lock(py, m).take()
}

/// Locks `m` without ever blocking while holding the GIL (see the module comment).
fn lock<'a, T: Send>(py: Python<'_>, m: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match m.try_lock() {
            Ok(g) => return g,
            Err(TryLockError::Poisoned(p)) => return p.into_inner(),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(m.lock())),
        }
    }
}

struct Inner {
    /// Dropped first (fields drop in order): the plugin lets go of registered memory before
    /// the owners below may free it.
    engine: Option<engine::Session>,
    /// What keeps each registered region's memory valid, by raw `MemId`.
    owners: Vec<(u64, Owner)>,
    /// The segments of the transfer being posted (capacity `Config::max_segments`).
    segs: Vec<Segment>,
}

fn closed() -> Error {
    Error::Invalid("the session is closed")
}

/// A connection of `config.channels` channels to one peer. Memory is registered with
/// `register`; transfers are posted with `post` and driven by `Transfer.poll`/`wait` or
/// `progress`. Usable from any thread; calls on one session take turns.
#[pyclass(module = "tcpx", frozen)]
pub struct Session {
    inner: Mutex<Inner>,
    config: Py<Config>,
}

impl Session {
    fn new(s: engine::Session, config: Py<Config>) -> Session {
        let max_segments = s.config().max_segments;
        Session {
            inner: Mutex::new(Inner {
                engine: Some(s),
                owners: Vec::new(),
                segs: Vec::with_capacity(max_segments),
            }),
            config,
        }
    }

    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, Inner> {
        lock(py, &self.inner)
    }

    fn deregister_raw(&self, py: Python<'_>, mem: u64) -> PyResult<()> {
        let owner = {
            let mut g = self.lock(py);
            // Absent: deregistered already, or the session closed (which released it).
            let Some(at) = g.owners.iter().position(|(m, _)| *m == mem) else {
                return Ok(());
            };
            let engine = g.engine.as_mut().ok_or_else(closed).py_err()?;
            engine.deregister(MemId::from_raw(mem)).py_err()?;
            g.owners.swap_remove(at).1
        };
        // With the GIL, outside the lock: a buffer release may run the exporter's code.
        drop(owner);
        Ok(())
    }

    /// One entry of `post`'s segment list.
    fn segment(
        slf: &Bound<'_, Session>,
        item: &Bound<'_, PyAny>,
        dir: Direction,
    ) -> PyResult<Segment> {
        let bad = || {
            PyTypeError::new_err(
                "post: a segment is a Registration or a tuple (registration, offset, length[, \
                 remote_offset])",
            )
        };
        let (reg, offset, len, remote_offset) = if let Ok(r) = item.cast::<Registration>() {
            (r.clone(), 0u64, None, 0u64)
        } else if let Ok(t) = item.cast::<PyTuple>() {
            if !(3..=4).contains(&t.len()) {
                return Err(bad());
            }
            let reg = t
                .get_item(0)?
                .cast_into::<Registration>()
                .map_err(|_| bad())?;
            let remote = match t.len() {
                4 => t.get_item(3)?.extract()?,
                _ => 0,
            };
            (
                reg,
                t.get_item(1)?.extract()?,
                Some(t.get_item(2)?.extract()?),
                remote,
            )
        } else {
            return Err(bad());
        };
        let r = reg.get();
        if r.session.as_ptr() != slf.as_ptr() {
            return Err(invalid(
                "invalid use: post: a segment's registration belongs to another session",
            ));
        }
        if dir == Direction::Recv && r.readonly {
            return Err(invalid(
                "invalid use: post: a receive into a read-only object",
            ));
        }
        Ok(Segment {
            mem: MemId::from_raw(r.mem),
            offset,
            remote_offset,
            len: len.unwrap_or(r.nbytes),
        })
    }
}

/// Where `Session.establish` meets its peer, resolved before the GIL is let go.
enum Meet {
    Accept(TcpListener),
    Connect(SocketAddr),
}

/// `("host", port)` or `"host:port"`.
fn socket_addr(addr: &Bound<'_, PyAny>) -> PyResult<SocketAddr> {
    let text = if let Ok(s) = addr.extract::<String>() {
        s
    } else {
        let (host, port): (String, u16) = addr
            .extract()
            .map_err(|_| PyTypeError::new_err("an address is (\"host\", port) or \"host:port\""))?;
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    let py = addr.py();
    let found = py.detach(|| text.to_socket_addrs().map(|mut a| a.next()));
    found
        .map_err(|e| to_py(Error::Io("bootstrap resolve", e)))?
        .ok_or_else(|| {
            to_py(Error::Config(format!(
                "bootstrap: {text:?} resolves to nothing"
            )))
        })
}

#[pymethods]
impl Session {
    /// The whole handshake, with the connection info carried over TCP: the side given
    /// `accept` (a listening `socket.socket`, or `("host", port)` to bind) waits for the peer;
    /// the side given `connect` (`("host", port)` or `"host:port"`) reaches it. Bounded by
    /// `config.timeout_ms`; the GIL is let go meanwhile.
    #[staticmethod]
    #[pyo3(signature = (*, accept = None, connect = None, config = None))]
    fn establish(
        py: Python<'_>,
        accept: Option<Bound<'_, PyAny>>,
        connect: Option<Bound<'_, PyAny>>,
        config: Option<Py<Config>>,
    ) -> PyResult<Session> {
        let config = config_or_env(py, config)?;
        let cfg = config.get().inner.clone();
        let mut sock = None;
        let meet = match (&accept, &connect) {
            (Some(a), None) if a.hasattr("fileno")? => {
                let fd: RawFd = a.call_method0("fileno")?.extract()?;
                // SAFETY: the socket object is alive for this call and `fd` is its
                // descriptor; the clone is a new descriptor (dup) this function owns.
                let owned = unsafe { BorrowedFd::borrow_raw(fd) }
                    .try_clone_to_owned()
                    .map_err(|e| to_py(Error::Io("bootstrap listen", e)))?;
                sock = Some(a);
                Meet::Accept(TcpListener::from(owned))
            }
            (Some(a), None) => {
                let at = socket_addr(a)?;
                let l = py
                    .detach(|| TcpListener::bind(at))
                    .map_err(|e| to_py(Error::Io("bootstrap listen", e)))?;
                Meet::Accept(l)
            }
            (None, Some(c)) => Meet::Connect(socket_addr(c)?),
            _ => {
                return Err(PyValueError::new_err(
                    "establish: give exactly one of accept= and connect=",
                ))
            }
        };
        let result = py.detach(move || {
            let net = engine::Session::open_net(&cfg)?;
            match &meet {
                Meet::Accept(l) => engine::Session::establish(net, cfg, Rendezvous::Accept(l)),
                Meet::Connect(a) => engine::Session::establish(net, cfg, Rendezvous::Connect(*a)),
            }
        });
        if let Some(s) = sock {
            // The descriptor shares its file flags with the caller's socket, and the
            // rendezvous made them non-blocking: `settimeout` puts back what the socket's
            // own timeout implies.
            s.call_method1("settimeout", (s.call_method0("gettimeout")?,))?;
        }
        Ok(Session::new(result.py_err()?, config))
    }

    /// The configuration this session runs with.
    #[getter]
    fn config(&self, py: Python<'_>) -> Py<Config> {
        self.config.clone_ref(py)
    }

    /// The plugin device (NIC) of each channel.
    #[getter]
    fn channel_devices(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        let g = self.lock(py);
        let e = g.engine.as_ref().ok_or_else(closed).py_err()?;
        Ok(e.channel_devices().to_vec())
    }

    /// Why the session stopped working, if it did (it then only fails; close it).
    #[getter]
    fn broken(&self, py: Python<'_>) -> Option<String> {
        let g = self.lock(py);
        g.engine
            .as_ref()
            .and_then(|e| e.broken().map(str::to_owned))
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.lock(py).engine.is_none()
    }

    /// Registers `obj`'s memory on every channel: an object with the buffer protocol (host
    /// memory: numpy arrays, bytearray, memoryview), `__cuda_array_interface__` (CUDA
    /// memory: torch CUDA tensors, cupy arrays) or `__dlpack__` (torch tensors on the CPU or
    /// a GPU). The memory must be contiguous. `obj` is kept alive (and a buffer export held)
    /// until the region is deregistered or the session closed. `device` names the CUDA
    /// device where the object cannot (a `__cuda_array_interface__` alone).
    #[pyo3(signature = (obj, *, device = None))]
    fn register(
        slf: &Bound<'_, Self>,
        obj: &Bound<'_, PyAny>,
        device: Option<i32>,
    ) -> PyResult<Registration> {
        let py = slf.py();
        let ex = memory::export(obj, device)?;
        if ex.len == 0 {
            return Err(invalid("invalid use: register: the object holds no bytes"));
        }
        let mut g = slf.get().lock(py);
        let engine = g.engine.as_mut().ok_or_else(closed).py_err()?;
        let (ptr, len, mem) = (ex.ptr, ex.len, ex.memory);
        // Device memory opens the GPU (a context, a kernel load): not under the GIL.
        // SAFETY: `ex.owner` keeps the memory valid; it is held in `owners` until the engine
        // has deregistered the region (`deregister_raw`) or dropped the session (`close`,
        // and `Inner`'s field order).
        let id = py
            .detach(|| unsafe { engine.register(ptr as *mut c_void, len, mem) })
            .py_err()?;
        g.owners.push((id.to_raw(), ex.owner));
        drop(g);
        Ok(Registration {
            session: slf.clone().unbind(),
            mem: id.to_raw(),
            nbytes: len as u64,
            address: ptr,
            memory: mem,
            readonly: ex.readonly,
            via: ex.via,
            object: obj.clone().unbind(),
        })
    }

    /// Releases a registration (as `Registration.deregister`).
    fn deregister(&self, py: Python<'_>, registration: &Bound<'_, Registration>) -> PyResult<()> {
        let r = registration.get();
        if !std::ptr::eq(r.session.get(), self) {
            return Err(invalid(
                "invalid use: deregister: the registration belongs to another session",
            ));
        }
        self.deregister_raw(py, r.mem)
    }

    /// Validates and queues a transfer. `segments` is a sequence of `Registration`s (the
    /// whole region) and `(registration, offset, length[, remote_offset])` tuples; the peer
    /// posts the opposite direction with the same lengths in the same order. Every segment
    /// must lie inside its region, or nothing is queued.
    fn post(
        slf: &Bound<'_, Self>,
        direction: &Bound<'_, PyAny>,
        segments: &Bound<'_, PyAny>,
    ) -> PyResult<Transfer> {
        let py = slf.py();
        let dir = Direction::from_py(direction)?;
        let mut g = slf.get().lock(py);
        let inner = &mut *g;
        inner.segs.clear();
        let mut total = 0u64;
        for item in segments.try_iter()? {
            if inner.segs.len() == inner.segs.capacity() {
                return Err(to_py(Error::Invalid(
                    "post: more segments than Config::max_segments",
                )));
            }
            let s = Session::segment(slf, &item?, dir)?;
            total = total.saturating_add(s.len);
            inner.segs.push(s);
        }
        let engine = inner.engine.as_mut().ok_or_else(closed).py_err()?;
        let id = engine.post(dir.engine(), &inner.segs).py_err()?;
        drop(g);
        Ok(Transfer {
            session: slf.clone().unbind(),
            id,
            direction: dir,
            bytes_total: total,
            bytes_done: 0,
            done: false,
            released: false,
        })
    }

    /// Drives every channel once without looking at a particular transfer; returns whether
    /// anything moved.
    fn progress(&self, py: Python<'_>) -> PyResult<bool> {
        let mut g = self.lock(py);
        let engine = g.engine.as_mut().ok_or_else(closed).py_err()?;
        engine.progress().py_err()
    }

    /// Closes every comm and lets go of every registered object. Transfers still live are
    /// dropped. Idempotent.
    fn close(&self, py: Python<'_>) {
        let (engine, owners) = {
            let mut g = self.lock(py);
            (g.engine.take(), std::mem::take(&mut g.owners))
        };
        // Comms close (helper threads join) without the GIL; the memory's owners go after,
        // once the plugin no longer touches it.
        py.detach(move || drop(engine));
        drop(owners);
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

    fn __repr__(&self, py: Python<'_>) -> String {
        let g = self.lock(py);
        match &g.engine {
            None => "tcpx.Session(closed)".into(),
            Some(e) => format!(
                "tcpx.Session(channels={}, devices={:?}, regions={}{})",
                e.config().channels,
                e.channel_devices(),
                g.owners.len(),
                e.broken()
                    .map_or(String::new(), |b| format!(", broken={b:?}")),
            ),
        }
    }
}
