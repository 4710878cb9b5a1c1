//! `tcpx.Config`: the engine's `Config`, from the `TCPX_*` environment with keyword overrides.

use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;
use tcpx::engine::{self, Devices};

use crate::error::{raise, IntoPy};

/// Engine settings. Starts from the `TCPX_*` environment (as `Config::from_env`), or from the
/// built-in defaults with `from_env=False`; keyword arguments override single fields. Both
/// peers must use the same `channels` and `chunk_bytes`.
#[pyclass(module = "tcpx", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct Config {
    pub(crate) inner: engine::Config,
}

#[pymethods]
impl Config {
    #[new]
    #[pyo3(signature = (*, from_env = true, channels = None, chunk_bytes = None,
        split_chunks = None, window = None, max_transfers = None, max_segments = None,
        timeout_ms = None, gpu = None, devices = None, plugin = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        from_env: bool,
        channels: Option<usize>,
        chunk_bytes: Option<u32>,
        split_chunks: Option<u16>,
        window: Option<usize>,
        max_transfers: Option<usize>,
        max_segments: Option<usize>,
        timeout_ms: Option<u64>,
        gpu: Option<i32>,
        devices: Option<DevicesArg>,
        plugin: Option<PathBuf>,
    ) -> PyResult<Config> {
        let mut c = if from_env {
            engine::Config::from_env().py_err()?
        } else {
            engine::Config::default()
        };
        if let Some(v) = channels {
            c.channels = v;
        }
        if let Some(v) = chunk_bytes {
            c.chunk_bytes = v;
        }
        if let Some(v) = split_chunks {
            c.split_chunks = v;
        }
        if let Some(v) = window {
            c.window = v;
        }
        if let Some(v) = max_transfers {
            c.max_transfers = v;
        }
        if let Some(v) = max_segments {
            c.max_segments = v;
        }
        if let Some(v) = timeout_ms {
            c.timeout = Duration::from_millis(v);
        }
        if let Some(v) = gpu {
            c.gpu = Some(v);
        }
        if let Some(v) = devices {
            c.devices = v.parse()?;
        }
        if let Some(p) = plugin {
            c.plugin = (!p.as_os_str().is_empty()).then_some(p);
        }
        c.validate().py_err()?;
        Ok(Config { inner: c })
    }

    /// Channels (send comm + recv comm pairs) per session.
    #[getter]
    fn channels(&self) -> usize {
        self.inner.channels
    }

    /// Bytes per chunk (one ncclNet request), at most 4 MiB.
    #[getter]
    fn chunk_bytes(&self) -> u32 {
        self.inner.chunk_bytes
    }

    /// A transfer shorter than this many chunks is cut into about this many smaller ones (at
    /// least 128 KiB); 1 = never. A session uses the smaller of its two ends' values (its
    /// `config` shows the one in use). Default: 8 on a host with at least 8 CPUs, else 1.
    #[getter]
    fn split_chunks(&self) -> u16 {
        self.inner.split_chunks
    }

    /// In-flight chunks per channel and direction.
    #[getter]
    fn window(&self) -> usize {
        self.inner.window
    }

    /// Transfers that may be live (posted, not released) at once per session.
    #[getter]
    fn max_transfers(&self) -> usize {
        self.inner.max_transfers
    }

    /// Segments per transfer.
    #[getter]
    fn max_segments(&self) -> usize {
        self.inner.max_segments
    }

    /// Bound on the handshake and on a silent peer, and the default of `Transfer.wait`.
    #[getter]
    fn timeout_ms(&self) -> u64 {
        self.inner.timeout.as_millis() as u64
    }

    /// The session's CUDA device; `None` = the device current when the session is created.
    #[getter]
    fn gpu(&self) -> Option<i32> {
        self.inner.gpu
    }

    /// Plugin devices (NICs) of the channels: `"auto"`, `"all"` or a list such as `"0,2"`.
    #[getter]
    fn devices(&self) -> String {
        self.inner.devices.to_string()
    }

    /// The ncclNet plugin's path; `None` = the embedded `tcpxsock`.
    #[getter]
    fn plugin(&self) -> Option<PathBuf> {
        self.inner.plugin.clone()
    }

    fn __repr__(&self) -> String {
        let c = &self.inner;
        format!(
            "tcpx.Config(channels={}, chunk_bytes={}, split_chunks={}, window={}, max_transfers={}, \
             max_segments={}, timeout_ms={}, gpu={}, devices={:?}, plugin={})",
            c.channels,
            c.chunk_bytes,
            c.split_chunks,
            c.window,
            c.max_transfers,
            c.max_segments,
            c.timeout.as_millis(),
            c.gpu.map_or("None".into(), |g| g.to_string()),
            c.devices.to_string(),
            c.plugin
                .as_ref()
                .map_or("None".into(), |p| format!("{:?}", p.display().to_string())),
        )
    }
}

/// `devices=`: `"auto"`, `"all"`, `"0,2"`, one index, or a sequence of indices.
#[derive(FromPyObject)]
enum DevicesArg {
    Text(String),
    One(u8),
    List(Vec<u8>),
}

impl DevicesArg {
    fn parse(self) -> PyResult<Devices> {
        let text = match self {
            DevicesArg::Text(t) => t,
            DevicesArg::One(d) => return Ok(Devices::one(d)),
            DevicesArg::List(l) => l.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
        };
        Devices::parse(&text).map_err(|e| {
            raise(
                "ConfigError",
                format!("configuration: devices={text:?}: {e}"),
            )
        })
    }
}
