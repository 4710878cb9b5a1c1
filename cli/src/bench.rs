//! `tcpx bench`: GB/s and the latency distribution (p50, p90, p99, p99.9; every sample with
//! `--json`) of engine transfers, per size, with the process's CPU time per transfer, in one
//! process (`--loopback`, both sessions here) or between two hosts (`--listen` /
//! `--connect`). `--tail` takes enough iterations for p99.9 to be measured.
//!
//! `--baseline` adds a plain TCP ping-pong and `iperf3` over 127.0.0.1 so the ratios printed
//! next to ours are measured on the same machine, in the same run, under the same load.
//!
//! `--mem SRC:DST` (`host` or `cuda` each) puts the sender's and the receiver's buffers in
//! host or device memory (`--gpu N`); with a CUDA side `--baseline` also times the matching
//! `cuMemcpy{HtoD,DtoH,DtoD}` of the same size as a local reference.

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cudarc::driver::{result as cu, CudaContext};
use tcpx_core::size::{parse_size, Size};
use tcpx_kernels::mem::DeviceBuffer;

use super::args::Flags;
use super::json::Object;
use tcpx::engine::{Config, Direction, MemId, Memory, Progress, Rendezvous, Segment, Session};
use tcpx::net::Net;
use tcpx::XferId;

const USAGE: &str = "usage: tcpx bench (--loopback | --listen PORT | --connect HOST:PORT) \
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
const DEFAULT_SIZES: [u64; 7] = [
    4 << 10,
    64 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
];
/// Most sizes per run: the two-host plan message carries them in fixed slots.
const MAX_SIZES: usize = 8;
/// Largest transfer: both endpoints (and the baseline) hold a buffer this big.
const MAX_SIZE: u64 = 4 << 30;
/// Adaptive iteration count aims at this much measured time per size.
const TARGET_TIME: Duration = Duration::from_millis(750);
const MIN_ITERS: usize = 5;
const MAX_ITERS: usize = 100_000;
/// `--tail`: iterations per size up to `TAIL_MAX_BYTES` (p99.9 then rests on 10 samples
/// beyond it), and above it (p99.9 is then the largest but one).
const TAIL_ITERS: usize = 10_000;
const TAIL_ITERS_LARGE: usize = 1_000;
const TAIL_MAX_BYTES: u64 = 1 << 20;
/// Warm-up traffic per size (TCP windows, page faults, caches), spread over 2..=200 iterations.
const WARMUP_BYTES: u64 = 64 << 20;
/// A single transfer taking longer than this means the peer or the session is stuck.
const MIN_TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

type BenchResult<T> = std::result::Result<T, String>;

fn err(what: &str) -> impl Fn(tcpx::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Loopback,
    Listen(u16),
    Connect(String),
}

/// How loopback mode drives its two sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Poller {
    /// One thread alternates between both sessions: no cross-thread wake-ups, and on a
    /// small machine the plugin's helper threads keep the other cores.
    Single,
    /// One thread per session, iterations started together by a spin barrier.
    Threads,
}

impl Poller {
    fn name(self) -> &'static str {
        match self {
            Poller::Single => "single",
            Poller::Threads => "threads",
        }
    }
}

/// Where a side's transfer buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemKind {
    Host,
    Cuda,
}

impl MemKind {
    fn name(self) -> &'static str {
        match self {
            MemKind::Host => "host",
            MemKind::Cuda => "cuda",
        }
    }

    fn parse(s: &str) -> Option<MemKind> {
        match s.trim() {
            "host" => Some(MemKind::Host),
            "cuda" => Some(MemKind::Cuda),
            _ => None,
        }
    }
}

/// `SRC:DST`, or one kind for both sides.
fn parse_mem(s: &str) -> Option<(MemKind, MemKind)> {
    match s.split_once(':') {
        Some((a, b)) => Some((MemKind::parse(a)?, MemKind::parse(b)?)),
        None => MemKind::parse(s).map(|k| (k, k)),
    }
}

/// `N` (both sides) or `SRC:DST`: CUDA device numbers.
fn parse_gpu(s: &str) -> Option<(i32, i32)> {
    let one = |v: &str| v.trim().parse::<i32>().ok().filter(|&n| n >= 0);
    match s.split_once(':') {
        Some((a, b)) => Some((one(a)?, one(b)?)),
        None => one(s).map(|n| (n, n)),
    }
}

/// Parsed `bench` options.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    mode: Mode,
    sizes: Vec<u64>,
    iters: Option<usize>,
    segments: usize,
    channels: Option<usize>,
    chunk: Option<u32>,
    window: Option<usize>,
    plugin: Option<PathBuf>,
    poller: Poller,
    /// (sender's, receiver's) buffer.
    mem: (MemKind, MemKind),
    /// (sender's, receiver's) CUDA device, for the sides whose buffer is `cuda`.
    gpu: (i32, i32),
    baseline: bool,
    reverse: bool,
    verify: bool,
    json: bool,
    tail: bool,
}

impl Options {
    fn count(&self) -> Count {
        Count {
            fixed: self.iters,
            tail: self.tail,
        }
    }
}

/// A size flag's value in the one size syntax (`tcpx_core::size`: `4096`, `4K`, `64M`, `1G`;
/// binary multiples), in `1..=max`; the error names the flag and the value.
pub(super) fn size_arg(flag: &str, s: &str, max: u64) -> Result<u64, String> {
    match parse_size(s) {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{flag} {s:?}: {n} is not in 1..={}", Size(max))),
        Err(e) => Err(format!("{flag} {s:?}: {e}")),
    }
}

fn parse(args: &[String]) -> BenchResult<Options> {
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
fn engine_config(o: &Options) -> BenchResult<Config> {
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

/// Runs `tcpx bench`; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tcpx bench: {e}\n{USAGE}");
            return 2;
        }
    };
    let cfg = match engine_config(&o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tcpx bench: {e}\n{USAGE}");
            return 2;
        }
    };
    let result = match &o.mode {
        Mode::Loopback => loopback(&o, cfg),
        Mode::Listen(_) | Mode::Connect(_) => two_hosts(&o, cfg),
    };
    match result {
        Ok(report) => {
            print!(
                "{}",
                if o.json {
                    report.to_json()
                } else {
                    report.to_text()
                }
            );
            0
        }
        Err(e) => {
            eprintln!("tcpx bench: error: {e}");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------
// Measurement results

/// One size's measurement.
#[derive(Debug, Clone)]
struct Row {
    bytes: u64,
    iters: usize,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    p999: Duration,
    total: Duration,
    /// Every measured iteration, in the order they ran (empty where the peer measured).
    samples: Vec<Duration>,
    /// This process's CPU time (all threads) per measured iteration, when measured.
    cpu: Option<Duration>,
}

impl Row {
    /// Summarises `times` (left in measurement order) and keeps them as the raw samples.
    fn from_times(bytes: u64, times: &[Duration]) -> Row {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        Row {
            bytes,
            iters: times.len(),
            p50: percentile(&sorted, 500),
            p90: percentile(&sorted, 900),
            p99: percentile(&sorted, 990),
            p999: percentile(&sorted, 999),
            total: times.iter().sum(),
            samples: times.to_vec(),
            cpu: None,
        }
    }

    /// The same, with the process CPU time the measured iterations took.
    fn with_cpu(mut self, cpu: Duration) -> Row {
        self.cpu = Some(cpu / self.iters.max(1) as u32);
        self
    }

    fn gbps(&self) -> f64 {
        self.bytes as f64 / secs(self.p50) / 1e9
    }

    fn gbps_aggregate(&self) -> f64 {
        (self.bytes as f64 * self.iters as f64) / secs(self.total) / 1e9
    }
}

/// Nearest-rank percentile of sorted samples, `permille` of them at or below it (990 =
/// p99, 999 = p99.9): integer arithmetic, so p99.9 of 1,000 samples is the largest but one.
fn percentile(sorted: &[Duration], permille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (permille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank - 1]
}

/// CPU time of this process, all threads (`CLOCK_PROCESS_CPUTIME_ID`): the plugin's helper
/// threads are part of what a transfer costs.
fn process_cpu() -> Duration {
    #[repr(C)]
    struct Timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec (64-bit Linux layout); the clock id is the
    // Linux constant, which every Linux libc supports.
    if unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Seconds, never zero (a timer tick below 1 ns would make GB/s infinite).
fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Everything a run prints.
struct Report {
    header: Vec<(&'static str, String)>,
    timing: &'static str,
    plugin_name: String,
    rows: Vec<Row>,
    tcp: Vec<Row>,
    iperf3: Vec<(u32, BenchResult<f64>)>,
    /// `cuMemcpy*` of the same sizes, when a side is CUDA: (which copy, rows).
    copy: Option<(&'static str, Vec<Row>)>,
}

pub(super) fn size_label(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, name) in UNITS {
        if n >= u && n % u == 0 {
            return format!("{} {name}", n / u);
        }
    }
    format!("{n} B")
}

fn table(out: &mut String, rows: &[Row]) {
    let _ = writeln!(
        out,
        "{:>9} {:>11} {:>7} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>8} {:>11}",
        "size",
        "bytes",
        "iters",
        "GB/s p50",
        "GB/s agg",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "p99/p50",
        "cpu µs/it"
    );
    for r in rows {
        let cpu = r.cpu.map_or("-".to_string(), |c| format!("{:.1}", us(c)));
        let _ = writeln!(
            out,
            "{:>9} {:>11} {:>7} {:>10.3} {:>10.3} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>8.2} {:>11}",
            size_label(r.bytes),
            r.bytes,
            r.iters,
            r.gbps(),
            r.gbps_aggregate(),
            us(r.p50),
            us(r.p90),
            us(r.p99),
            us(r.p999),
            ratio(us(r.p99), us(r.p50)),
            cpu
        );
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl Report {
    fn iperf(&self, streams: u32) -> Option<f64> {
        self.iperf3
            .iter()
            .find(|(s, _)| *s == streams)
            .and_then(|(_, r)| r.as_ref().ok().copied())
    }

    fn to_text(&self) -> String {
        let mut s = String::new();
        let cfg: Vec<String> = self
            .header
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "tcpx bench: {}", cfg.join(", "));
        let _ = writeln!(s, "GB/s = 10^9 bytes/s; {}\n", self.timing);
        table(&mut s, &self.rows);
        if !self.tcp.is_empty() {
            let _ = writeln!(
                s,
                "\nbaseline: plain TCP over 127.0.0.1 (1 stream, TCP_NODELAY, blocking \
write_all/read_exact, 1-byte reply per iteration; time = write start to read done)"
            );
            table(&mut s, &self.tcp);
        }
        if let Some((op, rows)) = &self.copy {
            let _ = writeln!(
                s,
                "\nbaseline: {op} in this process (synchronous, whole buffer in one call, \
host side pageable; time = call start to cuCtxSynchronize done)"
            );
            table(&mut s, rows);
        }
        for (streams, r) in &self.iperf3 {
            match r {
                Ok(g) => {
                    let _ = writeln!(s, "baseline: iperf3 -c 127.0.0.1 -P {streams}: {g:.3} GB/s");
                }
                Err(e) => {
                    let _ = writeln!(s, "baseline: iperf3 -P {streams} skipped: {e}");
                }
            }
        }
        if !self.tcp.is_empty() {
            let _ = writeln!(
                s,
                "\nratios, {} / baseline (GB/s: higher is better; p50, p99: lower is better)",
                self.plugin_name
            );
            let copy = self.copy.as_ref().map(|(_, rows)| rows.as_slice());
            let _ = write!(
                s,
                "{:>9} {:>12} {:>12} {:>12} {:>16} {:>16}",
                "size",
                "GB/s vs tcp",
                "p50 vs tcp",
                "p99 vs tcp",
                "GB/s vs iperf1",
                "GB/s vs iperf4"
            );
            if copy.is_some() {
                let _ = write!(s, " {:>14}", "GB/s vs copy");
            }
            s.push('\n');
            let (p1, p4) = (self.iperf(1), self.iperf(4));
            let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
            for (i, (r, t)) in self.rows.iter().zip(&self.tcp).enumerate() {
                let _ = write!(
                    s,
                    "{:>9} {:>12} {:>12} {:>12} {:>16} {:>16}",
                    size_label(r.bytes),
                    cell(Some(ratio(r.gbps(), t.gbps()))),
                    cell(Some(ratio(us(r.p50), us(t.p50)))),
                    cell(Some(ratio(us(r.p99), us(t.p99)))),
                    cell(p1.map(|b| ratio(r.gbps(), b))),
                    cell(p4.map(|b| ratio(r.gbps(), b))),
                );
                if let Some(c) = copy {
                    let _ = write!(
                        s,
                        " {:>14}",
                        cell(c.get(i).map(|c| ratio(r.gbps(), c.gbps())))
                    );
                }
                s.push('\n');
            }
        }
        s
    }

    fn to_json(&self) -> String {
        fn num(v: f64) -> String {
            if v.is_finite() {
                format!("{v:.6}")
            } else {
                "null".into()
            }
        }
        fn rows_json(out: &mut String, rows: &[Row]) {
            out.push('[');
            for (i, r) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                Object::new(out)
                    .raw("bytes", r.bytes)
                    .raw("iters", r.iters)
                    .raw("gbps", num(r.gbps()))
                    .raw("gbps_aggregate", num(r.gbps_aggregate()))
                    .raw("p50_us", num(us(r.p50)))
                    .raw("p90_us", num(us(r.p90)))
                    .raw("p99_us", num(us(r.p99)))
                    .raw("p999_us", num(us(r.p999)))
                    .raw("cpu_us", r.cpu.map_or("null".into(), |c| num(us(c))))
                    .with("samples_us", |out| {
                        out.push('[');
                        for (i, t) in r.samples.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            let _ = write!(out, "{:.3}", us(*t));
                        }
                        out.push(']');
                    })
                    .end();
            }
            out.push(']');
        }
        let mut s = String::new();
        let mut o = Object::new(&mut s);
        for (k, v) in &self.header {
            match v.parse::<u64>() {
                Ok(n) => o.raw(k, n),
                Err(_) => o.str(k, v),
            };
        }
        o.str("timing", self.timing)
            .with("rows", |out| rows_json(out, &self.rows));
        if !self.tcp.is_empty() {
            o.with("baseline_tcp", |out| rows_json(out, &self.tcp));
            o.with("baseline_iperf3", |out| {
                out.push('[');
                for (i, (streams, r)) in self.iperf3.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let mut b = Object::new(out);
                    b.raw("streams", streams);
                    match r {
                        Ok(g) => b.raw("gbps", num(*g)),
                        Err(e) => b.raw("gbps", "null").str("skipped", e),
                    };
                    b.end();
                }
                out.push(']');
            });
        }
        if let Some((op, rows)) = &self.copy {
            o.str("baseline_copy_op", op)
                .with("baseline_copy", |out| rows_json(out, rows));
        }
        o.end();
        s.push('\n');
        s
    }
}

// ---------------------------------------------------------------------------------------
// Buffers and pattern

/// Position-derived pattern, so a receiver (here or on another host) can check any prefix
/// without holding a copy of what was sent.
fn pattern_word(i: u64) -> u64 {
    (i ^ 0x7463_7078_6265_6e63)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .rotate_left(29)
        ^ i
}

fn fill_pattern(buf: &mut [u8]) {
    for (i, c) in buf.chunks_mut(8).enumerate() {
        c.copy_from_slice(&pattern_word(i as u64).to_le_bytes()[..c.len()]);
    }
}

/// First mismatching offset and the number of wrong bytes, if any.
fn check_pattern(buf: &[u8]) -> Option<(usize, u8, u8, usize)> {
    let mut first = None;
    let mut bad = 0;
    for (i, c) in buf.chunks(8).enumerate() {
        let want = pattern_word(i as u64).to_le_bytes();
        if c != &want[..c.len()] {
            for (j, (&g, &w)) in c.iter().zip(&want).enumerate() {
                if g != w {
                    first.get_or_insert((i * 8 + j, g, w));
                    bad += 1;
                }
            }
        }
    }
    first.map(|(at, got, want)| (at, got, want, bad))
}

fn verify_failed(size: u64, (at, got, want, bad): (usize, u8, u8, usize)) -> String {
    format!(
        "VERIFY FAILED for {}: {bad} of {size} bytes differ, first at offset {at} \
(got {got:#04x}, expected {want:#04x})",
        size_label(size)
    )
}

/// The CUDA device the `cuda` buffers live on; opened only when a side asks for one.
#[derive(Clone)]
struct Gpu {
    ctx: Arc<CudaContext>,
    device: i32,
}

impl Gpu {
    /// Probes for a driver and a device before any other CUDA call, so a machine without
    /// one gets an error rather than a failed `dlopen` panic.
    fn open(device: i32) -> BenchResult<Gpu> {
        tcpx_kernels::gpu_available().map_err(|e| format!("--mem cuda: {e}"))?;
        let ctx = CudaContext::new(device as usize)
            .map_err(|e| format!("--gpu {device}: CUDA context: {e}"))?;
        Ok(Gpu { ctx, device })
    }
}

fn cuda_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e}")
}

/// A transfer buffer in host or device memory.
enum Buf {
    Host(Vec<u8>),
    Cuda(DeviceBuffer),
}

impl Buf {
    fn new(len: usize, gpu: Option<&Gpu>) -> BenchResult<Buf> {
        Ok(match gpu {
            None => Buf::Host(vec![0u8; len]),
            Some(g) => {
                let mut d = DeviceBuffer::new(&g.ctx, len)
                    .map_err(|e| format!("{len}-byte device buffer on GPU {}: {e}", g.device))?;
                d.fill(0).map_err(|e| e.to_string())?;
                Buf::Cuda(d)
            }
        })
    }

    fn kind(&self) -> MemKind {
        match self {
            Buf::Host(_) => MemKind::Host,
            Buf::Cuda(_) => MemKind::Cuda,
        }
    }

    /// The pattern over the whole buffer (device memory: written once from a host copy).
    fn fill_pattern(&mut self) -> BenchResult<()> {
        match self {
            Buf::Host(v) => fill_pattern(v),
            Buf::Cuda(d) => {
                let mut v = vec![0u8; d.len()];
                fill_pattern(&mut v);
                d.write(0, &v).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Zeroes at least the first `n` bytes.
    fn zero(&mut self, n: usize) -> BenchResult<()> {
        match self {
            Buf::Host(v) => v[..n].fill(0),
            Buf::Cuda(d) => d.fill(0).map_err(|e| e.to_string())?,
        }
        Ok(())
    }

    /// `check_pattern` over the first `n` bytes (device memory: copied back to host first).
    fn check(&self, n: usize) -> BenchResult<Option<(usize, u8, u8, usize)>> {
        Ok(match self {
            Buf::Host(v) => check_pattern(&v[..n]),
            Buf::Cuda(d) => {
                let mut v = vec![0u8; n];
                d.read(0, &mut v).map_err(|e| e.to_string())?;
                check_pattern(&v)
            }
        })
    }
}

/// One side's registered memory and the segments of the current size.
struct Endpoint {
    // Declared first so it drops (closing comms) before the memory it registered.
    session: Session,
    buf: Buf,
    mem: MemId,
    segs: Vec<Segment>,
    /// Two-host control messages: `[0, CTRL)` outgoing, `[CTRL, 2*CTRL)` incoming.
    ctrl: Vec<u8>,
    ctrl_mem: MemId,
}

const CTRL: usize = 128;

impl Endpoint {
    /// `len` bytes of host memory, or device memory on `gpu`.
    fn new(
        mut session: Session,
        len: u64,
        segments: usize,
        gpu: Option<&Gpu>,
    ) -> BenchResult<Endpoint> {
        let len = usize::try_from(len).map_err(|_| "size does not fit in memory".to_string())?;
        let mut buf = Buf::new(len, gpu)?;
        let mut ctrl = vec![0u8; 2 * CTRL];
        let (ptr, memory) = match &mut buf {
            Buf::Host(v) => (v.as_mut_ptr().cast(), Memory::Host),
            Buf::Cuda(d) => (
                d.ptr() as usize as *mut std::ffi::c_void,
                Memory::Cuda {
                    device: gpu.expect("device buffers come from a GPU").device,
                },
            ),
        };
        // SAFETY: both buffers live in the Endpoint, are never resized, and are deregistered
        // in `close` before they drop (on error paths the session drops first, closing comms).
        let (mem, ctrl_mem) = unsafe {
            (
                session
                    .register(ptr, len, memory)
                    .map_err(err("register"))?,
                session
                    .register(ctrl.as_mut_ptr().cast(), ctrl.len(), Memory::Host)
                    .map_err(err("register"))?,
            )
        };
        Ok(Endpoint {
            session,
            buf,
            mem,
            segs: Vec::with_capacity(segments),
            ctrl,
            ctrl_mem,
        })
    }

    /// `size` bytes in `n` equal segments (the last takes the remainder).
    fn set_size(&mut self, size: u64, n: usize) {
        self.segs.clear();
        let each = size / n as u64;
        for k in 0..n as u64 {
            let offset = k * each;
            let len = if k + 1 == n as u64 {
                size - offset
            } else {
                each
            };
            self.segs.push(Segment {
                mem: self.mem,
                offset,
                remote_offset: offset,
                len,
            });
        }
    }

    fn transfer_timeout(&self) -> Duration {
        self.session.config().timeout.max(MIN_TRANSFER_TIMEOUT)
    }

    /// Deregisters the buffers; the session stays usable.
    fn close(mut self) -> BenchResult<Session> {
        self.session
            .deregister(self.mem)
            .map_err(err("deregister"))?;
        self.session
            .deregister(self.ctrl_mem)
            .map_err(err("deregister"))?;
        Ok(self.session)
    }
}

/// Drives `s` until every id is done; never allocates.
fn wait_all(s: &mut Session, ids: &[XferId], timeout: Duration) -> BenchResult<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let moved = s.progress().map_err(err("progress"))?;
        let mut done = true;
        for &id in ids {
            done &= matches!(s.status(id), Ok(Progress::Done { .. }));
        }
        if done {
            for &id in ids {
                s.release(id).map_err(err("release"))?;
            }
            return Ok(());
        }
        if !moved {
            if Instant::now() >= deadline {
                return Err("a transfer did not complete in time (is the peer alive?)".into());
            }
            // The plugin's helper threads do the copying; give them the core.
            thread::yield_now();
        }
    }
}

/// How many iterations a size gets: `--iters`, else adaptive (at least the `--tail` minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Count {
    fixed: Option<usize>,
    tail: bool,
}

impl Count {
    /// Fixed warm-up by size (both peers must agree without talking).
    fn warmups(self, size: u64) -> usize {
        if self.fixed.is_some() {
            return 1;
        }
        (WARMUP_BYTES / size).clamp(2, 200) as usize
    }

    /// Enough measured iterations for about `TARGET_TIME`; with `--tail`, at least enough
    /// for p99.9 to rest on ten samples beyond it (up to `TAIL_MAX_BYTES`) or on one.
    fn iters(self, size: u64, warm: &[Duration]) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        let min = match (self.tail, size <= TAIL_MAX_BYTES) {
            (false, _) => MIN_ITERS,
            (true, true) => TAIL_ITERS,
            (true, false) => TAIL_ITERS_LARGE,
        };
        let mean = secs(warm.iter().sum::<Duration>()) / warm.len().max(1) as f64;
        ((TARGET_TIME.as_secs_f64() / mean).ceil() as usize).clamp(min, MAX_ITERS)
    }
}

/// `\r[3/7] 4 MiB …` on stderr, only when someone watches it.
struct Ticker {
    tty: bool,
    total: usize,
}

impl Ticker {
    fn new(total: usize) -> Ticker {
        Ticker {
            tty: std::io::stderr().is_terminal(),
            total,
        }
    }

    fn show(&self, i: usize, size: u64, what: &str) {
        if self.tty {
            eprint!(
                "\r[{}/{}] {} {what}…\x1b[K",
                i + 1,
                self.total,
                size_label(size)
            );
        }
    }

    fn clear(&self) {
        if self.tty {
            eprint!("\r\x1b[K");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Loopback: both sessions in this process

fn loopback(o: &Options, cfg: Config) -> BenchResult<Report> {
    // Before the plugin and the sessions: without a GPU, fail fast and say so.
    let open = |k: MemKind, device: i32| -> BenchResult<Option<Gpu>> {
        match k {
            MemKind::Cuda => Gpu::open(device).map(Some),
            MemKind::Host => Ok(None),
        }
    };
    let (tx_gpu, rx_gpu) = (open(o.mem.0, o.gpu.0)?, open(o.mem.1, o.gpu.1)?);
    if cfg.plugin.is_none() {
        // The embedded tcpxsock would pick a real NIC by default; loopback means `lo`.
        tcpx_sock::config::configure(tcpx_sock::config::Config {
            ifname: Some("lo".into()),
            ..tcpx_sock::config::Config::try_from_env()?
        });
    }
    let net = Session::open_net(&cfg).map_err(err("open plugin"))?;
    // Each session drives the GPU of its buffers (TCPX binds comms to it at the handshake).
    let on = |k: MemKind, device: i32| Config {
        gpu: (k == MemKind::Cuda).then_some(device).or(cfg.gpu),
        ..cfg.clone()
    };
    let (a, b) = pair(&net, &on(o.mem.0, o.gpu.0), &on(o.mem.1, o.gpu.1))?;
    let devices = [
        ("devices_tx", channel_devices(&net, &a)),
        ("devices_rx", channel_devices(&net, &b)),
    ];
    let max = *o.sizes.iter().max().expect("at least one size");
    let mut tx = Endpoint::new(a, max, o.segments, tx_gpu.as_ref())?;
    let mut rx = Endpoint::new(b, max, o.segments, rx_gpu.as_ref())?;
    tx.buf.fill_pattern()?;

    let ticker = Ticker::new(o.sizes.len());
    let mut rows = Vec::with_capacity(o.sizes.len());
    for (i, &size) in o.sizes.iter().enumerate() {
        ticker.show(i, size, "tcpx");
        tx.set_size(size, o.segments);
        rx.set_size(size, o.segments);
        let mut warm = vec![Duration::ZERO; o.count().warmups(size)];
        measure(o.poller, &mut tx, &mut rx, &mut warm)?;
        let mut times = vec![Duration::ZERO; o.count().iters(size, &warm)];
        let cpu = process_cpu();
        measure(o.poller, &mut tx, &mut rx, &mut times)?;
        rows.push(Row::from_times(size, &times).with_cpu(process_cpu() - cpu));
        if o.verify {
            // An untimed extra transfer into a zeroed buffer: every byte must be rewritten.
            rx.buf.zero(size as usize)?;
            measure(o.poller, &mut tx, &mut rx, &mut [Duration::ZERO])?;
            if let Some(bad) = rx.buf.check(size as usize)? {
                ticker.clear();
                return Err(verify_failed(size, bad));
            }
        }
    }
    let (mut tcp, mut iperf3, mut copy) = (Vec::new(), Vec::new(), None);
    if o.baseline {
        // The engine's host buffers double as the baseline's: no extra gigabytes resident.
        // A device side gets a host stand-in (TCP reads and writes host memory only).
        let mut src_host = Vec::new();
        let src: &[u8] = match &tx.buf {
            Buf::Host(v) => v,
            Buf::Cuda(_) => {
                src_host = vec![0u8; max as usize];
                fill_pattern(&mut src_host);
                &src_host
            }
        };
        let mut dst_host = Vec::new();
        let dst: &mut [u8] = match &mut rx.buf {
            Buf::Host(v) => v,
            Buf::Cuda(_) => {
                dst_host = vec![0u8; max as usize];
                &mut dst_host
            }
        };
        for (i, &size) in o.sizes.iter().enumerate() {
            ticker.show(i, size, "tcp ping-pong");
            let n = size as usize;
            tcp.push(tcp_pingpong(&src[..n], &mut dst[..n], o.count())?);
        }
        drop((src_host, dst_host));
        // Device to device across GPUs is a peer copy; the driver routes it by address.
        if let Some(g) = rx_gpu.as_ref().or(tx_gpu.as_ref()) {
            let op = copy_name(tx.buf.kind(), rx.buf.kind());
            let mut rows = Vec::with_capacity(o.sizes.len());
            for (i, &size) in o.sizes.iter().enumerate() {
                ticker.show(i, size, op);
                rows.push(copy_row(g, &tx.buf, &mut rx.buf, size, o.count())?);
            }
            copy = Some((op, rows));
        }
        for streams in [1, 4] {
            ticker.show(o.sizes.len() - 1, max, &format!("iperf3 -P {streams}"));
            iperf3.push((streams, run_iperf3(streams)));
        }
    }
    ticker.clear();
    tx.close()?;
    rx.close()?;
    let mut header = config_header(&net, &cfg, o.segments);
    header.insert(0, ("mode", "loopback".into()));
    header.insert(1, ("mem", format!("{}:{}", o.mem.0.name(), o.mem.1.name())));
    let gpus = match (&tx_gpu, &rx_gpu) {
        (Some(t), Some(r)) if t.device != r.device => Some(format!("{}:{}", t.device, r.device)),
        (Some(g), _) | (_, Some(g)) => Some(g.device.to_string()),
        (None, None) => None,
    };
    if let Some(g) = gpus {
        header.insert(2, ("gpu", g));
    }
    header.push(("poller", o.poller.name().into()));
    header.extend(devices);
    Ok(Report {
        header,
        timing: "time = post on both sides to done on both sides",
        plugin_name: net.name().to_string(),
        rows,
        tcp,
        iperf3,
        copy,
    })
}

/// The plugin device each channel of `s` uses, as `device(name)` by channel.
fn channel_devices(net: &Net, s: &Session) -> String {
    s.channel_devices()
        .iter()
        .map(|&d| {
            let name = net.properties(usize::from(d)).map(|p| p.name);
            format!("{d}({})", name.as_deref().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn config_header(net: &Net, cfg: &Config, segments: usize) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("plugin", net.name().to_string()),
        ("source", net.source().to_string()),
    ];
    if cfg.plugin.is_none() {
        let ifname = tcpx_sock::config::current().ifname;
        h.push(("ifname", ifname.unwrap_or_else(|| "(default)".into())));
    }
    h.extend([
        ("channels", cfg.channels.to_string()),
        ("chunk_bytes", cfg.chunk_bytes.to_string()),
        ("window", cfg.window.to_string()),
        ("segments", segments.to_string()),
    ]);
    h
}

/// Two connected sessions; `ConnInfo` swapped in memory, connect/accept on two threads
/// because each side's handshake only finishes while the other's runs.
fn pair(net: &Net, cfg_a: &Config, cfg_b: &Config) -> BenchResult<(Session, Session)> {
    let la = Session::listen(net.clone(), cfg_a.clone()).map_err(err("listen"))?;
    let lb = Session::listen(net.clone(), cfg_b.clone()).map_err(err("listen"))?;
    let (ia, ib) = (la.conn_info().to_vec(), lb.conn_info().to_vec());
    thread::scope(|s| {
        let h = s.spawn(move || lb.connect(&ia));
        let a = la.connect(&ib).map_err(err("handshake"));
        let b = h
            .join()
            .map_err(|_| "handshake thread panicked".to_string())?
            .map_err(err("handshake"));
        Ok((a?, b?))
    })
}

/// Fills `times` with one transfer each, sender `tx` to receiver `rx`.
fn measure(
    poller: Poller,
    tx: &mut Endpoint,
    rx: &mut Endpoint,
    times: &mut [Duration],
) -> BenchResult<()> {
    match poller {
        Poller::Single => measure_single(tx, rx, times),
        Poller::Threads => measure_threads(tx, rx, times),
    }
}

fn measure_single(tx: &mut Endpoint, rx: &mut Endpoint, times: &mut [Duration]) -> BenchResult<()> {
    let timeout = tx.transfer_timeout();
    for t in times.iter_mut() {
        let t0 = Instant::now();
        let r = rx
            .session
            .post(Direction::Recv, &rx.segs)
            .map_err(err("post"))?;
        let s = tx
            .session
            .post(Direction::Send, &tx.segs)
            .map_err(err("post"))?;
        let deadline = t0 + timeout;
        let (mut rd, mut sd) = (false, false);
        while !(rd && sd) {
            let mut moved = false;
            if !rd {
                moved |= rx.session.progress().map_err(err("progress"))?;
                rd = matches!(rx.session.status(r), Ok(Progress::Done { .. }));
            }
            if !sd {
                moved |= tx.session.progress().map_err(err("progress"))?;
                sd = matches!(tx.session.status(s), Ok(Progress::Done { .. }));
            }
            if rd && sd {
                break;
            }
            if !moved {
                if Instant::now() >= deadline {
                    return Err("a transfer did not complete in time".into());
                }
                thread::yield_now();
            }
        }
        *t = t0.elapsed();
        rx.session.release(r).map_err(err("release"))?;
        tx.session.release(s).map_err(err("release"))?;
    }
    Ok(())
}

/// A two-party barrier that spins (yielding) instead of sleeping, so the second thread
/// starts within a scheduler slice rather than a futex wake-up, and that a failing side can
/// open for good so its partner does not wait forever.
struct SpinBarrier {
    arrived: AtomicUsize,
    abort: AtomicBool,
}

impl SpinBarrier {
    /// Waits for the partner's arrival number `round`; false once aborted.
    fn wait(&self, round: usize) -> bool {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < 2 * (round + 1) {
            if self.abort.load(Ordering::Acquire) {
                return false;
            }
            thread::yield_now();
        }
        !self.abort.load(Ordering::Acquire)
    }
}

fn measure_threads(
    tx: &mut Endpoint,
    rx: &mut Endpoint,
    times: &mut [Duration],
) -> BenchResult<()> {
    let timeout = tx.transfer_timeout();
    let now = Instant::now();
    let mut tx_marks = vec![(now, now); times.len()];
    let mut rx_marks = vec![(now, now); times.len()];
    let barrier = SpinBarrier {
        arrived: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
    };
    let side = |s: &mut Session, dir, segs: &[Segment], marks: &mut [(Instant, Instant)]| {
        let r = (|| {
            for (round, m) in marks.iter_mut().enumerate() {
                if !barrier.wait(round) {
                    return Err("the other side failed".to_string());
                }
                let t0 = Instant::now();
                let id = s.post(dir, segs).map_err(err("post"))?;
                wait_all(s, &[id], timeout)?;
                *m = (t0, Instant::now());
            }
            Ok(())
        })();
        if r.is_err() {
            barrier.abort.store(true, Ordering::Release);
        }
        r
    };
    let (a, b) = thread::scope(|sc| {
        let h = sc.spawn(|| side(&mut rx.session, Direction::Recv, &rx.segs, &mut rx_marks));
        let a = side(&mut tx.session, Direction::Send, &tx.segs, &mut tx_marks);
        let b = h
            .join()
            .unwrap_or_else(|_| Err("receiver thread panicked".into()));
        (a, b)
    });
    a.and(b)?;
    for ((t, s), r) in times.iter_mut().zip(&tx_marks).zip(&rx_marks) {
        *t = s.1.max(r.1) - s.0.min(r.0);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Baselines

/// The driver copy that moves what a `src` → `dst` transfer moves.
fn copy_name(src: MemKind, dst: MemKind) -> &'static str {
    match (src, dst) {
        (MemKind::Host, MemKind::Cuda) => "cuMemcpyHtoD",
        (MemKind::Cuda, MemKind::Host) => "cuMemcpyDtoH",
        (MemKind::Cuda, MemKind::Cuda) => "cuMemcpyDtoD",
        (MemKind::Host, MemKind::Host) => "memcpy",
    }
}

/// `size` bytes `src` → `dst` with the synchronous driver copy, timed to the context's
/// synchronize; warm-up and iteration counts as for the engine.
fn copy_row(gpu: &Gpu, src: &Buf, dst: &mut Buf, size: u64, count: Count) -> BenchResult<Row> {
    let n = size as usize;
    gpu.ctx
        .bind_to_thread()
        .map_err(cuda_err("cuCtxSetCurrent"))?;
    let mut run = |times: &mut [Duration]| -> BenchResult<()> {
        for t in times.iter_mut() {
            let t0 = Instant::now();
            // SAFETY: every range is the first `n` bytes of a buffer at least `n` long
            // (sized for the largest transfer); a context of one of the devices is bound, and
            // the driver routes a copy between two GPUs' memory by address (unified
            // addressing).
            unsafe {
                match (src, &mut *dst) {
                    (Buf::Host(s), Buf::Cuda(d)) => cu::memcpy_htod_sync(d.ptr(), &s[..n]),
                    (Buf::Cuda(s), Buf::Host(d)) => cu::memcpy_dtoh_sync(&mut d[..n], s.ptr()),
                    (Buf::Cuda(s), Buf::Cuda(d)) => cu::memcpy_dtod_sync(d.ptr(), s.ptr(), n),
                    (Buf::Host(s), Buf::Host(d)) => {
                        d[..n].copy_from_slice(&s[..n]);
                        Ok(())
                    }
                }
            }
            .map_err(cuda_err("cuMemcpy"))?;
            gpu.ctx
                .synchronize()
                .map_err(cuda_err("cuCtxSynchronize"))?;
            *t = t0.elapsed();
        }
        Ok(())
    };
    let mut warm = vec![Duration::ZERO; count.warmups(size)];
    run(&mut warm)?;
    let mut times = vec![Duration::ZERO; count.iters(size, &warm)];
    let cpu = process_cpu();
    run(&mut times)?;
    Ok(Row::from_times(size, &times).with_cpu(process_cpu() - cpu))
}

/// Plain TCP between two threads: the sender writes `src`, the receiver reads it all and
/// replies one byte before the next iteration. Timed like ours: from the sender's write
/// start to the receiver's last byte (the reply is outside the timed span; it only keeps the
/// iterations apart, as the engine's barrier does).
fn tcp_pingpong(src: &[u8], dst: &mut [u8], count: Count) -> BenchResult<Row> {
    let io = |what: &'static str| move |e: std::io::Error| format!("tcp baseline: {what}: {e}");
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind"))?;
    let tx = TcpStream::connect(l.local_addr().map_err(io("bind"))?).map_err(io("connect"))?;
    let (rx, _) = l.accept().map_err(io("accept"))?;
    for s in [&tx, &rx] {
        s.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
        s.set_read_timeout(Some(MIN_TRANSFER_TIMEOUT))
            .map_err(io("timeout"))?;
    }
    let mut run = |times: &mut [Duration]| -> BenchResult<()> {
        let now = Instant::now();
        let mut starts = vec![now; times.len()];
        let mut ends = vec![now; times.len()];
        let (a, b) = thread::scope(|sc| {
            let h = sc.spawn(|| -> std::io::Result<()> {
                for e in ends.iter_mut() {
                    (&rx).read_exact(dst)?;
                    *e = Instant::now();
                    (&rx).write_all(&[1])?;
                }
                Ok(())
            });
            let a = (|| -> std::io::Result<()> {
                let mut one = [0u8; 1];
                for st in starts.iter_mut() {
                    *st = Instant::now();
                    (&tx).write_all(src)?;
                    (&tx).read_exact(&mut one)?;
                }
                Ok(())
            })();
            if a.is_err() {
                // Wakes the receiver out of its blocking read.
                let _ = tx.shutdown(Shutdown::Both);
            }
            (a, h.join())
        });
        a.map_err(io("send"))?;
        b.map_err(|_| "tcp baseline: receiver panicked".to_string())?
            .map_err(io("receive"))?;
        for ((t, s), e) in times.iter_mut().zip(&starts).zip(&ends) {
            *t = *e - *s;
        }
        Ok(())
    };
    let size = src.len() as u64;
    let mut warm = vec![Duration::ZERO; count.warmups(size)];
    run(&mut warm)?;
    let mut times = vec![Duration::ZERO; count.iters(size, &warm)];
    let cpu = process_cpu();
    run(&mut times)?;
    Ok(Row::from_times(size, &times).with_cpu(process_cpu() - cpu))
}

/// `iperf3 -c 127.0.0.1 -P streams` against a one-shot server of ours; GB/s received.
pub(super) fn run_iperf3(streams: u32) -> BenchResult<f64> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port()
        .to_string();
    let mut server = match Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("iperf3 is not on PATH (apt-get install iperf3)".into())
        }
        Err(e) => return Err(format!("cannot start iperf3: {e}")),
    };
    let mut result = Err("the iperf3 client never reached the server".to_string());
    // The server needs a moment to listen; a refused client exits at once, so retry.
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port, "-t", "2", "--json"])
            .args(["-P", &streams.to_string()])
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(out) if out.status.success() => {
                result = parse_iperf3(&String::from_utf8_lossy(&out.stdout))
                    .map(|bps| bps / 8e9)
                    .ok_or_else(|| "iperf3 --json had no end.sum_received".to_string());
                break;
            }
            Ok(_) => {}
            Err(e) => {
                result = Err(format!("cannot run the iperf3 client: {e}"));
                break;
            }
        }
        if matches!(server.try_wait(), Ok(Some(_))) {
            result = Err("the iperf3 server exited early".into());
            break;
        }
    }
    if matches!(server.try_wait(), Ok(None)) {
        let _ = server.kill();
    }
    let _ = server.wait();
    result
}

/// `end.sum_received.bits_per_second` from iperf3's JSON, without a JSON parser: the key
/// `sum_received` appears once, in `end`, and its first `bits_per_second` is the total.
fn parse_iperf3(json: &str) -> Option<f64> {
    let rest = &json[json.find("\"sum_received\"")?..];
    let rest = &rest[rest.find("\"bits_per_second\"")? + "\"bits_per_second\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------
// Two hosts: one session per process, the listener's options rule

const PLAN_MAGIC: u64 = 0x6e61_6c70_7863_7074; // "tpcxplan"
/// 2: the statistics carry p90 and p99.9, the plan the `--tail` flag.
const PLAN_VERSION: u64 = 2;
const SIZE_MAGIC: u64 = 0x657a_6973_7863_7074;
const STATS_MAGIC: u64 = 0x7374_6174_7863_7074;
const VERIFY_MAGIC: u64 = 0x6966_7276_7863_7074;
const FLAG_REVERSE: u64 = 1;
const FLAG_VERIFY: u64 = 2;
const FLAG_TAIL: u64 = 4;

type Words = [u64; CTRL / 8];

fn ctrl_send(ep: &mut Endpoint, words: &Words) -> BenchResult<()> {
    for (c, w) in ep.ctrl[..CTRL].chunks_mut(8).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    let seg = Segment {
        mem: ep.ctrl_mem,
        offset: 0,
        remote_offset: CTRL as u64,
        len: CTRL as u64,
    };
    let id = ep
        .session
        .post(Direction::Send, &[seg])
        .map_err(err("post"))?;
    let timeout = ep.transfer_timeout();
    wait_all(&mut ep.session, &[id], timeout)
}

fn ctrl_recv(ep: &mut Endpoint) -> BenchResult<Words> {
    let seg = Segment {
        mem: ep.ctrl_mem,
        offset: CTRL as u64,
        remote_offset: 0,
        len: CTRL as u64,
    };
    let id = ep
        .session
        .post(Direction::Recv, &[seg])
        .map_err(err("post"))?;
    let timeout = ep.transfer_timeout();
    wait_all(&mut ep.session, &[id], timeout)?;
    let mut w = [0u64; CTRL / 8];
    for (w, c) in w.iter_mut().zip(ep.ctrl[CTRL..].chunks(8)) {
        *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    Ok(w)
}

fn expect(w: &Words, magic: u64, what: &str) -> BenchResult<()> {
    if w[0] != magic {
        return Err(format!(
            "peer sent something else than its {what}: are both sides the same tcpx version?"
        ));
    }
    Ok(())
}

/// What the listener tells the connector before anything is measured.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    reverse: bool,
    verify: bool,
    segments: usize,
    iters: Option<usize>,
    tail: bool,
    chunk: u32,
    sizes: Vec<u64>,
}

impl Plan {
    fn count(&self) -> Count {
        Count {
            fixed: self.iters,
            tail: self.tail,
        }
    }

    fn to_words(&self) -> Words {
        let mut w = [0u64; CTRL / 8];
        w[0] = PLAN_MAGIC;
        w[1] = PLAN_VERSION;
        w[2] = (u64::from(self.reverse) * FLAG_REVERSE)
            | (u64::from(self.verify) * FLAG_VERIFY)
            | (u64::from(self.tail) * FLAG_TAIL);
        w[3] = self.segments as u64;
        w[4] = self.iters.unwrap_or(0) as u64;
        w[5] = u64::from(self.chunk);
        w[6] = self.sizes.len() as u64;
        w[7..7 + self.sizes.len()].copy_from_slice(&self.sizes);
        w
    }

    fn from_words(w: &Words) -> BenchResult<Plan> {
        expect(w, PLAN_MAGIC, "plan")?;
        if w[1] != PLAN_VERSION {
            return Err(format!(
                "peer's bench plan version {} (this is {PLAN_VERSION})",
                w[1]
            ));
        }
        let n = w[6] as usize;
        if n == 0 || n > MAX_SIZES || w[7..7 + n].iter().any(|&s| s == 0 || s > MAX_SIZE) {
            return Err("peer's bench plan has bad sizes".into());
        }
        let segments = w[3] as usize;
        if segments == 0 || w[7..7 + n].iter().any(|&s| s < segments as u64) {
            return Err("peer's bench plan has bad segments".into());
        }
        Ok(Plan {
            reverse: w[2] & FLAG_REVERSE != 0,
            verify: w[2] & FLAG_VERIFY != 0,
            tail: w[2] & FLAG_TAIL != 0,
            segments,
            iters: (w[4] > 0).then_some(w[4] as usize),
            chunk: w[5] as u32,
            sizes: w[7..7 + n].to_vec(),
        })
    }
}

fn two_hosts(o: &Options, mut cfg: Config) -> BenchResult<Report> {
    // The session's GPU must be known at the handshake: this side's role (and so its buffers'
    // GPU) is known here only to the listener, or when both sides name the same GPU.
    let own = match (&o.mode, o.reverse) {
        (Mode::Listen(_), false) => Some((o.mem.1, o.gpu.1)),
        (Mode::Listen(_), true) => Some((o.mem.0, o.gpu.0)),
        _ if o.gpu.0 == o.gpu.1 => Some((MemKind::Cuda, o.gpu.0)),
        _ => None,
    };
    if let Some((MemKind::Cuda, g)) = own.filter(|_| cfg.gpu.is_none()) {
        if o.mem.0 == MemKind::Cuda || o.mem.1 == MemKind::Cuda {
            cfg.gpu = Some(g);
        }
    }
    // Which role this side plays is the listener's call (--reverse), known after the plan;
    // when both kinds are cuda the GPU is needed either way, so probe before waiting on a peer.
    let mut gpu = match o.mem {
        (MemKind::Cuda, MemKind::Cuda) if o.gpu.0 == o.gpu.1 => Some(Gpu::open(o.gpu.0)?),
        (MemKind::Cuda, MemKind::Cuda) => {
            tcpx_kernels::gpu_available().map_err(|e| format!("--mem cuda: {e}"))?;
            let n = CudaContext::device_count().unwrap_or(0);
            let most = o.gpu.0.max(o.gpu.1);
            if most >= n {
                return Err(format!("--gpu {most}: this machine has {n} GPU(s)"));
            }
            None
        }
        _ => None,
    };
    let net = Session::open_net(&cfg).map_err(err("open plugin"))?;
    let listening = matches!(o.mode, Mode::Listen(_));
    let session = match &o.mode {
        Mode::Listen(port) => {
            let l = TcpListener::bind(("0.0.0.0", *port))
                .map_err(|e| format!("bind port {port}: {e}"))?;
            Session::establish(net.clone(), cfg.clone(), Rendezvous::Accept(&l))
        }
        Mode::Connect(addr) => {
            let a = addr
                .to_socket_addrs()
                .map_err(|e| format!("{addr}: {e}"))?
                .next()
                .ok_or_else(|| format!("{addr} resolves to nothing"))?;
            Session::establish(net.clone(), cfg.clone(), Rendezvous::Connect(a))
        }
        Mode::Loopback => unreachable!("loopback has its own driver"),
    }
    .map_err(err("handshake"))?;
    let devices = channel_devices(&net, &session);

    // The plan travels first, over the session itself, before any buffer size is known.
    let mut ep = Endpoint::new(session, 1, 1, None)?;
    let plan = if listening {
        let plan = Plan {
            reverse: o.reverse,
            verify: o.verify,
            segments: o.segments,
            iters: o.iters,
            tail: o.tail,
            chunk: cfg.chunk_bytes,
            sizes: o.sizes.clone(),
        };
        ctrl_send(&mut ep, &plan.to_words())?;
        plan
    } else {
        let plan = Plan::from_words(&ctrl_recv(&mut ep)?)?;
        if plan.chunk != cfg.chunk_bytes {
            return Err(format!(
                "the listener uses --chunk {}, this side {}: both must match",
                plan.chunk, cfg.chunk_bytes
            ));
        }
        plan
    };
    let session = ep.close()?;
    let sender = listening == plan.reverse;
    let max = *plan.sizes.iter().max().expect("plan has sizes");
    let (kind, device) = if sender {
        (o.mem.0, o.gpu.0)
    } else {
        (o.mem.1, o.gpu.1)
    };
    if kind == MemKind::Cuda && gpu.as_ref().is_none_or(|g| g.device != device) {
        gpu = Some(Gpu::open(device)?);
    }
    let on = gpu.as_ref().filter(|_| kind == MemKind::Cuda);
    let mut ep = Endpoint::new(session, max, plan.segments, on)?;
    if sender {
        ep.buf.fill_pattern()?;
    }

    let ticker = Ticker::new(plan.sizes.len());
    let mut rows = Vec::with_capacity(plan.sizes.len());
    for (i, &size) in plan.sizes.iter().enumerate() {
        ticker.show(i, size, if sender { "sending" } else { "receiving" });
        ep.set_size(size, plan.segments);
        let row = if sender {
            send_size(&mut ep, &plan, size)
        } else {
            recv_size(&mut ep, &plan, size)
        };
        match row {
            Ok(r) => rows.push(r),
            Err(e) => {
                ticker.clear();
                return Err(e);
            }
        }
    }
    ticker.clear();
    ep.close()?;
    let mut header = config_header(&net, &cfg, plan.segments);
    header.insert(
        0,
        ("mode", if listening { "listen" } else { "connect" }.into()),
    );
    header.insert(
        1,
        ("role", if sender { "sender" } else { "receiver" }.into()),
    );
    header.insert(2, ("mem", kind.name().into()));
    if let Some(g) = on {
        header.insert(3, ("gpu", g.device.to_string()));
    }
    header.push(("devices", devices));
    Ok(Report {
        header,
        timing: "time = sender's post to the receiver's 8-byte ack \
(one small message more than the transfer)",
        plugin_name: net.name().to_string(),
        rows,
        tcp: Vec::new(),
        iperf3: Vec::new(),
        copy: None,
    })
}

/// One iteration on the sending host: data out, the receiver's ack back.
fn send_iter(ep: &mut Endpoint, timeout: Duration) -> BenchResult<Duration> {
    let ack = Segment {
        mem: ep.ctrl_mem,
        offset: CTRL as u64,
        remote_offset: 0,
        len: 8,
    };
    let t0 = Instant::now();
    let a = ep
        .session
        .post(Direction::Recv, &[ack])
        .map_err(err("post"))?;
    let d = ep
        .session
        .post(Direction::Send, &ep.segs)
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[d, a], timeout)?;
    Ok(t0.elapsed())
}

/// One iteration on the receiving host: data in, then the ack that lets the sender go on.
fn recv_iter(ep: &mut Endpoint, timeout: Duration) -> BenchResult<()> {
    let ack = Segment {
        mem: ep.ctrl_mem,
        offset: 0,
        remote_offset: CTRL as u64,
        len: 8,
    };
    let d = ep
        .session
        .post(Direction::Recv, &ep.segs)
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[d], timeout)?;
    let a = ep
        .session
        .post(Direction::Send, &[ack])
        .map_err(err("post"))?;
    wait_all(&mut ep.session, &[a], timeout)
}

fn send_size(ep: &mut Endpoint, plan: &Plan, size: u64) -> BenchResult<Row> {
    let timeout = ep.transfer_timeout();
    let mut warm = vec![Duration::ZERO; plan.count().warmups(size)];
    for t in warm.iter_mut() {
        *t = send_iter(ep, timeout)?;
    }
    let iters = plan.count().iters(size, &warm);
    let mut w = [0u64; CTRL / 8];
    (w[0], w[1], w[2]) = (SIZE_MAGIC, size, iters as u64);
    ctrl_send(ep, &w)?;
    let mut times = vec![Duration::ZERO; iters];
    let cpu = process_cpu();
    for t in times.iter_mut() {
        *t = send_iter(ep, timeout)?;
    }
    let row = Row::from_times(size, &times).with_cpu(process_cpu() - cpu);
    let mut w = [0u64; CTRL / 8];
    w[0] = STATS_MAGIC;
    w[1] = row.p50.as_nanos() as u64;
    w[2] = row.p99.as_nanos() as u64;
    w[3] = row.total.as_nanos() as u64;
    w[4] = row.p90.as_nanos() as u64;
    w[5] = row.p999.as_nanos() as u64;
    ctrl_send(ep, &w)?;
    if plan.verify {
        send_iter(ep, timeout)?;
        let v = ctrl_recv(ep)?;
        expect(&v, VERIFY_MAGIC, "verify result")?;
        if v[1] != 0 {
            return Err(format!(
                "the receiver reports {}",
                verify_failed(size, (v[2] as usize, v[3] as u8, v[4] as u8, v[5] as usize))
            ));
        }
    }
    Ok(row)
}

fn recv_size(ep: &mut Endpoint, plan: &Plan, size: u64) -> BenchResult<Row> {
    let timeout = ep.transfer_timeout();
    for _ in 0..plan.count().warmups(size) {
        recv_iter(ep, timeout)?;
    }
    let w = ctrl_recv(ep)?;
    expect(&w, SIZE_MAGIC, "size")?;
    if w[1] != size {
        return Err(format!("peer measures {} bytes, this side {size}", w[1]));
    }
    let iters = w[2] as usize;
    if iters == 0 || iters > MAX_ITERS.max(plan.iters.unwrap_or(0)) {
        return Err(format!("peer asks for {iters} iterations"));
    }
    let cpu = process_cpu();
    for _ in 0..iters {
        recv_iter(ep, timeout)?;
    }
    let cpu = (process_cpu() - cpu) / iters as u32;
    let s = ctrl_recv(ep)?;
    expect(&s, STATS_MAGIC, "statistics")?;
    // The sender timed the iterations: its statistics, this side's CPU time.
    let row = Row {
        bytes: size,
        iters,
        p50: Duration::from_nanos(s[1]),
        p90: Duration::from_nanos(s[4]),
        p99: Duration::from_nanos(s[2]),
        p999: Duration::from_nanos(s[5]),
        total: Duration::from_nanos(s[3]),
        samples: Vec::new(),
        cpu: Some(cpu),
    };
    if plan.verify {
        let n = size as usize;
        ep.buf.zero(n)?;
        recv_iter(ep, timeout)?;
        let bad = ep.buf.check(n)?;
        let mut v = [0u64; CTRL / 8];
        v[0] = VERIFY_MAGIC;
        if let Some((at, got, want, count)) = bad {
            (v[1], v[2], v[3], v[4], v[5]) = (1, at as u64, got.into(), want.into(), count as u64);
        }
        ctrl_send(ep, &v)?;
        if let Some(bad) = bad {
            return Err(verify_failed(size, bad));
        }
    }
    Ok(row)
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let t: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let r = Row::from_times(1000, &t);
        let us = Duration::from_micros;
        assert_eq!(
            (r.p50, r.p90, r.p99, r.p999),
            (us(50), us(90), us(99), us(100))
        );
        assert_eq!(r.total, us(5050));
        assert_eq!(r.samples, t, "raw samples stay in measurement order");
        let t: Vec<Duration> = (1..=2000).map(Duration::from_micros).collect();
        let r = Row::from_times(1, &t);
        assert_eq!((r.p50, r.p99, r.p999), (us(1000), us(1980), us(1998)));
        let r = Row::from_times(1, &[us(7)]).with_cpu(us(3));
        assert_eq!(
            (r.p50, r.p90, r.p99, r.p999, r.cpu),
            (us(7), us(7), us(7), us(7), Some(us(3)))
        );
    }

    #[test]
    fn pattern_check_finds_the_first_difference() {
        let mut b = vec![0u8; 1001];
        fill_pattern(&mut b);
        assert_eq!(check_pattern(&b), None);
        let want = b[333];
        b[333] ^= 0xff;
        b[1000] ^= 1;
        assert_eq!(check_pattern(&b), Some((333, want ^ 0xff, want, 2)));
    }

    #[test]
    fn plan_round_trips_and_rejects_garbage() {
        let p = Plan {
            reverse: true,
            verify: false,
            segments: 3,
            iters: None,
            tail: true,
            chunk: 1 << 19,
            sizes: DEFAULT_SIZES.to_vec(),
        };
        assert_eq!(Plan::from_words(&p.to_words()).unwrap(), p);
        let mut w = p.to_words();
        w[6] = 9;
        assert!(Plan::from_words(&w).is_err());
        w[0] = 0;
        assert!(Plan::from_words(&w).unwrap_err().contains("plan"));
    }

    #[test]
    fn iperf3_json_total_is_found() {
        let j = r#"{"intervals":[{"sum":{"bits_per_second":1}}],
            "end":{"sum_sent":{"bits_per_second":2.5e10},
            "sum_received": {"start":0,"bits_per_second": 2.25e10,"sender":true}}}"#;
        assert_eq!(parse_iperf3(j), Some(2.25e10));
        assert_eq!(parse_iperf3("{}"), None);
    }

    #[test]
    fn labels_and_adaptive_counts() {
        assert_eq!(size_label(4096), "4 KiB");
        assert_eq!(size_label(256 << 20), "256 MiB");
        assert_eq!(size_label(1000), "1000 B");
        let c = |fixed, tail| Count { fixed, tail };
        assert_eq!(c(None, false).warmups(4096), 200);
        assert_eq!(c(None, false).warmups(256 << 20), 2);
        let warm = [Duration::from_millis(1); 4];
        let slow = [Duration::from_secs(1)];
        assert_eq!(c(None, false).iters(4096, &warm), 750);
        assert_eq!(c(None, false).iters(4096, &slow), MIN_ITERS);
        assert_eq!(
            c(None, false).iters(4096, &[Duration::from_nanos(1)]),
            MAX_ITERS
        );
        assert_eq!(c(Some(3), false).iters(4096, &warm), 3);
        assert_eq!(c(Some(3), true).iters(4096, &warm), 3, "--iters wins");
        assert_eq!(c(None, true).iters(1 << 20, &slow), TAIL_ITERS);
        assert_eq!(c(None, true).iters(4 << 20, &slow), TAIL_ITERS_LARGE);
        assert_eq!(
            c(None, true).iters(4096, &[Duration::from_nanos(1)]),
            MAX_ITERS
        );
    }
}
