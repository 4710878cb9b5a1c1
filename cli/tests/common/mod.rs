//! Support for the tests that run the `tcpx` binary: the binary itself (pinned to the
//! embedded tcpxsock on `lo`), two `tcpx bench` processes, output helpers, and the fake
//! ncclNet plugin (`engine/tests/plugins/fake_net.c`) built with the system C compiler into a
//! per-process scratch directory, one shared object per variant name.

#![allow(dead_code)]

/// The engine's test support (GPU-or-SKIP check), shared by path as in `nixl/tests`.
#[path = "../../../engine/tests/common/engine.rs"]
pub mod engine;
/// The fake plugin's builder, shared by path too.
#[path = "../../../engine/tests/common/fake.rs"]
pub mod fake;

use std::process::Command;

#[allow(unused_imports)] // not every test binary builds a fake plugin
pub use fake::{build, tmp_dir};

/// `tcpx bench --listen` and `tcpx bench --connect` as two processes on 127.0.0.1, both with
/// `args` (the listener's rule), each command prepared by `tcpx`; returns (listener,
/// connector) output once both exited.
pub fn bench_two_processes(
    tcpx: impl Fn() -> Command,
    args: &[&str],
) -> (std::process::Output, std::process::Output) {
    use std::process::Stdio;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let listener = tcpx()
        .args(["bench", "--listen", &port])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listener");
    let connector = tcpx()
        .args(["bench", "--connect", &format!("127.0.0.1:{port}")])
        .args(args)
        .output()
        .expect("run connector");
    (listener.wait_with_output().expect("listener"), connector)
}

/// The `tcpx` CLI built for these tests, on the embedded tcpxsock pinned to `lo`, with a
/// handshake bound long enough for a loaded machine.
pub fn tcpx_cli() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpx"));
    cmd.env_remove("TCPX_PLUGIN")
        .env("TCPX_SOCK_IFNAME", "lo")
        .env("TCPX_TIMEOUT_MS", "30000");
    cmd
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The number after `"key":` in `json` (enough for the CLI's flat, known output); `None` also
/// for `null`.
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let rest = &json[json.find(&pat)? + pat.len()..];
    let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}
