//! `tcpx bench` arguments, the options they make once checked, and the engine configuration.

use std::path::PathBuf;

use clap::ArgGroup;
use tcpx::engine::Config;
use tcpx::net::MemKind;

use super::endpoint::Count;
use super::BenchResult;
use crate::value;

/// `tcpx bench` arguments.
#[derive(Debug, clap::Args)]
// A repeated option: the last one counts.
#[command(args_override_self = true)]
#[command(group(ArgGroup::new("peer").required(true).args(["loopback", "listen", "connect"])))]
pub struct Args {
    /// Both sessions in this process (embedded tcpxsock on lo)
    #[arg(long)]
    loopback: bool,
    /// One endpoint per host: listen on PORT; the listener receives (sends with --reverse) and
    /// its size/iters/segments/verify options rule
    #[arg(long, value_name = "PORT", value_parser = port)]
    listen: Option<u16>,
    /// One endpoint per host: connect to the listener
    #[arg(long, value_name = "HOST:PORT", value_parser = host_port)]
    connect: Option<String>,
    /// Bytes per transfer, K/M/G suffixes (default 4K,64K,1M,4M,16M,64M,256M; at most 8 sizes)
    #[arg(long, value_name = "N[,N...]", action = clap::ArgAction::Set, value_delimiter = ',', value_parser = transfer_size)]
    size: Vec<u64>,
    /// Measured iterations per size (default: about 0.75 s of them, 5..100000)
    #[arg(long, value_name = "N", value_parser = value::positive)]
    iters: Option<usize>,
    /// At least 10,000 iterations per size up to 1 MiB, 1,000 above (p99.9 is then measured,
    /// not the maximum); --json keeps every sample (`samples_us`, in the order they ran)
    #[arg(long)]
    tail: bool,
    /// Engine setting: channels (default: TCPX_* environment)
    #[arg(long, value_name = "N", value_parser = value::positive)]
    channels: Option<usize>,
    /// Engine setting: chunk bytes, K/M/G suffixes (default: TCPX_* environment)
    #[arg(long, value_name = "N", value_parser = chunk_size)]
    chunk: Option<u32>,
    /// Engine setting: window (default: TCPX_* environment)
    #[arg(long, value_name = "N", value_parser = value::positive)]
    window: Option<usize>,
    /// Split each transfer into N equal segments
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = value::positive)]
    segments: usize,
    /// Engine setting: the ncclNet plugin (default: TCPX_* environment, else the embedded
    /// tcpxsock)
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// Loopback: one thread polls both sessions, or one thread each started together per
    /// iteration
    #[arg(long, value_enum, default_value_t = Poller::Single)]
    poller: Poller,
    /// Host or cuda for the sender's (SRC) and the receiver's (DST) buffer; `--mem cuda` =
    /// cuda:cuda. With --listen/--connect each side uses its role's kind
    #[arg(long, value_name = "SRC:DST", default_value = "host:host", value_parser = mem)]
    mem: (MemKind, MemKind),
    /// CUDA device of the cuda buffers; SRC:DST puts the sender's and the receiver's on
    /// different GPUs (loopback: each PCIe link carries one direction, as between two hosts)
    #[arg(
        long,
        value_name = "N|SRC:DST",
        default_value = "0",
        value_parser = gpu,
        allow_negative_numbers = true
    )]
    gpu: (i32, i32),
    /// Loopback: add plain TCP ping-pong and iperf3 -P 1/-P 4 rows, and our ratio to each
    /// (with cuda: the cuMemcpy too)
    #[arg(long)]
    baseline: bool,
    /// Two hosts: the listener sends, the connector receives
    #[arg(long)]
    reverse: bool,
    /// Check the received bytes after the timed iterations
    #[arg(long)]
    verify: bool,
    /// One JSON object (config, rows, baselines)
    #[arg(long)]
    json: bool,
}

fn port(s: &str) -> BenchResult<u16> {
    s.trim()
        .parse()
        .map_err(|_| "expected a TCP port".to_string())
}

fn host_port(s: &str) -> BenchResult<String> {
    match s.contains(':') {
        true => Ok(s.to_string()),
        false => Err("expected HOST:PORT".to_string()),
    }
}

fn transfer_size(s: &str) -> BenchResult<u64> {
    value::size(s, MAX_SIZE)
}

fn chunk_size(s: &str) -> BenchResult<u32> {
    value::size(s, u64::from(u32::MAX)).map(|n| n as u32)
}

fn mem(s: &str) -> BenchResult<(MemKind, MemKind)> {
    parse_mem(s).ok_or_else(|| "expected SRC:DST of host or cuda (or one for both)".to_string())
}

fn gpu(s: &str) -> BenchResult<(i32, i32)> {
    parse_gpu(s).ok_or_else(|| "expected a CUDA device number, or SRC:DST of two".to_string())
}

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

/// `tcpx bench` options: the arguments, checked, with their defaults.
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

impl TryFrom<Args> for Options {
    type Error = String;

    /// What parsing alone does not check: combinations, the number of sizes, segments.
    fn try_from(a: Args) -> BenchResult<Options> {
        let mode = match (a.listen, a.connect) {
            (Some(port), _) => Mode::Listen(port),
            (_, Some(addr)) => Mode::Connect(addr),
            _ => Mode::Loopback,
        };
        if mode == Mode::Loopback && a.reverse {
            return Err(
                "--reverse needs --listen/--connect (in loopback both ends are here)".into(),
            );
        }
        if mode != Mode::Loopback && a.baseline {
            return Err("--baseline runs on 127.0.0.1 only: use it with --loopback".into());
        }
        if a.size.len() > MAX_SIZES {
            return Err(format!("--size: at most {MAX_SIZES} sizes"));
        }
        let sizes = match a.size {
            s if s.is_empty() => DEFAULT_SIZES.to_vec(),
            s => s,
        };
        if let Some(&s) = sizes.iter().find(|&&s| (a.segments as u64) > s) {
            return Err(format!(
                "--segments {} exceeds the {s}-byte size",
                a.segments
            ));
        }
        Ok(Options {
            mode,
            sizes,
            iters: a.iters,
            segments: a.segments,
            channels: a.channels,
            chunk: a.chunk,
            window: a.window,
            plugin: a.plugin,
            poller: a.poller,
            mem: a.mem,
            gpu: a.gpu,
            baseline: a.baseline,
            reverse: a.reverse,
            verify: a.verify,
            json: a.json,
            tail: a.tail,
        })
    }
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

    fn parse(args: &[&str]) -> BenchResult<Options> {
        let argv: Vec<&str> = ["bench"].iter().chain(args).copied().collect();
        match crate::parse(&argv)? {
            crate::Command::Bench(a) => Options::try_from(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_sizes_and_options() {
        let e = parse(&["--loopback", "--chunk", "8x"]).unwrap_err();
        assert!(e.contains("'8x' for '--chunk <N>': not a size"), "{e}");
        let e = parse(&["--loopback", "--size", "1K,5G"]).unwrap_err();
        assert!(
            e.contains("'5G' for '--size <N[,N...]>': 5368709120 is not in 1..=4G"),
            "{e}"
        );
        for bad in ["", "0", "K", "-1", "1.5M", "1T", "4G1", "4KB"] {
            let arg = format!("--size={bad}");
            let e = parse(&["--loopback", &arg]).unwrap_err();
            assert!(e.contains(&format!("'{bad}' for '--size")), "{e}");
        }
        let o = parse(&[
            "--loopback",
            "--size=64K,1M",
            "--iters",
            "3",
            "--chunk",
            "1M",
            "--verify",
        ])
        .unwrap();
        assert_eq!(o.sizes, vec![64 << 10, 1 << 20]);
        assert_eq!((o.iters, o.chunk, o.verify), (Some(3), Some(1 << 20), true));
        assert!(!o.tail);
        let o = parse(&["--loopback", "--tail"]).unwrap();
        assert_eq!(
            o.count(),
            Count {
                fixed: None,
                tail: true
            }
        );
        let o = parse(&["--connect", "h:1", "--reverse"]).unwrap();
        assert_eq!((o.mode, o.sizes.len()), (Mode::Connect("h:1".into()), 7));
        assert_eq!((o.mem, o.gpu), ((MemKind::Host, MemKind::Host), (0, 0)));
        assert_eq!((o.segments, o.poller), (1, Poller::Single));
        let o = parse(&["--loopback", "--mem", "host:cuda", "--gpu=3"]).unwrap();
        assert_eq!((o.mem, o.gpu), ((MemKind::Host, MemKind::Device), (3, 3)));
        let o = parse(&["--loopback", "--mem=cuda", "--gpu", "0:1"]).unwrap();
        assert_eq!(o.gpu, (0, 1));
        let o = parse(&["--loopback", "--mem=cuda"]).unwrap();
        assert_eq!(o.mem, (MemKind::Device, MemKind::Device));
        let o = parse(&["--listen", "7", "--poller", "threads"]).unwrap();
        assert_eq!((o.mode, o.poller), (Mode::Listen(7), Poller::Threads));
        for (bad, why) in [
            (&["--size", "4K"][..], "--loopback"),
            (&["--loopback", "--listen", "1"], "cannot be used with"),
            (&["--loopback", "--iters", "0"], "positive"),
            (&["--loopback", "--reverse"], "--reverse"),
            (&["--listen", "1", "--baseline"], "--baseline"),
            (&["--listen", "x"], "expected a TCP port"),
            (&["--connect", "h"], "expected HOST:PORT"),
            (
                &["--loopback", "--size", "4K", "--segments", "5000"],
                "exceeds",
            ),
            (&["--loopback", "--size", "1,2,3,4,5,6,7,8,9"], "at most 8"),
            (&["--loopback", "--poller", "x"], "--poller"),
            (&["--loopback", "--mem", "gpu"], "--mem"),
            (&["--loopback", "--mem", "host:cuda:host"], "--mem"),
            (&["--loopback", "--mem", "cuda:"], "--mem"),
            (&["--loopback", "--mem"], "a value is required for '--mem"),
            (&["--loopback", "--gpu", "-1"], "--gpu"),
            (&["--loopback", "--gpu", "0:"], "--gpu"),
            (&["--loopback", "--gpu", "0:1:2"], "--gpu"),
            (&["--loopback", "--bogus"], "unexpected argument '--bogus'"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
