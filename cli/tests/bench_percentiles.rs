//! `tcpx bench --json` carries each size's latency distribution (p50, p90, p99, p99.9), the
//! CPU time per iteration and every raw sample, in loopback (engine rows and the TCP
//! baseline's) and in the two-host mode (the sender's samples; the receiver gets the
//! sender's percentiles). No timing is asserted: only that the figures are there and agree
//! with the samples they summarise.

mod common;

use common::{json_number as number, tcpx_cli as tcpx, text};

/// The array after `"key":[`.
fn numbers(json: &str, key: &str) -> Option<Vec<f64>> {
    let pat = format!("\"{key}\":[");
    let rest = &json[json.find(&pat)? + pat.len()..];
    let body = &rest[..rest.find(']')?];
    if body.is_empty() {
        return Some(Vec::new());
    }
    body.split(',').map(|v| v.parse().ok()).collect()
}

/// Each row object (`{"bytes":...}`) of the array after `"key":[`.
fn rows<'a>(json: &'a str, key: &str) -> Vec<&'a str> {
    let pat = format!("\"{key}\":[");
    let Some(at) = json.find(&pat) else {
        return Vec::new();
    };
    let mut rest = &json[at + pat.len()..];
    let mut out = Vec::new();
    while rest.starts_with('{') {
        let end = rest.find('}').expect("row closes") + 1;
        out.push(&rest[..end]);
        rest = rest[end..].trim_start_matches(',');
    }
    out
}

/// Nearest rank, as the bench computes it (`permille` of the samples at or below).
fn nearest_rank(sorted: &[f64], permille: usize) -> f64 {
    sorted[(permille * sorted.len()).div_ceil(1000).max(1) - 1]
}

/// A row's percentiles are those of its samples (printed to 3 decimals, percentiles to 6).
fn check_row(row: &str, iters: usize) {
    let mut s = numbers(row, "samples_us").expect("samples_us");
    assert_eq!(s.len(), iters, "one sample per iteration: {row}");
    assert_eq!(number(row, "iters"), Some(iters as f64), "{row}");
    assert!(s.iter().all(|&v| v > 0.0), "{row}");
    s.sort_by(f64::total_cmp);
    for (key, permille) in [
        ("p50_us", 500),
        ("p90_us", 900),
        ("p99_us", 990),
        ("p999_us", 999),
    ] {
        let got = number(row, key).unwrap_or_else(|| panic!("{key} in {row}"));
        let want = nearest_rank(&s, permille);
        assert!(
            (got - want).abs() < 0.002,
            "{key} {got} vs samples' {want}: {row}"
        );
    }
    let p: Vec<f64> = ["p50_us", "p90_us", "p99_us", "p999_us"]
        .iter()
        .map(|k| number(row, k).unwrap())
        .collect();
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "ordered: {p:?}");
    assert!(number(row, "cpu_us").expect("cpu_us") > 0.0, "{row}");
}

#[test]
fn loopback_json_carries_percentiles_and_raw_samples() {
    let iters = 300;
    let out = tcpx()
        .args(["bench", "--loopback", "--size", "4K,64K", "--iters"])
        .arg(iters.to_string())
        .args(["--baseline", "--json"])
        .output()
        .expect("run tcpx");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let engine = rows(&stdout, "rows");
    let tcp = rows(&stdout, "baseline_tcp");
    assert_eq!((engine.len(), tcp.len()), (2, 2), "{stdout}");
    for row in engine.iter().chain(&tcp) {
        check_row(row, iters);
    }
    assert_eq!(number(engine[1], "bytes"), Some(65536.0));
}

#[test]
fn tail_mode_takes_ten_thousand_iterations() {
    let out = tcpx()
        .args(["bench", "--loopback", "--size", "4K", "--tail", "--json"])
        .output()
        .expect("run tcpx");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let row = rows(&stdout, "rows")[0];
    let iters = number(row, "iters").expect("iters") as usize;
    assert!(iters >= 10_000, "{iters} iterations");
    check_row(row, iters);
    // Text mode shows the same columns.
    let out = tcpx()
        .args(["bench", "--loopback", "--size", "4K", "--iters", "20"])
        .output()
        .expect("run tcpx");
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    for col in ["p90 µs", "p99.9 µs", "p99/p50", "cpu µs/it"] {
        assert!(stdout.contains(col), "{col}: {stdout}");
    }
}

#[test]
fn two_hosts_report_the_senders_percentiles_on_both_sides() {
    let (listener, connector) =
        common::bench_two_processes(tcpx, &["--size", "64K", "--iters", "50", "--json"]);
    for (who, out) in [("listener", &listener), ("connector", &connector)] {
        assert!(out.status.success(), "{who}: {}", text(&out.stderr));
    }
    // The connector sends (no --reverse): it timed the iterations and keeps the samples.
    let (tx, rx) = (text(&connector.stdout), text(&listener.stdout));
    let (tx_row, rx_row) = (rows(&tx, "rows")[0], rows(&rx, "rows")[0]);
    check_row(tx_row, 50);
    assert_eq!(numbers(rx_row, "samples_us"), Some(Vec::new()), "{rx_row}");
    for key in ["p50_us", "p90_us", "p99_us", "p999_us"] {
        assert_eq!(number(tx_row, key), number(rx_row, key), "{key}");
    }
    assert!(number(rx_row, "cpu_us").expect("receiver's own CPU") > 0.0);
}
