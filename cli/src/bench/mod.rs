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
//!
//! The modules: `options` (the arguments and the options they make), `endpoint` (one side's session and buffers,
//! iteration counts), `buffers` (host or device memory, the pattern), `loopback` and
//! `two_host` (the two ways to run), `baseline` (TCP, copy and iperf3 references), `report`
//! (rows, table, JSON).

mod baseline;
mod buffers;
mod endpoint;
mod loopback;
mod options;
mod report;
mod two_host;

pub(crate) use baseline::run_iperf3;
pub(crate) use report::size_label;

pub use options::Args;
use options::{engine_config, Mode, Options};

type BenchResult<T> = std::result::Result<T, String>;

fn err(what: &str) -> impl Fn(tcpx::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Runs `tcpx bench`; returns the exit code.
pub fn main(args: Args) -> i32 {
    let o = match Options::try_from(args) {
        Ok(o) => o,
        Err(e) => return crate::usage_error("bench", e),
    };
    let cfg = match engine_config(&o) {
        Ok(c) => c,
        Err(e) => return crate::usage_error("bench", e),
    };
    let result = match &o.mode {
        Mode::Loopback => loopback::loopback(&o, cfg),
        Mode::Listen(_) | Mode::Connect(_) => two_host::two_hosts(&o, cfg),
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
