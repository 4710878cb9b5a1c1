//! `tcpx bench` options: the command line, checked, and the engine configuration it makes.

use std::path::PathBuf;

use tcpx::engine::Config;
use tcpx_core::size::{parse_size, Size};

use super::endpoint::Count;
use super::BenchResult;
use crate::args::Flags;

pub(super) const USAGE: &str = "usage: tcpx bench (--loopback | --listen PORT | --connect HOST:PORT) \
[--size N[,N...]] [--iters N] [--tail] [--channels N] [--chunk N] [--window N] [--segments N] \
[--plugin PATH] [--poller single|threads] [--mem SRC:DST] [--gpu N|SRC:DST] [--baseline] [--reverse] \
[--verify] [--json]
  --iters N  measured iterations per size (default: about 0.75 s of them, at least 5)
  --tail  at least 10,000 iterations per size up to 1 MiB, 1,000 above (p99.9 is then \
measured, not the maximum); --json keeps every sample (`samples_us`, in the order they ran)
  --mem SRC:DST  host or cuda for the sender's (SRC) and receiver's (DST) buffer; default \
host:host, `--mem cuda` = cuda:cuda. With --listen/--connect each side uses its role's kind.
  --gpu N|SRC:DST  CUDA device of the cuda buffers (default 0); SRC:DST puts the sender's and \
the receiver's on different GPUs (loopback: each PCIe link carries one direction, as between \
two hosts)";

/// The sweep when `--size` is absent.
pub(super) const DEFAULT_SIZES: [u64; 7] = [
    4 << 10,
    64 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
];
/// Most sizes per run: the two-host plan message carries them in fixed slots.
pub(super) const MAX_SIZES: usize = 8;
/// Largest transfer: both endpoints (and the baseline) hold a buffer this big.
pub(super) const MAX_SIZE: u64 = 4 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mode {
    Loopback,
    Listen(u16),
    Connect(String),
}

/// How loopback mode drives its two sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Poller {
    /// One thread alternates between both sessions: no cross-thread wake-ups, and on a
    /// small machine the plugin's helper threads keep the other cores.
    Single,
    /// One thread per session, iterations started together by a spin barrier.
    Threads,
}

impl Poller {
    pub(super) fn name(self) -> &'static str {
        match self {
            Poller::Single => "single",
            Poller::Threads => "threads",
        }
    }
}

/// Where a side's transfer buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemKind {
    Host,
    Cuda,
}

impl MemKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            MemKind::Host => "host",
            MemKind::Cuda => "cuda",
        }
    }

    pub(super) fn parse(s: &str) -> Option<MemKind> {
        match s.trim() {
            "host" => Some(MemKind::Host),
            "cuda" => Some(MemKind::Cuda),
            _ => None,
        }
    }
}

/// `SRC:DST`, or one kind for both sides.
pub(super) fn parse_mem(s: &str) -> Option<(MemKind, MemKind)> {
    match s.split_once(':') {
        Some((a, b)) => Some((MemKind::parse(a)?, MemKind::parse(b)?)),
        None => MemKind::parse(s).map(|k| (k, k)),
    }
}

/// `N` (both sides) or `SRC:DST`: CUDA device numbers.
pub(super) fn parse_gpu(s: &str) -> Option<(i32, i32)> {
    let one = |v: &str| v.trim().parse::<i32>().ok().filter(|&n| n >= 0);
    match s.split_once(':') {
        Some((a, b)) => Some((one(a)?, one(b)?)),
        None => one(s).map(|n| (n, n)),
    }
}

/// Parsed `bench` options.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Options {
    pub(super) mode: Mode,
    pub(super) sizes: Vec<u64>,
    pub(super) iters: Option<usize>,
    pub(super) segments: usize,
    pub(super) channels: Option<usize>,
    pub(super) chunk: Option<u32>,
    pub(super) window: Option<usize>,
    pub(super) plugin: Option<PathBuf>,
    pub(super) poller: Poller,
    /// (sender's, receiver's) buffer.
    pub(super) mem: (MemKind, MemKind),
    /// (sender's, receiver's) CUDA device, for the sides whose buffer is `cuda`.
    pub(super) gpu: (i32, i32),
    pub(super) baseline: bool,
    pub(super) reverse: bool,
    pub(super) verify: bool,
    pub(super) json: bool,
    pub(super) tail: bool,
}

impl Options {
    pub(super) fn count(&self) -> Count {
        Count {
            fixed: self.iters,
            tail: self.tail,
        }
    }
}

/// A size flag's value in the one size syntax (`tcpx_core::size`: `4096`, `4K`, `64M`, `1G`;
/// binary multiples), in `1..=max`; the error names the flag and the value.
pub(crate) fn size_arg(flag: &str, s: &str, max: u64) -> Result<u64, String> {
    match parse_size(s) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{flag} {s:?}: {n} is not in 1..={}", Size(max))),
        Err(e) => Err(format!("{flag} {s:?}: {e}")),
    }
}

pub(super) fn parse(args: &[String]) -> BenchResult<Options> {
    let mut mode = None;
    let mut o = Options {
        mode: Mode::Loopback,
        sizes: Vec::new(),
        iters: None,
        segments: 1,
        channels: None,
        chunk: None,
        window: None,
        plugin: None,
        poller: Poller::Single,
        mem: (MemKind::Host, MemKind::Host),
        gpu: (0, 0),
        baseline: false,
        reverse: false,
        verify: false,
        json: false,
        tail: false,
    };
    let mut flags = Flags::new(args);
    while let Some(f) = flags.next() {
        let (flag, a) = (f.name, f.raw);
        let mut value = |_: &str| flags.value(&f);
        let count = |name: &str, v: String| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format!("{name} {v:?}: expected a positive integer"))
        };
        let mut set_mode = |m: Mode| match mode.replace(m) {
            None => Ok(()),
            Some(_) => Err("use one of --loopback, --listen, --connect".to_string()),
        };
        match flag {
            "--loopback" => set_mode(Mode::Loopback)?,
            "--listen" => {
                let v = value("--listen")?;
                let port = v
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| format!("--listen {v:?}: expected a TCP port"))?;
                set_mode(Mode::Listen(port))?;
            }
            "--connect" => {
                let v = value("--connect")?;
                if !v.contains(':') {
                    return Err(format!("--connect {v:?}: expected HOST:PORT"));
                }
                set_mode(Mode::Connect(v))?;
            }
            "--size" => {
                let v = value("--size")?;
                o.sizes = v
                    .split(',')
                    .map(|s| size_arg("--size", s, MAX_SIZE))
                    .collect::<BenchResult<_>>()?;
                if o.sizes.len() > MAX_SIZES {
                    return Err(format!("--size: at most {MAX_SIZES} sizes"));
                }
            }
            "--iters" => o.iters = Some(count("--iters", value("--iters")?)?),
            "--segments" => o.segments = count("--segments", value("--segments")?)?,
            "--channels" => o.channels = Some(count("--channels", value("--channels")?)?),
            "--window" => o.window = Some(count("--window", value("--window")?)?),
            "--chunk" => {
                let v = value("--chunk")?;
                let n = size_arg("--chunk", &v, u64::from(u32::MAX))?;
                o.chunk = Some(n as u32);
            }
            "--plugin" => o.plugin = Some(PathBuf::from(value("--plugin")?)),
            "--poller" => {
                o.poller = match value("--poller")?.as_str() {
                    "single" => Poller::Single,
                    "threads" => Poller::Threads,
                    v => return Err(format!("--poller {v:?}: use single or threads")),
                }
            }
            "--mem" => {
                let v = value("--mem")?;
                o.mem = parse_mem(&v).ok_or_else(|| {
                    format!("--mem {v:?}: expected SRC:DST of host or cuda (or one for both)")
                })?;
            }
            "--gpu" => {
                let v = value("--gpu")?;
                o.gpu = parse_gpu(&v).ok_or_else(|| {
                    format!("--gpu {v:?}: expected a CUDA device number, or SRC:DST of two")
                })?;
            }
            "--baseline" => o.baseline = true,
            "--reverse" => o.reverse = true,
            "--verify" => o.verify = true,
            "--json" => o.json = true,
            "--tail" => o.tail = true,
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    o.mode =
        mode.ok_or("say where the peer is: --loopback, --listen PORT or --connect HOST:PORT")?;
    if o.mode == Mode::Loopback && o.reverse {
        return Err("--reverse needs --listen/--connect (in loopback both ends are here)".into());
    }
    if o.mode != Mode::Loopback && o.baseline {
        return Err("--baseline runs on 127.0.0.1 only: use it with --loopback".into());
    }
    if o.sizes.is_empty() {
        o.sizes = DEFAULT_SIZES.to_vec();
    }
    if let Some(&s) = o.sizes.iter().find(|&&s| (o.segments as u64) > s) {
        return Err(format!(
            "--segments {} exceeds the {s}-byte size",
            o.segments
        ));
    }
    Ok(o)
}

/// Engine configuration: `TCPX_*` environment, then the command line on top.
pub(super) fn engine_config(o: &Options) -> BenchResult<Config> {
    let mut c = Config::from_env().map_err(|e| e.to_string())?;
    if let Some(p) = &o.plugin {
        c.plugin = Some(p.clone());
    }
    if let Some(n) = o.channels {
        c.channels = n;
    }
    if let Some(n) = o.chunk {
        c.chunk_bytes = n;
    }
    if let Some(n) = o.window {
        c.window = n;
    }
    if o.segments > c.max_segments {
        c.max_segments = o.segments;
    }
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::argv as args;

    #[test]
    fn parses_sizes_and_options() {
        assert_eq!(size_arg("--size", "4K", MAX_SIZE), Ok(4096));
        assert_eq!(size_arg("--size", "64m", MAX_SIZE), Ok(64 << 20));
        assert_eq!(size_arg("--size", "4G", MAX_SIZE), Ok(4 << 30));
        assert_eq!(size_arg("--size", "1000", MAX_SIZE), Ok(1000));
        for bad in ["", "0", "K", "-1", "1.5M", "1T", "4G1", "4KB"] {
            let e = size_arg("--size", bad, MAX_SIZE).unwrap_err();
            assert!(e.starts_with(&format!("--size {bad:?}: ")), "{e}");
        }
        let e = parse(&args(&["--loopback", "--chunk", "8x"])).unwrap_err();
        assert!(e.contains("--chunk \"8x\": not a size"), "{e}");
        let e = parse(&args(&["--loopback", "--size", "1K,5G"])).unwrap_err();
        assert!(
            e.contains("--size \"5G\": 5368709120 is not in 1..=4G"),
            "{e}"
        );
        let o = parse(&args(&[
            "--loopback",
            "--size=64K,1M",
            "--iters",
            "3",
            "--chunk",
            "1M",
            "--verify",
        ]))
        .unwrap();
        assert_eq!(o.sizes, vec![64 << 10, 1 << 20]);
        assert_eq!((o.iters, o.chunk, o.verify), (Some(3), Some(1 << 20), true));
        assert!(!o.tail);
        let o = parse(&args(&["--loopback", "--tail"])).unwrap();
        assert_eq!(
            o.count(),
            Count {
                fixed: None,
                tail: true
            }
        );
        let o = parse(&args(&["--connect", "h:1", "--reverse"])).unwrap();
        assert_eq!((o.mode, o.sizes.len()), (Mode::Connect("h:1".into()), 7));
        assert_eq!((o.mem, o.gpu), ((MemKind::Host, MemKind::Host), (0, 0)));
        let o = parse(&args(&["--loopback", "--mem", "host:cuda", "--gpu=3"])).unwrap();
        assert_eq!((o.mem, o.gpu), ((MemKind::Host, MemKind::Cuda), (3, 3)));
        let o = parse(&args(&["--loopback", "--mem=cuda", "--gpu", "0:1"])).unwrap();
        assert_eq!(o.gpu, (0, 1));
        let o = parse(&args(&["--loopback", "--mem=cuda"])).unwrap();
        assert_eq!(o.mem, (MemKind::Cuda, MemKind::Cuda));
        for (bad, why) in [
            (&["--size", "4K"][..], "--loopback"),
            (&["--loopback", "--listen", "1"], "one of"),
            (&["--loopback", "--iters", "0"], "positive"),
            (&["--loopback", "--reverse"], "--reverse"),
            (&["--listen", "1", "--baseline"], "--baseline"),
            (
                &["--loopback", "--size", "4K", "--segments", "5000"],
                "exceeds",
            ),
            (&["--loopback", "--poller", "x"], "--poller"),
            (&["--loopback", "--mem", "gpu"], "--mem"),
            (&["--loopback", "--mem", "host:cuda:host"], "--mem"),
            (&["--loopback", "--mem", "cuda:"], "--mem"),
            (&["--loopback", "--mem"], "needs a value"),
            (&["--loopback", "--gpu", "-1"], "--gpu"),
            (&["--loopback", "--gpu", "0:"], "--gpu"),
            (&["--loopback", "--gpu", "0:1:2"], "--gpu"),
            (&["--loopback", "--bogus"], "unknown option"),
        ] {
            let e = parse(&args(bad)).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
