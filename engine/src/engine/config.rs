//! Engine configuration: fixed capacities and tunables, read once from the environment.
//!
//! Every capacity the hot path relies on is chosen here, before a `Session` exists, so that
//! `post`/`poll`/`release` never have to grow anything.

use std::path::PathBuf;
use std::time::Duration;

use tcpx_core::plan::MAX_SPLIT_CHUNKS;
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::size::parse_size;
use tcpx_core::topology::Devices;
use tcpx_core::unpack::MAX_RECV_BYTES;

use crate::error::Error;

/// Most channels a session may open (one listen handle per channel travels in the conn info).
pub const MAX_CHANNELS: usize = 16;

/// Engine tunables and capacities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// ncclNet plugin to load; `None` = the built-in `tcpxsock`.
    pub plugin: Option<PathBuf>,
    /// Which plugin devices (NICs) the channels use: `auto` (the default: the device(s)
    /// nearest the session's GPU — on A3 High the NIC behind its PCIe switch — or, for host
    /// memory, those on the thread's NUMA node; channels round-robin over them), `all` (every
    /// usable device, nearest first), or a list such as `0,2`. Env `TCPX_DEVICES`;
    /// `TCPX_DEVICE=n` is the one-element list.
    pub devices: Devices,
    /// Channels (send comm + recv comm pairs) per session.
    pub channels: usize,
    /// Bytes per chunk (one ncclNet request), at most 4 MiB. Env `TCPX_CHUNK_BYTES`, in the
    /// size syntax of `tcpx_core::size` (`512K`).
    pub chunk_bytes: u32,
    /// A transfer shorter than this many chunks is cut into about this many smaller ones
    /// (at least 128 KiB; `tcpx_core::plan::PlanConfig::sized_for`), `1..=64`, 1 = never;
    /// a session uses the smaller of its two ends' values. Default [`default_split_chunks`]:
    /// 8 on a host with at least 8 CPUs, else 1. Env `TCPX_SPLIT_CHUNKS`.
    pub split_chunks: u16,
    /// In-flight chunks per channel and direction.
    pub window: usize,
    /// Transfers that may exist at once per session.
    pub max_transfers: usize,
    /// Segments per transfer.
    pub max_segments: usize,
    /// Bound on the connect/accept handshake and on waiting for a silent peer.
    pub timeout: Duration,
    /// The session's GPU (CUDA device ordinal), known before the handshake: TCPX binds the
    /// listen comm, the recv comm and CUDA registrations to the device current on the calling
    /// thread, so the engine makes this one current around those calls. `None` = the device
    /// current on the thread that creates the session (none: no GPU until a registration
    /// names one, which an UNPACK plugin refuses). Env `TCPX_GPU`.
    pub gpu: Option<i32>,
}

/// The default [`Config::split_chunks`]: 8 where the host has at least 8 CPUs, else 1.
/// Cutting a 1 MiB transfer into eight chunks halved its median and cut its p99 six-fold on a
/// 16-core VM (the helpers of several channels run at once), and made its median 1.5x slower on
/// a 2-core one (more hand-offs than cores).
pub fn default_split_chunks() -> u16 {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() >= 8 => 8,
        _ => 1,
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            plugin: None,
            devices: Devices::Auto,
            channels: 2,
            chunk_bytes: 512 * 1024,
            split_chunks: default_split_chunks(),
            window: TCPX_REQUESTS,
            max_transfers: 64,
            max_segments: 1024,
            timeout: Duration::from_secs(10),
            gpu: None,
        }
    }
}

impl Config {
    /// Defaults overridden by `TCPX_PLUGIN`, `TCPX_DEVICE(S)`, `TCPX_CHANNELS`,
    /// `TCPX_CHUNK_BYTES`, `TCPX_SPLIT_CHUNKS`, `TCPX_WINDOW`, `TCPX_TIMEOUT_MS`, `TCPX_GPU`.
    pub fn from_env() -> Result<Config, Error> {
        Config::default().with_vars(|k| std::env::var(k).ok())
    }

    /// Applies overrides looked up by `get` (env names; NIXL passes its custom params here).
    pub fn with_vars(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Config, Error> {
        if let Some(p) = get("TCPX_PLUGIN").filter(|p| !p.is_empty()) {
            self.plugin = Some(PathBuf::from(p));
        }
        if let Some(v) = get("TCPX_DEVICE").filter(|v| !v.trim().is_empty()) {
            self.devices = Devices::one(parse("TCPX_DEVICE", &v)?);
        }
        if let Some(v) = get("TCPX_DEVICES").filter(|v| !v.trim().is_empty()) {
            self.devices = Devices::parse(&v)
                .map_err(|e| Error::Config(format!("TCPX_DEVICES={v:?}: {e}")))?;
        }
        if let Some(v) = get("TCPX_CHANNELS") {
            self.channels = parse("TCPX_CHANNELS", &v)?;
        }
        if let Some(v) = get("TCPX_CHUNK_BYTES") {
            self.chunk_bytes = size("TCPX_CHUNK_BYTES", &v).and_then(|n| {
                u32::try_from(n).map_err(|_| {
                    Error::Config(format!(
                        "TCPX_CHUNK_BYTES={v:?}: chunk_bytes not in 1..={MAX_RECV_BYTES}"
                    ))
                })
            })?;
        }
        if let Some(v) = get("TCPX_SPLIT_CHUNKS") {
            self.split_chunks = parse("TCPX_SPLIT_CHUNKS", &v)?;
        }
        if let Some(v) = get("TCPX_WINDOW") {
            self.window = parse("TCPX_WINDOW", &v)?;
        }
        if let Some(v) = get("TCPX_TIMEOUT_MS") {
            self.timeout = Duration::from_millis(parse("TCPX_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("TCPX_GPU").filter(|v| !v.trim().is_empty()) {
            self.gpu = Some(parse("TCPX_GPU", &v)?);
        }
        self.validate()?;
        Ok(self)
    }

    /// Rejects values the engine or TCPX cannot honour.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: &str, why: String| Err(Error::Config(format!("{what}: {why}")));
        if self.channels == 0 || self.channels > MAX_CHANNELS {
            return bad(
                "channels",
                format!("{} not in 1..={MAX_CHANNELS}", self.channels),
            );
        }
        if self.chunk_bytes == 0 || self.chunk_bytes as usize > MAX_RECV_BYTES {
            return bad(
                "chunk_bytes",
                format!("{} not in 1..={MAX_RECV_BYTES}", self.chunk_bytes),
            );
        }
        if self.split_chunks == 0 || self.split_chunks > MAX_SPLIT_CHUNKS {
            return bad(
                "split_chunks",
                format!("{} not in 1..={MAX_SPLIT_CHUNKS}", self.split_chunks),
            );
        }
        if self.window == 0 || self.window > TCPX_REQUESTS {
            return bad(
                "window",
                format!("{} not in 1..={TCPX_REQUESTS}", self.window),
            );
        }
        if self.max_transfers == 0 || self.max_transfers > 4096 {
            return bad(
                "max_transfers",
                format!("{} not in 1..=4096", self.max_transfers),
            );
        }
        if self.max_segments == 0 || self.max_segments > tcpx_core::plan::MAX_SEGMENTS {
            return bad(
                "max_segments",
                format!(
                    "{} not in 1..={}",
                    self.max_segments,
                    tcpx_core::plan::MAX_SEGMENTS
                ),
            );
        }
        if self.gpu.is_some_and(|g| g < 0) {
            return bad(
                "gpu",
                format!("{:?} is not a CUDA device ordinal", self.gpu),
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be positive".into());
        }
        Ok(())
    }
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, Error> {
    v.trim()
        .parse()
        .map_err(|_| Error::Config(format!("{name}={v:?} is not a valid number")))
}

/// A byte count in the one size syntax (`tcpx_core::size`: `524288`, `512K`, `4M`).
fn size(name: &str, v: &str) -> Result<u64, Error> {
    parse_size(v).map_err(|e| Error::Config(format!("{name}={v:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn overrides_apply_and_bad_values_are_named() {
        let c = Config::default()
            .with_vars(vars(&[
                ("TCPX_CHANNELS", "4"),
                ("TCPX_CHUNK_BYTES", "1048576"),
            ]))
            .unwrap();
        assert_eq!((c.channels, c.chunk_bytes), (4, 1 << 20));
        let e = Config::default()
            .with_vars(vars(&[("TCPX_CHANNELS", "x")]))
            .unwrap_err();
        assert!(e.to_string().contains("TCPX_CHANNELS"), "{e}");
        let e = Config::default()
            .with_vars(vars(&[("TCPX_CHUNK_BYTES", "8388608")]))
            .unwrap_err();
        assert!(e.to_string().contains("chunk_bytes"), "{e}");
        let c = Config::default()
            .with_vars(vars(&[("TCPX_CHUNK_BYTES", " 1m ")]))
            .unwrap();
        assert_eq!(c.chunk_bytes, 1 << 20, "sizes take K/M/G suffixes");
        for bad in ["", "x", "512KB", "1.5M", "-1", "99999999999999999999"] {
            let e = Config::default()
                .with_vars(vars(&[("TCPX_CHUNK_BYTES", bad)]))
                .unwrap_err();
            assert!(
                e.to_string().contains(&format!("TCPX_CHUNK_BYTES={bad:?}")),
                "{bad:?}: {e}"
            );
        }
        let e = Config::default()
            .with_vars(vars(&[("TCPX_CHUNK_BYTES", "8G")]))
            .unwrap_err();
        assert!(e.to_string().contains("chunk_bytes not in"), "{e}");
        let e = Config::default()
            .with_vars(vars(&[("TCPX_WINDOW", "17")]))
            .unwrap_err();
        assert!(e.to_string().contains("window"), "{e}");
        let c = Config::default()
            .with_vars(vars(&[("TCPX_SPLIT_CHUNKS", "4")]))
            .unwrap();
        assert_eq!(c.split_chunks, 4);
        for bad in ["0", "65", "x"] {
            let e = Config::default()
                .with_vars(vars(&[("TCPX_SPLIT_CHUNKS", bad)]))
                .unwrap_err();
            assert!(
                e.to_string().contains("split_chunks")
                    || e.to_string().contains("TCPX_SPLIT_CHUNKS"),
                "{bad}: {e}"
            );
        }
        assert!([1, 8].contains(&default_split_chunks()));
    }
}
