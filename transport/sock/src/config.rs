//! Plugin configuration: read once from `TCPX_SOCK_*` env at `init`, or set from Rust.
//!
//! In-process users (tests, the engine's embedded default) call [`configure`] before `init`
//! so they do not depend on the process environment.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use tcpx_core::size::parse_size;
use tcpx_core::unpack::{MAX_RECV_BYTES, PAGE_SIZE};

/// Default data sockets per comm (Google's TCPX settings: 4 sockets × 1 thread).
pub const DEFAULT_NSOCKS: usize = 4;
/// Default chunk size per data socket turn (GCP's `NCCL_DYNAMIC_CHUNK_SIZE`).
pub const DEFAULT_CHUNK_BYTES: usize = 512 << 10;
/// Default largest payload sent inline on the control socket.
pub const DEFAULT_INLINE_BYTES: usize = 64 << 10;
/// Most bytes any one request may carry inline.
pub const MAX_INLINE_BYTES: usize = 1 << 20;
/// Default largest request the calling thread moves itself when its comm is idle.
pub const DEFAULT_DIRECT_BYTES: usize = 256 << 10;
/// Largest `direct_bytes`.
pub const MAX_DIRECT_BYTES: usize = 1 << 20;
/// Default bounce pool per GPU (per process without CUDA) in TCPX mode, shared by all recv
/// comms of that GPU: NCCL has at most 4 MiB in flight per receive connection, so this covers
/// about 60 connections receiving at once.
pub const DEFAULT_BOUNCE_BYTES: usize = 256 << 20;
/// Most data sockets per comm (what a hello may announce).
pub const MAX_NSOCKS: usize = tcpx_core::wire::sock::MAX_SOCKETS;
/// Default CUDA staging ring per send comm: 32 requests of 512 KiB, 4 of TCPX's largest.
pub const DEFAULT_STAGE_BYTES: usize = 16 << 20;
/// Default time a lane's staging kernel waits for more work before it exits: long enough to
/// stay up between a stream of transfers (every relaunch costs the caller's thread a driver
/// call), short enough that a `cudaDeviceSynchronize` after the last send barely notices.
pub const DEFAULT_STAGE_IDLE_US: usize = 1000;
/// Largest bounce pool: every `src_off` (an offset from the pool's base) must fit in 32 bits.
pub const MAX_BOUNCE_BYTES: usize = 4 << 30;
/// Longest `accept_delay_ms` (TCPX's own wait is 5 s).
pub const MAX_ACCEPT_DELAY_MS: usize = 600_000;

/// Everything that can be tuned; see the crate README for the env names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interface selection in `NCCL_SOCKET_IFNAME` syntax; `None` = default choice.
    pub ifname: Option<String>,
    /// Data sockets (and helper threads) per comm.
    pub nsocks: usize,
    /// Bytes per chunk; a multiple of the 4 KiB page.
    pub chunk_bytes: usize,
    /// Payloads up to this size travel inline on the control socket.
    pub inline_bytes: usize,
    /// A host-memory request up to this size (one chunk at most) on a comm with nothing else
    /// in flight is moved on its data socket by the calling thread instead of the socket's
    /// helper: the two thread hand-offs are most of a lone mid-size request's latency. `isend`
    /// writes a first 64 KiB piece and gives the rest to the helper at once; a receive is read
    /// as its bytes come at every `irecv`/`test`, 64 KiB at a time with the control socket
    /// checked in between, until a later request needs the helpers, which takes over the rest.
    /// Each end decides for itself (a request must also be one chunk of the sender's size);
    /// the wire is the same. 0 = never; at most the chunk size and 1 MiB.
    pub direct_bytes: usize,
    /// TCPX mode without CUDA: device type UNPACK and every TCPX rule, as on a CUDA machine.
    /// Host receives land straight in their buffer (as on TCPX); CUDA receives in bounce pages.
    pub unpack: bool,
    /// Test knob (implies `unpack`): host receives land in bounce pages too and publish their
    /// fragments, so the CPU unpack oracle can check the unpack path without a GPU. Real TCPX
    /// never does this.
    pub host_bounce: bool,
    /// On a CUDA machine, the GPU's bounce pool is device memory of that GPU (as TCPX's RX
    /// pool is); helpers land received bytes in host scratch and copy them in before
    /// publishing. Off by default: mapped host memory is what the emulation moves fastest.
    /// Ignored, with a log line, without CUDA.
    pub bounce_device: bool,
    /// `accept` returns a comm no earlier than this many milliseconds after it found the
    /// comm's connection complete (TCPX waits 5000 ms for flow steering, also inside `accept`);
    /// until then it returns NULL.
    pub accept_delay_ms: usize,
    /// Bounce receives are cut into fragments of odd lengths at odd offsets inside their pages,
    /// as devmem cmsgs produce, instead of one whole page per fragment.
    pub odd_fragments: bool,
    /// Bytes of every bounce receive (a span in its middle) that the plugin writes straight
    /// into the posted buffer, with no fragment entry: TCPX's header-split misses, copied from
    /// the socket's linear buffer. For a CUDA buffer, by a host-to-device copy.
    pub linear_bytes: usize,
    /// Bounce pool per GPU in TCPX mode, shared by every recv comm of that GPU (4 MiB … 4 GiB,
    /// page multiple; the first comm of the GPU makes it with this size).
    pub bounce_bytes: usize,
    /// Hand out bounce pages in a shuffled order so fragments are non-contiguous.
    pub shuffle: bool,
    /// Pinned staging ring per send comm for CUDA sources (made at its first CUDA send); a
    /// CUDA send may not be larger.
    pub stage_bytes: usize,
    /// `SO_SNDBUF`/`SO_RCVBUF` for every socket; 0 keeps kernel autotuning.
    pub sock_buf_bytes: usize,
    /// Bounce pages are written as a NIC's DMA would leave them: received into a small
    /// per-helper scratch, then streamed out with non-temporal stores, so no CPU cache holds
    /// them dirty when the GPU reads them (which makes those reads 1.6x slower).
    pub stream_bounce: bool,
    /// Who stages CUDA sends into pinned memory on a CUDA machine: the staging kernel, piece
    /// by piece while the sockets send (as a NIC's DMA reads device memory while it
    /// transmits), or one copy-engine copy per request that the whole request waits for.
    pub stage_kernel: StageKernel,
    /// A lane's staging kernel exits after this many microseconds with nothing to stage (an
    /// application's `cudaDeviceSynchronize` waits at most that long after the last CUDA
    /// send); the next send launches it again.
    pub stage_idle_us: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ifname: None,
            nsocks: DEFAULT_NSOCKS,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            inline_bytes: DEFAULT_INLINE_BYTES,
            direct_bytes: DEFAULT_DIRECT_BYTES,
            unpack: false,
            host_bounce: false,
            bounce_device: false,
            accept_delay_ms: 0,
            odd_fragments: false,
            linear_bytes: 0,
            bounce_bytes: DEFAULT_BOUNCE_BYTES,
            shuffle: false,
            stage_bytes: DEFAULT_STAGE_BYTES,
            sock_buf_bytes: 0,
            stream_bounce: true,
            stage_kernel: StageKernel::Auto,
            stage_idle_us: DEFAULT_STAGE_IDLE_US,
        }
    }
}

/// Variable `name` as a number in the one size syntax of every tcpx layer
/// (`tcpx_core::size`: `4096`, `512K`, `16M`, `4G`; binary multiples): `Ok(None)` when unset
/// or blank, an error naming the variable and the value when it is not a size.
fn number(get: Env<'_>, name: &str) -> Result<Option<usize>, String> {
    let Some(v) = get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    parse_size(&v)
        .map_err(|e| e.to_string())
        .and_then(|n| usize::try_from(n).map_err(|_| "too large".to_string()))
        .map(Some)
        .map_err(|e| format!("{name}={v:?}: {e}"))
}

/// Variable `name` as a switch: `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off` (any case);
/// `Ok(None)` when unset or blank.
fn switch(get: Env<'_>, name: &str) -> Result<Option<bool>, String> {
    let Some(v) = get(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(format!(
            "{name}={v:?}: expected 1 or 0 (true/false, yes/no, on/off)"
        )),
    }
}

/// A number from the environment in the size syntax (`TCPX_SOCK_TRACE_EVENTS`); a bad value
/// is logged and reads as unset.
pub(crate) fn env_usize(name: &str) -> Option<usize> {
    number(&|k| std::env::var(k).ok(), name).unwrap_or_else(|e| {
        crate::log_warn(&format!("tcpxsock: {e}; using the default"));
        None
    })
}

/// Looks a variable up (`std::env::var` outside tests).
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Whether CUDA sends are staged by the staging kernel ([`Config::stage_kernel`]).
///
/// The kernel stays up between sends (for [`Config::stage_idle_us`]). A GPU that another
/// process also uses then time-slices between the two processes whenever both have work, which
/// costs both far more than the kernel saves; a GPU in exclusive-process compute mode cannot
/// be shared that way (one context on the device at a time: other processes reach it only
/// through MPS, which runs clients side by side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKernel {
    /// Always the copy engine.
    Off,
    /// The kernel wherever it loads.
    On,
    /// The kernel where the source's GPU is in exclusive-process compute mode, else the copy
    /// engine (the default).
    Auto,
}

impl StageKernel {
    /// `1`/`on`/`true`/`yes`, `0`/`off`/`false`/`no`, or `auto`.
    pub fn parse(s: &str) -> Option<StageKernel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "yes" => Some(StageKernel::On),
            "0" | "off" | "false" | "no" => Some(StageKernel::Off),
            "auto" => Some(StageKernel::Auto),
            _ => None,
        }
    }
}

impl Config {
    /// Reads `TCPX_SOCK_*` (unset or blank variables keep their defaults), normalized. A bad
    /// value is logged (once per process) and keeps its default; [`Config::try_from_env`]
    /// refuses it instead.
    pub fn from_env() -> Self {
        let (c, errors) = Config::read(&|k| std::env::var(k).ok());
        if !errors.is_empty() && !WARNED.swap(true, Ordering::Relaxed) {
            for e in &errors {
                crate::log_warn(&format!("tcpxsock: {e}; using the default"));
            }
        }
        c
    }

    /// Reads `TCPX_SOCK_*` like [`Config::from_env`], or the first bad value: the variable,
    /// the value and what is wrong with it.
    pub fn try_from_env() -> Result<Self, String> {
        Config::from_vars(&|k| std::env::var(k).ok())
    }

    /// Reads the variables `get` finds; every bad value is an error naming its variable.
    pub fn from_vars(get: Env<'_>) -> Result<Self, String> {
        let (c, errors) = Config::read(get);
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors.join("; "))
        }
    }

    /// The configuration the variables `get` finds, every bad one left at its default and
    /// described in the returned list.
    fn read(get: Env<'_>) -> (Self, Vec<String>) {
        let mut errors = Vec::new();
        let mut c = Config {
            ifname: get("TCPX_SOCK_IFNAME").filter(|s| !s.is_empty()),
            ..Config::default()
        };
        let mut num = |name: &str, field: &mut usize| match number(get, name) {
            Ok(Some(v)) => *field = v,
            Ok(None) => {}
            Err(e) => errors.push(e),
        };
        num("TCPX_SOCK_NSOCKS", &mut c.nsocks);
        num("TCPX_SOCK_CHUNK_BYTES", &mut c.chunk_bytes);
        num("TCPX_SOCK_INLINE_BYTES", &mut c.inline_bytes);
        num("TCPX_SOCK_DIRECT_BYTES", &mut c.direct_bytes);
        num("TCPX_SOCK_ACCEPT_DELAY_MS", &mut c.accept_delay_ms);
        num("TCPX_SOCK_LINEAR_BYTES", &mut c.linear_bytes);
        num("TCPX_SOCK_BOUNCE_BYTES", &mut c.bounce_bytes);
        num("TCPX_SOCK_STAGE_BYTES", &mut c.stage_bytes);
        num("TCPX_SOCK_BUF_BYTES", &mut c.sock_buf_bytes);
        num("TCPX_SOCK_STAGE_IDLE_US", &mut c.stage_idle_us);
        let mut flag = |name: &str, field: &mut bool| match switch(get, name) {
            Ok(Some(v)) => *field = v,
            Ok(None) => {}
            Err(e) => errors.push(e),
        };
        flag("TCPX_SOCK_UNPACK", &mut c.unpack);
        flag("TCPX_SOCK_HOST_BOUNCE", &mut c.host_bounce);
        flag("TCPX_SOCK_BOUNCE_DEVICE", &mut c.bounce_device);
        flag("TCPX_SOCK_ODD_FRAGMENTS", &mut c.odd_fragments);
        flag("TCPX_SOCK_SHUFFLE", &mut c.shuffle);
        flag("TCPX_SOCK_STREAM_BOUNCE", &mut c.stream_bounce);
        if let Some(v) = get("TCPX_SOCK_STAGE_KERNEL").filter(|v| !v.trim().is_empty()) {
            match StageKernel::parse(&v) {
                Some(k) => c.stage_kernel = k,
                None => errors.push(format!(
                    "TCPX_SOCK_STAGE_KERNEL={v:?}: expected 0, 1 or auto"
                )),
            }
        }
        (c.normalized(), errors)
    }

    /// Clamps every field into its legal range (chunk and bounce sizes to whole pages).
    pub fn normalized(mut self) -> Self {
        self.nsocks = self.nsocks.clamp(1, MAX_NSOCKS);
        let page_round = |v: usize| v.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        self.chunk_bytes = page_round(self.chunk_bytes.clamp(PAGE_SIZE, 1 << 30));
        self.inline_bytes = self.inline_bytes.min(MAX_INLINE_BYTES);
        // A direct request uses one data socket (at most one chunk), and one call may read all
        // of it.
        self.direct_bytes = self
            .direct_bytes
            .min(self.chunk_bytes)
            .min(MAX_DIRECT_BYTES);
        // A whole 4 MiB receive must fit, or the oldest request could never complete; odd
        // fragments leave gaps in their pages, so such a receive takes a few more.
        let min_bounce = if self.odd_fragments {
            crate::frag::MAX_PAGES_PER_REQ * PAGE_SIZE
        } else {
            MAX_RECV_BYTES
        };
        self.bounce_bytes = page_round(self.bounce_bytes.clamp(min_bounce, MAX_BOUNCE_BYTES));
        self.accept_delay_ms = self.accept_delay_ms.min(MAX_ACCEPT_DELAY_MS);
        self.linear_bytes = self.linear_bytes.min(MAX_RECV_BYTES);
        self.stage_bytes = page_round(self.stage_bytes.clamp(MAX_RECV_BYTES, MAX_BOUNCE_BYTES));
        self.stage_idle_us = self.stage_idle_us.clamp(1, 1_000_000);
        self
    }
}

static OVERRIDE: RwLock<Option<Config>> = RwLock::new(None);
/// Whether [`Config::from_env`] has logged bad values already.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Sets the configuration used by the next `init` (and by later listen/connect calls)
/// instead of the environment. For in-process users and tests.
pub fn configure(cfg: Config) {
    *OVERRIDE.write().unwrap_or_else(|e| e.into_inner()) = Some(cfg.normalized());
}

/// Whether the environment's configuration can be used: always when one was [`configure`]d,
/// else the first bad `TCPX_SOCK_*` value, naming the variable and the value
/// (`init` refuses to start on it).
pub fn check() -> Result<(), String> {
    if OVERRIDE.read().unwrap_or_else(|e| e.into_inner()).is_some() {
        return Ok(());
    }
    Config::try_from_env().map(drop)
}

/// The configuration in force: the [`configure`]d one, else the environment's.
pub fn current() -> Config {
    if let Some(c) = OVERRIDE.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return c.clone();
    }
    Config::from_env()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_out_of_range_values() {
        let c = Config {
            nsocks: 0,
            chunk_bytes: 5000,
            bounce_bytes: 1,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.nsocks, 1);
        assert_eq!(c.chunk_bytes, 8192);
        assert_eq!(c.bounce_bytes, MAX_RECV_BYTES);
        let c = Config {
            stage_idle_us: 0,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.stage_idle_us, 1, "a lane's kernel waits at least 1 us");
        let c = Config {
            stage_idle_us: usize::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.stage_idle_us, 1_000_000);
        let c = Config {
            inline_bytes: usize::MAX,
            direct_bytes: usize::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.inline_bytes, MAX_INLINE_BYTES);
        assert_eq!(
            c.direct_bytes, c.chunk_bytes,
            "a direct request is one chunk"
        );
        let c = Config {
            chunk_bytes: 4 << 20,
            direct_bytes: usize::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.direct_bytes, MAX_DIRECT_BYTES);
        let c = Config {
            chunk_bytes: 128 << 10,
            direct_bytes: usize::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.direct_bytes, 128 << 10, "a direct request is one chunk");
        assert_eq!(Config::default().stage_kernel, StageKernel::Auto);
        let c = Config {
            odd_fragments: true,
            bounce_bytes: 1,
            linear_bytes: usize::MAX,
            accept_delay_ms: usize::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(
            c.bounce_bytes,
            crate::frag::MAX_PAGES_PER_REQ * PAGE_SIZE,
            "a 4 MiB receive in odd fragments fits the smallest pool"
        );
        assert_eq!(c.linear_bytes, MAX_RECV_BYTES);
        assert_eq!(c.accept_delay_ms, MAX_ACCEPT_DELAY_MS);
    }

    fn vars<'a>(kv: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| kv.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn reads_sizes_switches_and_the_staging_choice() {
        let c = Config::from_vars(&vars(&[
            ("TCPX_SOCK_IFNAME", "lo"),
            ("TCPX_SOCK_NSOCKS", "2"),
            ("TCPX_SOCK_CHUNK_BYTES", "1m"),
            ("TCPX_SOCK_INLINE_BYTES", "8K"),
            ("TCPX_SOCK_BOUNCE_BYTES", "1G"),
            ("TCPX_SOCK_STAGE_BYTES", " 32M "),
            ("TCPX_SOCK_BUF_BYTES", "4194304"),
            ("TCPX_SOCK_UNPACK", "TRUE"),
            ("TCPX_SOCK_STREAM_BOUNCE", "off"),
            ("TCPX_SOCK_STAGE_KERNEL", "1"),
            ("TCPX_SOCK_SHUFFLE", " "),
        ]))
        .unwrap();
        assert_eq!(c.ifname.as_deref(), Some("lo"));
        assert_eq!(
            (c.nsocks, c.chunk_bytes, c.inline_bytes),
            (2, 1 << 20, 8 << 10)
        );
        assert_eq!((c.bounce_bytes, c.stage_bytes), (1 << 30, 32 << 20));
        assert_eq!(c.sock_buf_bytes, 4 << 20);
        assert!(c.unpack && !c.stream_bounce && !c.shuffle);
        assert_eq!(c.stage_kernel, StageKernel::On);
        assert_eq!(Config::from_vars(&vars(&[])).unwrap(), Config::default());
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_variable_and_the_value() {
        for (var, value) in [
            ("TCPX_SOCK_CHUNK_BYTES", "512KB"),
            ("TCPX_SOCK_BOUNCE_BYTES", "1.5G"),
            ("TCPX_SOCK_NSOCKS", "four"),
            ("TCPX_SOCK_INLINE_BYTES", "-1"),
            ("TCPX_SOCK_STAGE_BYTES", "99999999999999999999"),
            ("TCPX_SOCK_BUF_BYTES", "16777216T"),
            ("TCPX_SOCK_UNPACK", "2"),
            ("TCPX_SOCK_STAGE_KERNEL", "sometimes"),
        ] {
            let e = Config::from_vars(&vars(&[(var, value)])).unwrap_err();
            assert!(e.starts_with(&format!("{var}={value:?}: ")), "{e}");
        }
        // Every bad value is reported; the good ones still apply in the lenient reading.
        let (c, errors) = Config::read(&vars(&[
            ("TCPX_SOCK_NSOCKS", "x"),
            ("TCPX_SOCK_CHUNK_BYTES", "64K"),
            ("TCPX_SOCK_SHUFFLE", "maybe"),
        ]));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!((c.nsocks, c.chunk_bytes), (DEFAULT_NSOCKS, 64 << 10));
    }

    #[test]
    fn parses_the_staging_choice() {
        for (s, want) in [
            ("1", Some(StageKernel::On)),
            (" ON ", Some(StageKernel::On)),
            ("true", Some(StageKernel::On)),
            ("0", Some(StageKernel::Off)),
            ("off", Some(StageKernel::Off)),
            ("auto", Some(StageKernel::Auto)),
            ("Auto", Some(StageKernel::Auto)),
            ("2", None),
            ("", None),
        ] {
            assert_eq!(StageKernel::parse(s), want, "{s:?}");
        }
    }
}
