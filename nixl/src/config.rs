//! Backend parameters: the options NIXL shows users (`get_backend_options`), the environment
//! variables that set them too, and their validation when an engine is created.
//!
//! Every option has an environment variable: the engine's own names for the engine's settings
//! (`TCPX_CHANNELS`, `TCPX_PLUGIN`, …, read through `tcpx::engine::Config::with_vars` where the
//! engine gives them a meaning of their own) and `TCPX_NIXL_*` for the backend's. A NIXL
//! parameter with a value overrides its variable; an empty one (the default of `plugin_path`,
//! `listen_addr`, `gpu`) leaves the variable in effect. So an agent created with
//! `nixl_agent_config(backends=["TCPX"])`, which passes no parameters, is configured from the
//! environment alone.
//!
//! Sizes (`*_bytes`) take the one size syntax of every layer (`tcpx_core::size`: `524288`,
//! `512K`, `64M`; binary multiples). A value that does not parse or lies outside its range
//! fails creation with a message that names the parameter and the value (and the variable it
//! came from); so does an unknown key, because a misspelt option would otherwise be silently
//! ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tcpx::engine::{Config as EngineConfig, Devices};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::size::{parse_size, Size};
use tcpx_core::wire::{MAX_CHANNELS, MAX_INLINE, MAX_INLINE_WRITE, MAX_NOTIF};

use crate::error::Error;

/// Option names and defaults, in the order `get_backend_options` reports them.
pub const OPTIONS: [(&str, &str); 13] = [
    ("channels", "2"),
    ("chunk_bytes", "524288"),
    ("split_chunks", "auto"),
    ("window", "16"),
    ("plugin_path", ""),
    ("devices", "auto"),
    ("listen_addr", ""),
    ("timeout_ms", "10000"),
    ("notif_queue_bytes", "67108864"),
    ("max_notif_bytes", "1048576"),
    ("inline_read_bytes", "16384"),
    ("inline_write_bytes", "16384"),
    ("gpu", ""),
];

/// Each option's environment variable. `TCPX_DEVICE=n` (the engine's one-device form of
/// `TCPX_DEVICES`) sets `devices` too.
pub const ENV: [(&str, &str); 13] = [
    ("channels", "TCPX_CHANNELS"),
    ("chunk_bytes", "TCPX_CHUNK_BYTES"),
    ("split_chunks", "TCPX_SPLIT_CHUNKS"),
    ("window", "TCPX_WINDOW"),
    ("plugin_path", "TCPX_PLUGIN"),
    ("devices", "TCPX_DEVICES"),
    ("listen_addr", "TCPX_NIXL_LISTEN_ADDR"),
    ("timeout_ms", "TCPX_TIMEOUT_MS"),
    ("notif_queue_bytes", "TCPX_NIXL_NOTIF_QUEUE_BYTES"),
    ("max_notif_bytes", "TCPX_NIXL_MAX_NOTIF_BYTES"),
    ("inline_read_bytes", "TCPX_NIXL_INLINE_READ_BYTES"),
    ("inline_write_bytes", "TCPX_NIXL_INLINE_WRITE_BYTES"),
    ("gpu", "TCPX_GPU"),
];

/// Smallest and largest accepted chunk size.
/// The engine's chunk range: TCPX receives at most 4 MiB per request.
const CHUNK_BYTES: (u64, u64) = (4096, tcpx_core::plan::MAX_CHUNK_BYTES as u64);
/// Largest accepted timeout: one hour.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Accepted bounds on the notification queue: room for a few notifications, up to 1 TiB.
const NOTIF_QUEUE_BYTES: (u64, u64) = (64 * 1024, 1 << 40);
/// What one queued notification counts against `notif_queue_bytes` besides its bytes: the
/// queue slot and the message's allocation header, rounded up.
pub const NOTIF_OVERHEAD: u64 = 64;

/// Validated backend configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Data channels (ncclNet comms) per peer and direction.
    pub channels: u16,
    /// Bytes per chunk on a channel.
    pub chunk_bytes: u32,
    /// A transfer shorter than this many chunks is cut into about this many smaller ones
    /// (`tcpx::engine::Config::split_chunks`); `auto` = 8 on a host with at least 8 CPUs,
    /// else 1.
    pub split_chunks: u16,
    /// Chunks in flight per channel.
    pub window: u16,
    /// ncclNet plugin to load; `None` = the built-in tcpxsock.
    pub plugin_path: Option<PathBuf>,
    /// Which plugin devices (NICs) the channels use (`tcpx::engine::Config::devices`).
    pub devices: Devices,
    /// Where the control listener binds; an unspecified IP means "pick one to advertise".
    pub listen_addr: SocketAddr,
    /// Bound on waiting for a peer before a transfer fails.
    pub timeout: Duration,
    /// Bound on the notifications waiting for `getNotifs`, in bytes (each counts its message
    /// plus [`NOTIF_OVERHEAD`]); at least one of the largest must fit.
    pub notif_queue_bytes: u64,
    /// Longest notification this agent takes from a peer (peers learn it in the handshake and
    /// refuse to send more); at most the wire's 16 MiB.
    pub max_notif_bytes: u32,
    /// READs of at most this many bytes travel inline on the control stream (one round trip,
    /// no data session); 0 = never. Each side applies its own. Device memory at either end
    /// is copied through host memory by the side that owns it.
    pub inline_read_bytes: u32,
    /// WRITEs of at most this many bytes carry their data in the announce on the control
    /// stream (no data session); 0 = never. Decided by the initiator; at most 16 KiB.
    pub inline_write_bytes: u32,
    /// The agent's GPU (CUDA device ordinal), known before any handshake: TCPX binds its
    /// comms and CUDA registrations to the device current at those calls, so the engine makes
    /// this one current around them, and VRAM of another device is refused. `None` as read:
    /// neither the parameter nor `TCPX_GPU` names one, so the device current on the thread
    /// that creates the backend is taken ([`Config::resolve_gpu`]); `None` once resolved: no
    /// CUDA driver.
    pub gpu: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channels: 2,
            chunk_bytes: 524_288,
            split_chunks: tcpx::engine::default_split_chunks(),
            window: TCPX_REQUESTS as u16,
            plugin_path: None,
            devices: Devices::Auto,
            listen_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            timeout: Duration::from_millis(10_000),
            notif_queue_bytes: 64 << 20,
            max_notif_bytes: 1 << 20,
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

/// A byte count in the one size syntax (`tcpx_core::size`: `524288`, `512K`, `64M`), in
/// `min..=max`.
fn size(key: &str, value: &str, min: u64, max: u64) -> Result<u64, Error> {
    let v = parse_size(value).map_err(|e| bad(key, format!("{value:?}: {e}")))?;
    if !(min..=max).contains(&v) {
        return Err(bad(
            key,
            format!(
                "{v} is outside {min}..={max} ({}..={})",
                Size(min),
                Size(max)
            ),
        ));
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
    /// Validates NIXL's custom parameters alone; options left out keep their defaults (no
    /// environment: for tests and tools).
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        Self::from_sources(params, |_| None)
    }

    /// The configuration from NIXL's custom parameters over the environment read through
    /// `env`: defaults, then each variable that is set (non-blank) and not overridden by a
    /// parameter with a value, then the parameters.
    pub fn from_sources<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        let params: Vec<(&str, &str)> = params.into_iter().collect();
        if let Some((other, _)) = params
            .iter()
            .find(|(k, _)| !OPTIONS.iter().any(|(o, _)| o == k))
        {
            let known: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
            return Err(bad(other, format!("unknown option; known: {known:?}")));
        }
        let given = |option: &str| params.iter().any(|(k, v)| *k == option && !v.is_empty());
        let shadowed = |var: &str| {
            ENV.iter().any(|(o, v)| *v == var && given(o))
                || (var == "TCPX_DEVICE" && given("devices"))
        };
        let from_env = |var: &str| {
            env(var)
                .filter(|v| !v.trim().is_empty())
                .filter(|_| !shadowed(var))
        };
        let mut c = Config::default();
        for (key, var) in ENV {
            if matches!(key, "devices" | "gpu") {
                continue; // read below, with the engine's meaning
            }
            if let Some(v) = from_env(var) {
                c.apply(key, &v).map_err(|e| match e {
                    Error::Config { key, reason } => Error::Config {
                        key,
                        reason: {
                            // The variable's assignment names the value already.
                            let quoted = format!("{v:?}: ");
                            let why = reason.strip_prefix(&quoted).unwrap_or(&reason);
                            format!("{var}={v:?}: {why}")
                        },
                    },
                    other => other,
                })?;
            }
        }
        // The engine's own readers: TCPX_DEVICES (or TCPX_DEVICE=n), TCPX_GPU.
        let engine = |key: &str, vars: &[&str]| {
            EngineConfig::default()
                .with_vars(|k| vars.contains(&k).then(|| from_env(k)).flatten())
                .map_err(|e| {
                    let set: Vec<String> = vars
                        .iter()
                        .filter_map(|v| from_env(v).map(|x| format!("{v}={x:?}")))
                        .collect();
                    bad(key, format!("{}: {e}", set.join(" ")))
                })
        };
        c.devices = engine("devices", &["TCPX_DEVICE", "TCPX_DEVICES"])?.devices;
        // The engine refuses a negative TCPX_GPU, so the ordinal fits.
        c.gpu = engine("gpu", &["TCPX_GPU"])?.gpu.map(|g| g as u32);
        for (key, value) in params {
            if !value.is_empty() || !matches!(key, "plugin_path" | "listen_addr" | "gpu") {
                c.apply(key, value)?;
            }
        }
        if c.notif_queue_bytes < u64::from(c.max_notif_bytes) + NOTIF_OVERHEAD {
            return Err(bad(
                "notif_queue_bytes",
                format!(
                    "{} cannot hold one notification of max_notif_bytes {} (+{NOTIF_OVERHEAD})",
                    c.notif_queue_bytes, c.max_notif_bytes
                ),
            ));
        }
        Ok(c)
    }

    /// Sets option `key` from `value`.
    fn apply(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let c = self;
        match key {
            "channels" => c.channels = number(key, value, 1, MAX_CHANNELS as u64)? as u16,
            "chunk_bytes" => c.chunk_bytes = size(key, value, CHUNK_BYTES.0, CHUNK_BYTES.1)? as u32,
            "split_chunks" => {
                c.split_chunks = match value.trim() {
                    "auto" | "" => tcpx::engine::default_split_chunks(),
                    v => number(key, v, 1, tcpx_core::plan::MAX_SPLIT_CHUNKS.into())? as u16,
                }
            }
            "window" => c.window = number(key, value, 1, TCPX_REQUESTS as u64)? as u16,
            "timeout_ms" => {
                c.timeout = Duration::from_millis(number(key, value, 1, MAX_TIMEOUT_MS)?)
            }
            "listen_addr" => c.listen_addr = listen_addr(key, value)?,
            "inline_read_bytes" => {
                c.inline_read_bytes = size(key, value, 0, MAX_INLINE as u64)? as u32
            }
            "inline_write_bytes" => {
                c.inline_write_bytes = size(key, value, 0, MAX_INLINE_WRITE as u64)? as u32
            }
            "notif_queue_bytes" => {
                c.notif_queue_bytes = size(key, value, NOTIF_QUEUE_BYTES.0, NOTIF_QUEUE_BYTES.1)?
            }
            "max_notif_bytes" => c.max_notif_bytes = size(key, value, 0, MAX_NOTIF as u64)? as u32,
            "devices" => {
                c.devices = match value.trim() {
                    "" => Devices::Auto,
                    v => v
                        .parse()
                        .map_err(|e| bad(key, format!("{value:?}: {e} (auto, all or 0,2,…)")))?,
                }
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
            other => return Err(bad(other, "unknown option")),
        }
        Ok(())
    }

    /// Fills in the GPU when neither the `gpu` parameter nor `TCPX_GPU` named one: `current`,
    /// the device current on the thread creating the backend (`None` without a CUDA driver).
    pub fn resolve_gpu(mut self, current: impl FnOnce() -> Option<i32>) -> Self {
        if self.gpu.is_none() {
            self.gpu = current().and_then(|g| u32::try_from(g).ok());
        }
        self
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
            ("split_chunks", self.split_chunks.to_string()),
            ("window", self.window.to_string()),
            ("plugin_path", path),
            ("devices", self.devices.to_string()),
            ("listen_addr", bound.to_string()),
            ("timeout_ms", self.timeout.as_millis().to_string()),
            ("notif_queue_bytes", self.notif_queue_bytes.to_string()),
            ("max_notif_bytes", self.max_notif_bytes.to_string()),
            ("inline_read_bytes", self.inline_read_bytes.to_string()),
            ("inline_write_bytes", self.inline_write_bytes.to_string()),
            ("gpu", self.gpu.map(|g| g.to_string()).unwrap_or_default()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults_parse_to_default_config() {
        assert_eq!(Config::from_params(OPTIONS).unwrap(), Config::default());
        assert_eq!(Config::from_params([]).unwrap(), Config::default());
        let keys: Vec<&str> = ENV.iter().map(|(k, _)| *k).collect();
        let options: Vec<&str> = OPTIONS.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys, options,
            "every option has its variable, in the same order"
        );
    }

    #[test]
    fn values_are_applied() {
        let c = Config::from_params([
            ("channels", "4"),
            ("chunk_bytes", "1048576"),
            ("window", "8"),
            ("devices", "0,2"),
            ("listen_addr", "127.0.0.1:0"),
            ("timeout_ms", "50"),
            ("notif_queue_bytes", "65536"),
            ("max_notif_bytes", "4096"),
            ("inline_read_bytes", "0"),
            ("inline_write_bytes", "100"),
            ("gpu", "3"),
        ])
        .unwrap();
        assert_eq!(c.gpu, Some(3));
        assert_eq!(c.notif_queue_bytes, 65536);
        assert_eq!(c.max_notif_bytes, 4096);
        assert_eq!(c.inline_read_bytes, 0);
        assert_eq!(c.inline_write_bytes, 100);
        assert_eq!(c.channels, 4);
        assert_eq!(c.chunk_bytes, 1 << 20);
        assert_eq!(c.window, 8);
        assert_eq!(c.devices, "0,2".parse().unwrap());
        assert_eq!(c.listen_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_millis(50));
        let ip_only = Config::from_params([("listen_addr", "::1")]).unwrap();
        assert_eq!(ip_only.listen_addr, "[::1]:0".parse().unwrap());
    }

    #[test]
    fn sizes_take_suffixes_from_parameters_and_variables() {
        let c = Config::from_sources(
            [("chunk_bytes", "1M"), ("inline_read_bytes", "8k")],
            vars(&[
                ("TCPX_NIXL_NOTIF_QUEUE_BYTES", "1G"),
                ("TCPX_NIXL_MAX_NOTIF_BYTES", " 2m "),
                ("TCPX_NIXL_INLINE_WRITE_BYTES", "16K"),
            ]),
        )
        .unwrap();
        assert_eq!((c.chunk_bytes, c.inline_read_bytes), (1 << 20, 8 << 10));
        assert_eq!((c.notif_queue_bytes, c.max_notif_bytes), (1 << 30, 2 << 20));
        assert_eq!(c.inline_write_bytes, 16 << 10);
        let e = Config::from_params([("chunk_bytes", "512KB")]).unwrap_err();
        assert!(
            e.to_string().contains("\"512KB\": not a size"),
            "names the value and why: {e}"
        );
        let e = Config::from_sources([], vars(&[("TCPX_CHUNK_BYTES", "lots")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("TCPX_CHUNK_BYTES=\"lots\": not a size"),
            "names the variable and the value once: {e}"
        );
    }

    #[test]
    fn reported_params_parse_back_to_the_same_config() {
        let c = Config::from_params([("channels", "3"), ("timeout_ms", "7"), ("devices", "all")])
            .unwrap();
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
    fn every_option_comes_from_its_variable_and_a_parameter_overrides_it() {
        let env = [
            ("TCPX_CHANNELS", "4"),
            ("TCPX_CHUNK_BYTES", "1048576"),
            ("TCPX_WINDOW", "8"),
            ("TCPX_DEVICES", "1,0"),
            ("TCPX_TIMEOUT_MS", "1234"),
            ("TCPX_GPU", "1"),
            ("TCPX_NIXL_LISTEN_ADDR", "127.0.0.1:0"),
            ("TCPX_NIXL_NOTIF_QUEUE_BYTES", "8388608"),
            ("TCPX_NIXL_MAX_NOTIF_BYTES", "2097152"),
            ("TCPX_NIXL_INLINE_READ_BYTES", "0"),
            ("TCPX_NIXL_INLINE_WRITE_BYTES", "512"),
        ];
        let c = Config::from_sources([], vars(&env)).unwrap();
        assert_eq!((c.channels, c.chunk_bytes, c.window), (4, 1 << 20, 8));
        assert_eq!(c.devices, "1,0".parse().unwrap());
        assert_eq!(c.timeout, Duration::from_millis(1234));
        assert_eq!(c.gpu, Some(1));
        assert_eq!(c.listen_addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!((c.notif_queue_bytes, c.max_notif_bytes), (8 << 20, 2 << 20));
        assert_eq!((c.inline_read_bytes, c.inline_write_bytes), (0, 512));
        // Parameters with a value win; an empty one leaves the variable in effect.
        let c = Config::from_sources(
            [
                ("channels", "3"),
                ("devices", "all"),
                ("gpu", ""),
                ("timeout_ms", "9"),
            ],
            vars(&env),
        )
        .unwrap();
        assert_eq!((c.channels, c.timeout), (3, Duration::from_millis(9)));
        assert_eq!(c.devices, Devices::All);
        assert_eq!(c.gpu, Some(1), "gpu \"\" leaves TCPX_GPU in effect");
        // TCPX_DEVICE=n is the engine's one-device form; TCPX_DEVICES wins over it.
        let one = Config::from_sources([], vars(&[("TCPX_DEVICE", "2")])).unwrap();
        assert_eq!(one.devices, Devices::one(2));
        let both = Config::from_sources([], vars(&[("TCPX_DEVICE", "2"), ("TCPX_DEVICES", "all")]))
            .unwrap();
        assert_eq!(both.devices, Devices::All);
        // A parameter overriding a bad variable: the variable is never read.
        let c = Config::from_sources([("channels", "2")], vars(&[("TCPX_CHANNELS", "x")]));
        assert_eq!(c.unwrap().channels, 2);
        // Blank variables are unset.
        let c = Config::from_sources([], vars(&[("TCPX_CHANNELS", " "), ("TCPX_GPU", "")]));
        assert_eq!(c.unwrap(), Config::default());
    }

    #[test]
    fn a_bad_variable_names_the_option_and_the_variable() {
        for (var, value, key) in [
            ("TCPX_CHANNELS", "x", "channels"),
            ("TCPX_CHUNK_BYTES", "1", "chunk_bytes"),
            ("TCPX_WINDOW", "17", "window"),
            ("TCPX_TIMEOUT_MS", "0", "timeout_ms"),
            ("TCPX_PLUGIN", "/nonexistent/libnccl-net.so", "plugin_path"),
            ("TCPX_DEVICES", "first", "devices"),
            ("TCPX_DEVICE", "-1", "devices"),
            ("TCPX_GPU", "x", "gpu"),
            ("TCPX_GPU", "-1", "gpu"),
            ("TCPX_NIXL_LISTEN_ADDR", "nowhere", "listen_addr"),
            ("TCPX_NIXL_MAX_NOTIF_BYTES", "16777217", "max_notif_bytes"),
            ("TCPX_NIXL_MAX_NOTIF_BYTES", "17M", "max_notif_bytes"),
            ("TCPX_CHUNK_BYTES", "lots", "chunk_bytes"),
            ("TCPX_NIXL_NOTIF_QUEUE_BYTES", "64Q", "notif_queue_bytes"),
            (
                "TCPX_NIXL_INLINE_WRITE_BYTES",
                "16385",
                "inline_write_bytes",
            ),
        ] {
            let e = Config::from_sources([], vars(&[(var, value)])).unwrap_err();
            assert!(
                matches!(&e, Error::Config { key: k, reason } if k == key && reason.contains(var)),
                "{var}={value}: {e}"
            );
        }
    }

    #[test]
    fn the_gpu_is_the_parameter_then_tcpx_gpu_then_the_current_device() {
        let env = |v: &'static str| move |k: &str| (k == "TCPX_GPU").then(|| v.to_owned());
        let none = |_: &str| None;
        let named = Config::from_sources([("gpu", "2")], env("1")).unwrap();
        assert_eq!(
            named.resolve_gpu(|| Some(0)).gpu,
            Some(2),
            "the parameter wins"
        );
        let c = Config::from_sources([("gpu", "")], env(" 1 ")).unwrap();
        assert_eq!(c.resolve_gpu(|| Some(0)).gpu, Some(1), "then TCPX_GPU");
        let c = Config::from_sources([], env("")).unwrap();
        assert_eq!(
            c.resolve_gpu(|| Some(0)).gpu,
            Some(0),
            "an empty TCPX_GPU is unset"
        );
        let c = Config::from_sources([], none).unwrap();
        assert_eq!(
            c.clone().resolve_gpu(|| Some(5)).gpu,
            Some(5),
            "then the current device"
        );
        assert_eq!(c.resolve_gpu(|| None).gpu, None, "no driver: no GPU");
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
            ("devices", "nics"),
            ("devices", "0,0"),
            ("notif_queue_bytes", "4096"),
            ("notif_queue_bytes", "1048576"),
            ("notif_queue_bytes", "2T"),
            ("notif_queue_bytes", "64MB"),
            ("chunk_bytes", ""),
            ("chunk_bytes", "8M"),
            ("chunk_bytes", "1.5M"),
            ("chunk_bytes", "99999999999999999999"),
            ("max_notif_bytes", "16777217"),
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
        // The queue must hold one notification of the largest size.
        let e = Config::from_params([("notif_queue_bytes", "65536")]).unwrap_err();
        assert!(e.to_string().contains("max_notif_bytes"), "{e}");
        Config::from_params([("notif_queue_bytes", "65536"), ("max_notif_bytes", "65472")])
            .unwrap();
    }
}
