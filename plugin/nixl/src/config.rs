//! Backend parameters: the options NIXL shows users (`get_backend_options`) and their
//! validation when an engine is created.
//!
//! A value that does not parse or lies outside its range fails creation with a message that
//! names the parameter; so does an unknown key, because a misspelt option would otherwise be
//! silently ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tcpx_core::window::TCPX_WINDOW;
use tcpx_core::wire::{MAX_CHANNELS, MAX_INLINE, MAX_INLINE_WRITE};

use crate::error::Error;

/// Option names and defaults, in the order `get_backend_options` reports them.
pub const OPTIONS: [(&str, &str); 10] = [
    ("channels", "2"),
    ("chunk_bytes", "524288"),
    ("window", "16"),
    ("plugin_path", ""),
    ("listen_addr", ""),
    ("timeout_ms", "10000"),
    ("notif_queue_bytes", "67108864"),
    ("inline_read_bytes", "16384"),
    ("inline_write_bytes", "16384"),
    ("gpu", ""),
];

/// Smallest and largest accepted chunk size.
/// The engine's chunk range: TCPX receives at most 4 MiB per request.
const CHUNK_BYTES: (u64, u64) = (4096, tcpx_core::plan::MAX_CHUNK_BYTES as u64);
/// Largest accepted timeout: one hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Accepted bounds on the notification queue: room for a few of the largest notifications,
/// up to 1 TiB.
const NOTIF_QUEUE_BYTES: (u64, u64) = (64 * 1024, 1 << 40);

/// Validated backend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Data channels (ncclNet comms) per peer and direction.
    pub channels: u16,
    /// Bytes per chunk on a channel.
    pub chunk_bytes: u32,
    /// Chunks in flight per channel.
    pub window: u16,
    /// ncclNet plugin to load; `None` = the built-in tcpxsock.
    pub plugin_path: Option<PathBuf>,
    /// Where the control listener binds; an unspecified IP means "pick one to advertise".
    pub listen_addr: SocketAddr,
    /// Bound on waiting for a peer before a transfer fails.
    pub timeout: Duration,
    /// Bound on the notifications waiting for `getNotifs`, in bytes (each counts its message
    /// plus a fixed per-entry overhead).
    pub notif_queue_bytes: u64,
    /// READs of at most this many bytes travel inline on the control stream (one round trip,
    /// no data session); 0 = never. Each side applies its own. Device memory at either end
    /// is copied through host memory by the side that owns it.
    pub inline_read_bytes: u32,
    /// WRITEs of at most this many bytes carry their data in the announce on the control
    /// stream (no data session); 0 = never. Decided by the initiator; at most 16 KiB.
    pub inline_write_bytes: u32,
    /// The agent's GPU (CUDA device ordinal), known before any handshake: TCPX binds its
    /// comms and CUDA registrations to the device current at those calls, so the engine makes
    /// this one current around them, and VRAM of another device is refused. `None` as a
    /// parameter: env `TCPX_GPU`, else the device current on the thread that creates the
    /// backend (see [`Config::resolve_gpu`]); `None` once resolved: no CUDA driver.
    pub gpu: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 2,
            chunk_bytes: 524_288,
            window: TCPX_WINDOW as u16,
            plugin_path: None,
            listen_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            timeout: Duration::from_millis(10_000),
            notif_queue_bytes: 64 << 20,
            inline_read_bytes: 16 * 1024,
            inline_write_bytes: 16 * 1024,
            gpu: None,
        }
    }
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

fn number(key: &str, value: &str, min: u64, max: u64) -> Result<u64, Error> {
    let v: u64 = value
        .trim()
        .parse()
        .map_err(|_| bad(key, format!("{value:?} is not an unsigned integer")))?;
    if !(min..=max).contains(&v) {
        return Err(bad(key, format!("{v} is outside {min}..={max}")));
    }
    Ok(v)
}

/// `""` = any address and port; `ip` = that address, any port; `ip:port` / `[ip6]:port`.
fn listen_addr(key: &str, value: &str) -> Result<SocketAddr, Error> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(Config::default().listen_addr);
    }
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return Ok(sa);
    }
    value
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 0))
        .map_err(|_| bad(key, format!("{value:?} is not ip, ip:port or [ip6]:port")))
}

impl Config {
    /// Validates NIXL's custom parameters; keys left out keep their defaults.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        let mut c = Config::default();
        for (key, value) in params {
            match key {
                "channels" => c.channels = number(key, value, 1, MAX_CHANNELS as u64)? as u16,
                "chunk_bytes" => {
                    c.chunk_bytes = number(key, value, CHUNK_BYTES.0, CHUNK_BYTES.1)? as u32
                }
                "window" => c.window = number(key, value, 1, TCPX_WINDOW as u64)? as u16,
                "timeout_ms" => {
                    c.timeout = Duration::from_millis(number(key, value, 1, MAX_TIMEOUT_MS)?)
                }
                "listen_addr" => c.listen_addr = listen_addr(key, value)?,
                "inline_read_bytes" => {
                    c.inline_read_bytes = number(key, value, 0, MAX_INLINE as u64)? as u32
                }
                "inline_write_bytes" => {
                    c.inline_write_bytes = number(key, value, 0, MAX_INLINE_WRITE as u64)? as u32
                }
                "notif_queue_bytes" => {
                    c.notif_queue_bytes =
                        number(key, value, NOTIF_QUEUE_BYTES.0, NOTIF_QUEUE_BYTES.1)?
                }
                "gpu" => {
                    c.gpu = match value.trim() {
                        "" => None,
                        v => Some(number(key, v, 0, i32::MAX as u64)? as u32),
                    }
                }
                "plugin_path" => {
                    c.plugin_path = if value.is_empty() {
                        None
                    } else {
                        let p = PathBuf::from(value);
                        if !p.is_file() {
                            return Err(bad(key, format!("{value:?} is not a file")));
                        }
                        Some(p)
                    }
                }
                other => {
                    let known: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
                    return Err(bad(other, format!("unknown option; known: {known:?}")));
                }
            }
        }
        Ok(c)
    }
}

impl Config {
    /// Fills in the GPU when the `gpu` parameter left it out: `TCPX_GPU` from `env` (the
    /// engine's parser, so both read it alike), else `current` — the device current on the
    /// thread creating the backend, `None` without a CUDA driver.
    pub fn resolve_gpu(
        mut self,
        env: impl Fn(&str) -> Option<String>,
        current: impl FnOnce() -> Option<i32>,
    ) -> Result<Self, Error> {
        if self.gpu.is_none() {
            let from_env = tcpx::engine::Config::default()
                .with_vars(|k| if k == "TCPX_GPU" { env(k) } else { None })
                .map_err(|e| bad("gpu", format!("TCPX_GPU: {e}")))?
                .gpu;
            // Both are device ordinals (the engine refuses a negative TCPX_GPU).
            self.gpu = from_env
                .or_else(current)
                .and_then(|g| u32::try_from(g).ok());
        }
        Ok(self)
    }

    /// The settings as option strings (the keys of [`OPTIONS`]), with `listen_addr` replaced by
    /// the address actually bound.
    pub fn to_params(&self, bound: SocketAddr) -> Vec<(&'static str, String)> {
        let path = self
            .plugin_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        vec![
            ("channels", self.channels.to_string()),
            ("chunk_bytes", self.chunk_bytes.to_string()),
            ("window", self.window.to_string()),
            ("plugin_path", path),
            ("listen_addr", bound.to_string()),
            ("timeout_ms", self.timeout.as_millis().to_string()),
            ("notif_queue_bytes", self.notif_queue_bytes.to_string()),
            ("inline_read_bytes", self.inline_read_bytes.to_string()),
            ("inline_write_bytes", self.inline_write_bytes.to_string()),
            ("gpu", self.gpu.map(|g| g.to_string()).unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_to_default_config() {
        assert_eq!(Config::from_params(OPTIONS).unwrap(), Config::default());
        assert_eq!(Config::from_params([]).unwrap(), Config::default());
    }

    #[test]
    fn values_are_applied() {
        let c = Config::from_params([
            ("channels", "4"),
            ("chunk_bytes", "1048576"),
            ("window", "8"),
            ("listen_addr", "127.0.0.1:0"),
            ("timeout_ms", "50"),
            ("notif_queue_bytes", "65536"),
            ("inline_read_bytes", "0"),
            ("inline_write_bytes", "100"),
            ("gpu", "3"),
        ])
        .unwrap();
        assert_eq!(c.gpu, Some(3));
        assert_eq!(c.notif_queue_bytes, 65536);
        assert_eq!(c.inline_read_bytes, 0);
        assert_eq!(c.inline_write_bytes, 100);
        assert_eq!(c.channels, 4);
        assert_eq!(c.chunk_bytes, 1 << 20);
        assert_eq!(c.window, 8);
        assert_eq!(c.listen_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_millis(50));
        let ip_only = Config::from_params([("listen_addr", "::1")]).unwrap();
        assert_eq!(ip_only.listen_addr, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn reported_params_parse_back_to_the_same_config() {
        let c = Config::from_params([("channels", "3"), ("timeout_ms", "7")]).unwrap();
        let bound: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let p = c.to_params(bound);
        let keys: Vec<&str> = p.iter().map(|(k, _)| *k).collect();
        let want: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, want);
        let again = Config::from_params(p.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(again.listen_addr, bound);
        assert_eq!(
            Config {
                listen_addr: c.listen_addr,
                ..again
            },
            c
        );
    }

    #[test]
    fn the_gpu_parameter_wins_over_tcpx_gpu_and_the_current_device() {
        let env = |v: &'static str| move |k: &str| (k == "TCPX_GPU").then(|| v.to_owned());
        let none = |_: &str| None;
        let named = Config::from_params([("gpu", "2")]).unwrap();
        let r = named.clone().resolve_gpu(env("1"), || Some(0)).unwrap();
        assert_eq!(r.gpu, Some(2), "the parameter wins");
        let unnamed = Config::from_params([("gpu", "")]).unwrap();
        assert_eq!(unnamed.gpu, None);
        let r = unnamed.clone().resolve_gpu(env(" 1 "), || Some(0)).unwrap();
        assert_eq!(r.gpu, Some(1), "then TCPX_GPU");
        let r = unnamed.clone().resolve_gpu(env(""), || Some(0)).unwrap();
        assert_eq!(r.gpu, Some(0), "an empty TCPX_GPU is unset");
        let r = unnamed.clone().resolve_gpu(none, || Some(5)).unwrap();
        assert_eq!(r.gpu, Some(5), "then the current device");
        let r = unnamed.clone().resolve_gpu(none, || None).unwrap();
        assert_eq!(r.gpu, None, "no driver: no GPU");
        for bad_env in ["x", "-1"] {
            let e = unnamed
                .clone()
                .resolve_gpu(env(bad_env), || Some(0))
                .unwrap_err();
            assert!(
                matches!(&e, Error::Config { key, reason } if key == "gpu" && reason.contains("TCPX_GPU")),
                "TCPX_GPU={bad_env}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_parameter() {
        for (k, v) in [
            ("channels", "0"),
            ("channels", "17"),
            ("channels", "two"),
            ("chunk_bytes", "1"),
            ("window", "65"),
            ("timeout_ms", "0"),
            ("timeout_ms", "-5"),
            ("notif_queue_bytes", "4096"),
            ("inline_read_bytes", "32769"),
            ("inline_write_bytes", "16385"),
            ("listen_addr", "nowhere:1"),
            ("gpu", "-1"),
            ("gpu", "2147483648"),
            ("gpu", "first"),
            ("plugin_path", "/nonexistent/libnccl-net.so"),
            ("chanels", "2"),
        ] {
            let err = Config::from_params([(k, v)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { key, .. } if key == k),
                "{k}={v} gave {err}"
            );
        }
    }
}
