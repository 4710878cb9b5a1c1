//! `tcpx stream`: messages streamed through the ncclNet plugin API alone — one send comm and
//! one recv comm on loopback, a full window of requests on each side — with no engine in
//! between. `--baseline` runs `iperf3 -P <data sockets>` on 127.0.0.1 right after each
//! point, so the ratio compares the transport with plain TCP on the same machine, in the same
//! command, under the same load.
//!
//! The sender and the receiver each run on their own thread (as iperf3's client and server
//! do). Each window slot owns its own slice of the buffers; after the run the receiver's
//! buffer must equal the sender's, byte for byte.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use tcpx::net::{ConnectHandle, MemKind, Net, RecvBuf, Request};
use tcpx_core::ring::TCPX_REQUESTS;

use crate::bench::{run_iperf3, size_label};
use crate::json::{self, Fixed};
use crate::value;

/// The largest message TCPX accepts in one request.
const MAX_MESSAGE: u64 = 4 << 20;
/// A point that has not finished in this long means a stuck peer, not a slow machine.
const POINT_TIMEOUT: Duration = Duration::from_secs(120);
/// Handshake bound (non-blocking connect/accept retried until both comms exist).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type StreamResult<T> = std::result::Result<T, String>;

/// `tcpx stream` arguments.
#[derive(Debug, clap::Args)]
// A repeated option: the last one counts.
#[command(args_override_self = true)]
pub struct Args {
    /// Bytes per message, K/M/G suffixes, at most 4M (default 512K,4M)
    #[arg(long, value_name = "N[,N...]", action = clap::ArgAction::Set, value_delimiter = ',', value_parser = message_size)]
    size: Vec<u64>,
    /// Data sockets per comm of the embedded tcpxsock (default 1,4); ignored with --plugin (the
    /// plugin's own setting rules)
    #[arg(long, value_name = "N[,N...]", action = clap::ArgAction::Set, value_delimiter = ',', value_parser = nsocks)]
    nsocks: Vec<usize>,
    /// Requests in flight per side, 1..=16
    #[arg(long, value_name = "N", default_value_t = TCPX_REQUESTS, value_parser = window)]
    window: usize,
    /// Bytes streamed per point
    #[arg(long, value_name = "N", default_value = "4G", value_parser = bytes)]
    bytes: u64,
    /// An ncclNet plugin instead of the embedded tcpxsock (on lo)
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// The plugin's device
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = device)]
    device: usize,
    /// iperf3 -c 127.0.0.1 -P NSOCKS after each point, and the ratio
    #[arg(long)]
    baseline: bool,
    /// One JSON object
    #[arg(long)]
    json: bool,
}

fn message_size(s: &str) -> StreamResult<u64> {
    value::size(s, MAX_MESSAGE)
}

fn nsocks(s: &str) -> StreamResult<usize> {
    value::count(s, tcpx_sock::config::MAX_NSOCKS)
}

fn window(s: &str) -> StreamResult<usize> {
    value::count(s, TCPX_REQUESTS)
}

fn bytes(s: &str) -> StreamResult<u64> {
    value::size(s, u64::MAX)
}

fn device(s: &str) -> StreamResult<usize> {
    s.trim()
        .parse()
        .map_err(|_| "expected a device index".to_string())
}

/// `tcpx stream` options: the arguments with their defaults.
#[derive(Debug)]
struct Options {
    sizes: Vec<u64>,
    nsocks: Vec<usize>,
    window: usize,
    bytes: u64,
    plugin: Option<PathBuf>,
    device: usize,
    baseline: bool,
    json: bool,
}

impl From<Args> for Options {
    fn from(a: Args) -> Options {
        let sizes = match a.size {
            s if s.is_empty() => vec![512 << 10, 4 << 20],
            s => s,
        };
        let nsocks = match a.nsocks {
            // Another plugin's socket count is its own setting; one point per size.
            _ if a.plugin.is_some() => vec![0],
            n if n.is_empty() => vec![1, 4],
            n => n,
        };
        Options {
            sizes,
            nsocks,
            window: a.window,
            bytes: a.bytes,
            plugin: a.plugin,
            device: a.device,
            baseline: a.baseline,
            json: a.json,
        }
    }
}

/// One (data sockets, message size) measurement.
struct Point {
    nsocks: usize,
    size: u64,
    messages: u64,
    elapsed: Duration,
    /// `iperf3 -P nsocks` in GB/s, or why it was skipped.
    iperf3: Option<StreamResult<f64>>,
}

impl Point {
    fn gbps(&self) -> f64 {
        (self.size * self.messages) as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }

    fn ratio(&self) -> Option<f64> {
        match self.iperf3 {
            Some(Ok(b)) if b > 0.0 => Some(self.gbps() / b),
            _ => None,
        }
    }
}

/// Runs `tcpx stream`; returns the exit code.
pub fn main(args: Args) -> i32 {
    let o = Options::from(args);
    match run(&o) {
        Ok((net, points)) => {
            print!(
                "{}",
                if o.json {
                    to_json(&net, &o, &points)
                } else {
                    to_text(&net, &o, &points)
                }
            );
            0
        }
        Err(e) => {
            eprintln!("tcpx stream: error: {e}");
            1
        }
    }
}

fn run(o: &Options) -> StreamResult<(Net, Vec<Point>)> {
    let embedded = o.plugin.is_none();
    let base = tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..tcpx_sock::config::Config::try_from_env()?
    };
    if embedded {
        tcpx_sock::config::configure(base.clone());
    }
    let net = match &o.plugin {
        Some(p) => Net::load(p).map_err(|e| e.to_string())?,
        None => Net::embedded(),
    };
    net.init().map_err(|e| e.to_string())?;
    let devices = net.devices().map_err(|e| e.to_string())?;
    if o.device >= devices {
        return Err(format!(
            "device {} does not exist: the plugin has {devices}",
            o.device
        ));
    }
    let mut points = Vec::new();
    for &nsocks in &o.nsocks {
        if embedded {
            // Read by every later listen/connect of the embedded plugin.
            tcpx_sock::config::configure(tcpx_sock::config::Config {
                nsocks,
                ..base.clone()
            });
        }
        for &size in &o.sizes {
            if !o.json {
                eprint!("\rstreaming {} ...        ", label(nsocks, size));
            }
            let messages = (o.bytes / size).max(o.window as u64);
            let elapsed = stream(&net, o.device, size as usize, o.window, messages)?;
            points.push(Point {
                nsocks,
                size,
                messages,
                elapsed,
                iperf3: None,
            });
        }
        if o.baseline && nsocks > 0 {
            if !o.json {
                eprint!("\riperf3 -P {nsocks} ...                     ");
            }
            let b = run_iperf3(nsocks as u32);
            for p in points.iter_mut().filter(|p| p.nsocks == nsocks) {
                p.iperf3 = Some(b.clone());
            }
        }
    }
    if !o.json {
        eprint!("\r{:60}\r", "");
    }
    Ok((net, points))
}

fn label(nsocks: usize, size: u64) -> String {
    match nsocks {
        0 => size_label(size),
        n => format!("{}, {n} socket(s)", size_label(size)),
    }
}

/// Streams `messages` messages of `size` bytes from a fresh send comm to a fresh recv comm
/// and returns the receiver's time from the start signal to its last completion.
fn stream(
    net: &Net,
    dev: usize,
    size: usize,
    window: usize,
    messages: u64,
) -> StreamResult<Duration> {
    let e = |what: &'static str| move |err: tcpx::Error| format!("{what}: {err}");
    let mut listen = net.listen(dev).map_err(e("listen"))?;
    let mut handle = ConnectHandle::from_bytes(*listen.handle().as_bytes());
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (mut send, mut recv) = (None, None);
    while send.is_none() || recv.is_none() {
        if send.is_none() {
            send = net.connect(dev, &mut handle).map_err(e("connect"))?;
        }
        if recv.is_none() {
            recv = net.accept(&mut listen).map_err(e("accept"))?;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "handshake on loopback took over {HANDSHAKE_TIMEOUT:?}"
            ));
        }
        thread::yield_now();
    }
    let (send, recv) = (send.expect("connected"), recv.expect("accepted"));
    net.close_listen(listen).map_err(e("close listen"))?;

    let span = size * window;
    let mut src = pattern(span);
    let mut dst = vec![0u8; span];
    let start = Arc::new(Barrier::new(2));

    let (tx_net, tx_start) = (net.clone(), Arc::clone(&start));
    let sender = thread::spawn(move || -> StreamResult<()> {
        let net = tx_net;
        // SAFETY: `src` lives on this thread until every request is done and the
        // registration dropped; it is only read by the plugin.
        let mr = unsafe { net.reg_mr(&send, src.as_mut_ptr().cast(), span, MemKind::Host) }
            .map_err(e("regMr (send)"))?;
        let base = src.as_mut_ptr();
        tx_start.wait();
        pump(
            &net,
            "sender",
            messages,
            window,
            |slot| {
                // SAFETY: slot `slot` of `src` is inside `mr` and not reused before the request
                // that read it completed (`pump` keeps at most `window` in flight, in order).
                unsafe { net.isend(&send, base.add(slot * size).cast(), size, 0, &mr) }
                    .map_err(e("isend"))
            },
            |_, _| Ok(()),
        )?;
        drop(mr);
        net.close_send(send).map_err(e("close send"))?;
        drop(src);
        Ok(())
    });

    // The receiver runs here.
    let result = (|| -> StreamResult<Duration> {
        // SAFETY: `dst` outlives the registration and every request on it.
        let mr = unsafe { net.reg_mr(&recv, dst.as_mut_ptr().cast(), span, MemKind::Host) }
            .map_err(e("regMr (recv)"))?;
        let base = dst.as_mut_ptr();
        let consumed = net.has_irecv_consumed();
        start.wait();
        let t0 = Instant::now();
        pump(
            net,
            "receiver",
            messages,
            window,
            |slot| {
                let buf = RecvBuf {
                    // SAFETY: inside `dst`, see above.
                    data: unsafe { base.add(slot * size) }.cast(),
                    size,
                    tag: 0,
                    mr: &mr,
                };
                // SAFETY: the slot is not reused before its previous receive completed.
                unsafe { net.irecv(&recv, &[buf]) }.map_err(e("irecv"))
            },
            |r, n| {
                if n != size {
                    return Err(format!("a receive completed with {n} bytes, not {size}"));
                }
                if consumed {
                    net.irecv_consumed(&recv, r).map_err(e("irecvConsumed"))?;
                }
                Ok(())
            },
        )?;
        let elapsed = t0.elapsed();
        drop(mr);
        Ok(elapsed)
    })();
    let sent = sender
        .join()
        .map_err(|_| "the sender thread panicked".to_string())?;
    let elapsed = result?;
    sent?;
    net.close_recv(recv).map_err(e("close recv"))?;
    if let Some(at) = dst.iter().zip(&pattern(span)).position(|(a, b)| a != b) {
        return Err(format!(
            "received bytes differ from the sent ones at offset {at} of the last window"
        ));
    }
    Ok(elapsed)
}

/// What every message carries (one window's worth).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ 0x5a).collect()
}

/// Keeps up to `window` requests in flight, oldest first, until `messages` completed:
/// `post(slot)` starts one into window slot `slot` (`None`: the plugin is busy), and
/// `retire(request, bytes)` takes the oldest once `test` reports it done. Bounded by
/// `POINT_TIMEOUT`; yields the core when nothing moved.
fn pump(
    net: &Net,
    who: &str,
    messages: u64,
    window: usize,
    mut post: impl FnMut(usize) -> StreamResult<Option<Request>>,
    mut retire: impl FnMut(Request, usize) -> StreamResult<()>,
) -> StreamResult<()> {
    let deadline = Instant::now() + POINT_TIMEOUT;
    let mut q: std::collections::VecDeque<Request> =
        std::collections::VecDeque::with_capacity(window);
    let (mut posted, mut done) = (0u64, 0u64);
    while done < messages {
        if posted < messages && q.len() < window {
            if let Some(r) = post((posted % window as u64) as usize)? {
                q.push_back(r);
                posted += 1;
                continue;
            }
        }
        if let Some(head) = q.front_mut() {
            let tested = net
                .test(head)
                .map_err(|err| format!("test ({who}): {err}"))?;
            if let Some(n) = tested {
                retire(q.pop_front().expect("head exists"), n)?;
                done += 1;
                continue;
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{who} stuck: {done}/{messages} done"));
        }
        // Nothing moved: leave the core to the plugin's helper threads.
        thread::yield_now();
    }
    Ok(())
}

fn to_text(net: &Net, o: &Options, points: &[Point]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tcpx stream: plugin {} {}, device {}, window {}, {} MB per point; \
GB/s = 10^9 bytes/s, receiver's first post to last completion",
        net.name(),
        net.source(),
        o.device,
        o.window,
        o.bytes / 1_000_000
    );
    let _ = writeln!(
        s,
        "{:>7} {:>9} {:>9} {:>9} {:>16} {:>8}",
        "sockets", "size", "messages", "GB/s", "iperf3 -P n GB/s", "ratio"
    );
    for p in points {
        let n = if p.nsocks == 0 {
            "-".into()
        } else {
            p.nsocks.to_string()
        };
        let (base, ratio) = match (&p.iperf3, p.ratio()) {
            (Some(Ok(b)), Some(r)) => (format!("{b:.3}"), format!("{r:.2}x")),
            (Some(Err(_)), _) => ("skipped".into(), "-".into()),
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:>7} {:>9} {:>9} {:>9.3} {:>16} {:>8}",
            n,
            size_label(p.size),
            p.messages,
            p.gbps(),
            base,
            ratio
        );
    }
    let mut skipped: Vec<&String> = points
        .iter()
        .filter_map(|p| match &p.iperf3 {
            Some(Err(e)) => Some(e),
            _ => None,
        })
        .collect();
    skipped.dedup();
    for e in skipped {
        let _ = writeln!(s, "iperf3 skipped: {e}");
    }
    s
}

/// `stream --json`: the settings and every point.
#[derive(Serialize)]
struct StreamJson<'a> {
    plugin: &'a str,
    source: String,
    device: usize,
    window: usize,
    bytes_per_point: u64,
    points: Vec<PointJson<'a>>,
}

/// One point in `stream --json`; `iperf3_gbps` is `null` when iperf3 was skipped, absent
/// without `--baseline`.
#[derive(Serialize)]
struct PointJson<'a> {
    nsocks: usize,
    size: u64,
    messages: u64,
    gbps: Fixed<6>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iperf3_gbps: Option<Option<Fixed<6>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iperf3_skipped: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<Fixed<6>>,
}

fn to_json(net: &Net, o: &Options, points: &[Point]) -> String {
    let points = points.iter().map(|p| PointJson {
        nsocks: p.nsocks,
        size: p.size,
        messages: p.messages,
        gbps: Fixed(p.gbps()),
        iperf3_gbps: p
            .iperf3
            .as_ref()
            .map(|b| b.as_ref().ok().map(|&b| Fixed(b))),
        iperf3_skipped: match &p.iperf3 {
            Some(Err(e)) => Some(e),
            _ => None,
        },
        ratio: p.ratio().map(Fixed),
    });
    json::line(&StreamJson {
        plugin: net.name(),
        source: net.source().to_string(),
        device: o.device,
        window: o.window,
        bytes_per_point: o.bytes,
        points: points.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> StreamResult<Options> {
        let argv: Vec<&str> = ["stream"].iter().chain(args).copied().collect();
        match crate::parse(&argv)? {
            crate::Command::Stream(a) => Ok(Options::from(a)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_and_refuses() {
        let o = parse(&["--size", "4K,4M", "--nsocks=2", "--window", "8"]).unwrap();
        assert_eq!(o.sizes, vec![4096, 4 << 20]);
        assert_eq!(o.nsocks, vec![2]);
        assert_eq!(o.window, 8);
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.sizes, o.nsocks, o.window, o.bytes, o.device),
            (vec![512 << 10, 4 << 20], vec![1, 4], 16, 4 << 30, 0)
        );
        for (bad, why) in [
            (&["--size", "5M"][..], "'5M' for '--size"),
            (&["--window", "17"], "'17' for '--window"),
            (&["--window", "0"], "'0' for '--window"),
            (&["--nsocks", "99"], "'99' for '--nsocks"),
            (&["--nsocks", "0"], "'0' for '--nsocks"),
            (&["--nsocks", "2K"], "'2K' for '--nsocks"),
            (&["--bytes"], "a value is required for '--bytes"),
            (&["--bytes", "0"], "'0' for '--bytes"),
            (&["--bytes", "1Q"], "'1Q' for '--bytes"),
            (&["--what"], "unexpected argument '--what'"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let o = parse(&["--plugin", "/x.so"]).unwrap();
        assert_eq!(o.nsocks, vec![0], "another plugin: one point per size");
    }

    /// A short stream through the embedded tcpxsock moves every byte intact.
    #[test]
    fn streams_through_the_embedded_plugin() {
        let o = parse(&["--size", "64K,1M", "--nsocks", "2", "--bytes", "8M"]).unwrap();
        let (_, points) = run(&o).unwrap();
        assert_eq!(points.len(), 2);
        for p in &points {
            assert_eq!(p.nsocks, 2);
            assert_eq!(
                p.messages,
                ((8 << 20) / p.size).max(16),
                "at least a window"
            );
            assert!(p.gbps() > 0.0);
        }
        let j = to_json(&Net::embedded(), &o, &points);
        assert!(
            j.contains("\"nsocks\":2") && j.contains("\"size\":65536"),
            "{j}"
        );
    }
}
