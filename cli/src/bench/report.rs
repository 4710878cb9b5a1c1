//! What `tcpx bench` measured and how it prints: one row per size (percentiles, GB/s, CPU
//! time), the baselines next to it, as a table or as one JSON object.

use std::fmt::Write as _;
use std::time::Duration;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use tcpx::engine::{Config, Session};
use tcpx::net::Net;

use super::BenchResult;
use crate::json::{self, Fixed};

/// One size's measurement.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) bytes: u64,
    pub(super) iters: usize,
    pub(super) p50: Duration,
    pub(super) p90: Duration,
    pub(super) p99: Duration,
    pub(super) p999: Duration,
    pub(super) total: Duration,
    /// Every measured iteration, in the order they ran (empty where the peer measured).
    pub(super) samples: Vec<Duration>,
    /// This process's CPU time (all threads) per measured iteration, when measured.
    pub(super) cpu: Option<Duration>,
}

impl Row {
    /// Summarises `times` (left in measurement order) and keeps them as the raw samples.
    pub(super) fn from_times(bytes: u64, times: &[Duration]) -> Row {
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
    pub(super) fn with_cpu(mut self, cpu: Duration) -> Row {
        self.cpu = Some(cpu / self.iters.max(1) as u32);
        self
    }

    pub(super) fn gbps(&self) -> f64 {
        self.bytes as f64 / secs(self.p50) / 1e9
    }

    pub(super) fn gbps_aggregate(&self) -> f64 {
        (self.bytes as f64 * self.iters as f64) / secs(self.total) / 1e9
    }
}

/// Nearest-rank percentile of sorted samples, `permille` of them at or below it (990 =
/// p99, 999 = p99.9): integer arithmetic, so p99.9 of 1,000 samples is the largest but one.
pub(super) fn percentile(sorted: &[Duration], permille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (permille * sorted.len()).div_ceil(1000).max(1);
    sorted[rank - 1]
}
/// Seconds, never zero (a timer tick below 1 ns would make GB/s infinite).
pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

pub(super) fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Everything a run prints.
pub(super) struct Report {
    pub(super) header: Vec<(&'static str, String)>,
    pub(super) timing: &'static str,
    pub(super) plugin_name: String,
    pub(super) rows: Vec<Row>,
    pub(super) tcp: Vec<Row>,
    pub(super) iperf3: Vec<(u32, BenchResult<f64>)>,
    /// `cuMemcpy*` of the same sizes, when a side is CUDA: (which copy, rows).
    pub(super) copy: Option<(&'static str, Vec<Row>)>,
}

pub(crate) fn size_label(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (u, name) in UNITS {
        if n >= u && n % u == 0 {
            return format!("{} {name}", n / u);
        }
    }
    format!("{n} B")
}

pub(super) fn table(out: &mut String, rows: &[Row]) {
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

pub(super) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl Report {
    pub(super) fn iperf(&self, streams: u32) -> Option<f64> {
        self.iperf3
            .iter()
            .find(|(s, _)| *s == streams)
            .and_then(|(_, r)| r.as_ref().ok().copied())
    }

    pub(super) fn to_text(&self) -> String {
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

    pub(super) fn to_json(&self) -> String {
        json::line(self)
    }
}

/// `bench --json`: the header (numbers where they are numbers), the timing, the rows and,
/// with `--baseline`, the baselines' rows.
impl Serialize for Report {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rows = |rows: &[Row]| rows.iter().map(RowJson::from).collect::<Vec<_>>();
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.header {
            match v.parse::<u64>() {
                Ok(n) => m.serialize_entry(k, &n)?,
                Err(_) => m.serialize_entry(k, v)?,
            }
        }
        m.serialize_entry("timing", self.timing)?;
        m.serialize_entry("rows", &rows(&self.rows))?;
        if !self.tcp.is_empty() {
            m.serialize_entry("baseline_tcp", &rows(&self.tcp))?;
            let iperf3: Vec<IperfJson> = self
                .iperf3
                .iter()
                .map(|(streams, r)| IperfJson {
                    streams: *streams,
                    gbps: r.as_ref().ok().map(|&g| Fixed(g)),
                    skipped: r.as_ref().err().map(String::as_str),
                })
                .collect();
            m.serialize_entry("baseline_iperf3", &iperf3)?;
        }
        if let Some((op, copy)) = &self.copy {
            m.serialize_entry("baseline_copy_op", op)?;
            m.serialize_entry("baseline_copy", &rows(copy))?;
        }
        m.end()
    }
}

/// One row in `bench --json`: microseconds, GB/s; every sample in measurement order.
#[derive(Serialize)]
struct RowJson {
    bytes: u64,
    iters: usize,
    gbps: Fixed<6>,
    gbps_aggregate: Fixed<6>,
    p50_us: Fixed<6>,
    p90_us: Fixed<6>,
    p99_us: Fixed<6>,
    p999_us: Fixed<6>,
    cpu_us: Option<Fixed<6>>,
    samples_us: Vec<Fixed<3>>,
}

impl From<&Row> for RowJson {
    fn from(r: &Row) -> RowJson {
        RowJson {
            bytes: r.bytes,
            iters: r.iters,
            gbps: Fixed(r.gbps()),
            gbps_aggregate: Fixed(r.gbps_aggregate()),
            p50_us: Fixed(us(r.p50)),
            p90_us: Fixed(us(r.p90)),
            p99_us: Fixed(us(r.p99)),
            p999_us: Fixed(us(r.p999)),
            cpu_us: r.cpu.map(|c| Fixed(us(c))),
            samples_us: r.samples.iter().map(|&t| Fixed(us(t))).collect(),
        }
    }
}

/// One `iperf3 -P streams` baseline in `bench --json`: `gbps` is `null` and `skipped` says why
/// when it did not run.
#[derive(Serialize)]
struct IperfJson<'a> {
    streams: u32,
    gbps: Option<Fixed<6>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped: Option<&'a str>,
}

/// The plugin device each channel of `s` uses, as `device(name)` by channel.
pub(super) fn channel_devices(net: &Net, s: &Session) -> String {
    s.channel_devices()
        .iter()
        .map(|&d| {
            let name = net.properties(usize::from(d)).map(|p| p.name);
            format!("{d}({})", name.as_deref().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn config_header(
    net: &Net,
    cfg: &Config,
    segments: usize,
) -> Vec<(&'static str, String)> {
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
#[cfg(test)]
mod tests {
    use super::*;

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
}
