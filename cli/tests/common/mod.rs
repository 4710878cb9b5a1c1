//! Support for the tests that run the `tcpx` binary: the binary itself (pinned to the
//! embedded tcpxsock on `lo`), two `tcpx bench` processes, output helpers, and the fake
//! ncclNet plugin (`engine/tests/plugins/fake_net.c`) built with the system C compiler into a
//! per-process scratch directory, one shared object per variant name.

#![allow(dead_code)]

/// The engine's test support (GPU-or-SKIP check), shared by path as in `nixl/tests`.
#[path = "../../../engine/tests/common/engine.rs"]
pub mod engine;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The temp directory for this test process.
pub fn tmp_dir() -> PathBuf {
    // Under cargo's per-target scratch space, one directory per test process.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Compiles the engine's `fake_net.c` with `defines` into `<tmp>/<name>.so`.
pub fn build(name: &str, defines: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/plugins/fake_net.c");
    let out = tmp_dir().join(format!("lib{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cmd = Command::new(cc);
    cmd.args([
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-Werror",
        "-Wno-unused-function",
        "-Wno-unused-variable",
        "-o",
    ])
    .arg(&out)
    .arg(&src);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let status = cmd.status().expect("run the C compiler");
    assert!(status.success(), "compiling {name} failed");
    out
}

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
