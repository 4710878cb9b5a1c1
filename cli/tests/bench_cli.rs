//! `tcpx bench` run as a process: loopback JSON output, usage errors, and the two-host mode
//! as two child processes on 127.0.0.1 (the embedded tcpxsock pinned to `lo`).

mod common;

use common::{json_number as number_after, tcpx_cli as tcpx, text};

#[test]
fn loopback_json_has_the_row() {
    let out = tcpx()
        .args(["bench", "--loopback", "--size", "64K", "--iters", "3"])
        .args(["--verify", "--json"])
        .output()
        .expect("run tcpx");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    assert!(stdout.starts_with('{') && stdout.trim_end().ends_with('}'));
    assert!(stdout.contains(r#""mode":"loopback""#), "{stdout}");
    assert!(stdout.contains(r#""plugin":"tcpxsock""#), "{stdout}");
    let rows = &stdout[stdout.find(r#""rows":["#).expect("rows")..];
    assert_eq!(number_after(rows, "bytes"), Some(65536.0), "{stdout}");
    assert_eq!(number_after(rows, "iters"), Some(3.0), "{stdout}");
    let gbps = number_after(rows, "gbps").expect("gbps");
    assert!(gbps > 0.0, "{stdout}");
    assert!(number_after(rows, "p99_us").unwrap() >= number_after(rows, "p50_us").unwrap());
}

#[test]
fn bad_options_exit_2_with_usage() {
    for args in [
        &["bench", "--loopback", "--bogus"][..],
        &["bench", "--loopback", "--size", "12X"],
        &["bench", "--size", "4K"],
        &["bench", "--loopback", "--channels", "99"],
        &["bench", "--loopback", "--mem", "gpu"],
        &["bench", "--loopback", "--mem", "host:cuda:host"],
        &["bench", "--loopback", "--mem", "cuda", "--gpu", "x"],
    ] {
        let out = tcpx().args(args).output().expect("run tcpx");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("Usage: tcpx bench"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `--help` after any command prints that command's usage and options on stdout and
/// succeeds, running nothing; `tcpx help` and `tcpx --help` list every command.
#[test]
fn help_after_a_command_prints_usage() {
    for (args, usage, option) in [
        (
            &["bench", "--help"][..],
            "Usage: tcpx bench",
            "--gpu <N|SRC:DST>",
        ),
        (
            &["bench", "--loopback", "-h"],
            "Usage: tcpx bench",
            "--gpu <N|SRC:DST>",
        ),
        (&["probe", "--help"], "Usage: tcpx probe", "--preflight"),
        (
            &["stream", "--help"],
            "Usage: tcpx stream",
            "--nsocks <N[,N...]>",
        ),
        (
            &["nixl", "install", "--help"],
            "Usage: tcpx nixl install",
            "--python <PY>",
        ),
        (&["help", "bench"], "Usage: tcpx bench", "--gpu <N|SRC:DST>"),
        (&["help"], "Usage: tcpx <COMMAND>", "stream"),
        (&["--help"], "Usage: tcpx <COMMAND>", "nixl"),
    ] {
        let out = tcpx().args(args).output().expect("run tcpx");
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(stdout.contains(usage), "{args:?}: {stdout}");
        assert!(stdout.contains(option), "{args:?}: {stdout}");
        assert!(!stdout.contains("GB/s p50"), "{args:?}: ran a benchmark");
    }
    // An unknown command stays an error, --help or not; no command at all is one too.
    let out = tcpx().args(["bogus", "--help"]).output().expect("run tcpx");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unrecognized subcommand 'bogus'"));
    let out = tcpx().output().expect("run tcpx");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: tcpx <COMMAND>"));
}

#[test]
fn listen_and_connect_in_two_processes() {
    let args = [
        "--size",
        "1M",
        "--iters",
        "2",
        "--verify",
        "--channels",
        "2",
    ];
    let (listener, connector) = common::bench_two_processes(tcpx, &args);
    for (who, out) in [("listener", &listener), ("connector", &connector)] {
        assert!(
            out.status.success(),
            "{who}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("    1 MiB     1048576       2 "),
            "{who}: {stdout}"
        );
    }
    assert!(text(&listener.stdout).contains("role receiver"));
    assert!(text(&connector.stdout).contains("role sender"));
}

/// Device buffers on both ends: with a GPU the data must arrive intact; without one the run
/// stops with a CUDA error (exit 1), before any plugin or session work, and never panics.
#[test]
fn mem_cuda_runs_with_a_gpu_and_fails_cleanly_without() {
    let out = tcpx()
        .args(["bench", "--loopback", "--mem", "cuda", "--size", "1M,3M"])
        .args(["--iters", "3", "--verify", "--json"])
        .output()
        .expect("run tcpx");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    match tcpx_kernels::gpu_available() {
        Ok(()) => {
            assert!(out.status.success(), "{stderr}");
            assert!(stdout.contains(r#""mem":"cuda:cuda""#), "{stdout}");
            assert!(stdout.contains(r#""gpu":0"#), "{stdout}");
            let rows = &stdout[stdout.find(r#""rows":["#).expect("rows")..];
            assert!(number_after(rows, "gbps").expect("gbps") > 0.0, "{stdout}");
        }
        Err(why) => {
            eprintln!("no GPU ({why}): checking the error path");
            assert_eq!(out.status.code(), Some(1), "{stderr}\n{stdout}");
            assert!(stderr.contains("CUDA"), "{stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(out.stdout.is_empty(), "{stdout}");
        }
    }
}

/// `--gpu 0:1` puts the sender's buffer on GPU 0 and the receiver's on GPU 1. With two GPUs
/// the data must arrive intact; with one, opening device 1 fails by name (exit 1, no
/// output, no panic); without any, the CUDA error comes first.
#[test]
fn mem_cuda_across_two_gpus_or_a_clean_error() {
    let out = tcpx()
        .args([
            "bench",
            "--loopback",
            "--mem",
            "cuda",
            "--gpu",
            "0:1",
            "--size",
            "1M,3M",
        ])
        .args(["--iters", "3", "--verify", "--json"])
        .output()
        .expect("run tcpx");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let gpus = match tcpx_kernels::gpu_available() {
        Ok(()) => cudarc::driver::CudaContext::device_count().expect("device count"),
        Err(_) => 0,
    };
    match gpus {
        0 => assert!(stderr.contains("CUDA"), "{stderr}"),
        1 => assert!(stderr.contains("--gpu 1"), "{stderr}"),
        _ => {
            assert!(out.status.success(), "{stderr}");
            assert!(stdout.contains(r#""gpu":"0:1""#), "{stdout}");
            let rows = &stdout[stdout.find(r#""rows":["#).expect("rows")..];
            assert!(number_after(rows, "gbps").expect("gbps") > 0.0, "{stdout}");
            return;
        }
    }
    eprintln!("{gpus} GPU(s): checking the error path");
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "{stdout}");
}

/// One CUDA side (either way round) takes the same path: a GPU, or a clean CUDA error.
#[test]
fn mem_one_cuda_side() {
    for mem in ["host:cuda", "cuda:host"] {
        let out = tcpx()
            .args(["bench", "--loopback", "--mem", mem, "--size", "1M"])
            .args(["--iters", "2", "--verify"])
            .output()
            .expect("run tcpx");
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        if tcpx_kernels::gpu_available().is_ok() {
            assert!(out.status.success(), "{mem}: {stderr}");
            assert!(stdout.contains(&format!("mem {mem}")), "{mem}: {stdout}");
        } else {
            assert_eq!(out.status.code(), Some(1), "{mem}: {stderr}");
            assert!(stderr.contains("CUDA"), "{mem}: {stderr}");
        }
    }
}

#[test]
fn mem_host_is_the_default_and_says_so() {
    let out = tcpx()
        .args(["bench", "--loopback", "--size", "64K", "--iters", "2"])
        .args(["--mem", "host:host", "--verify"])
        .output()
        .expect("run tcpx");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("mode loopback, mem host:host,"), "{stdout}");
    assert!(!stdout.contains("gpu"), "{stdout}");
}

/// `tcpx stream` through our plugin loaded as a shared object (as NCCL would load it), and
/// through the embedded one; the receiver checks every byte (a mismatch is exit 1).
#[test]
fn stream_through_the_loaded_and_the_embedded_plugin() {
    // Cargo leaves the dependency's cdylib next to this test binary (target/<profile>/deps).
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libtcpx_sock.so");
    assert!(so.exists(), "{} was not built", so.display());
    let common = ["stream", "--size", "64K,1M", "--bytes", "8M", "--json"];
    let loaded = tcpx()
        .args(common)
        .arg("--plugin")
        .arg(&so)
        .output()
        .expect("run tcpx");
    let embedded = tcpx()
        .args(common)
        .args(["--nsocks", "1,2"])
        .output()
        .expect("run tcpx");
    for (who, out, points) in [("loaded", &loaded, 2), ("embedded", &embedded, 4)] {
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{who}: {stderr}\n{stdout}");
        assert!(stdout.contains(r#""plugin":"tcpxsock""#), "{who}: {stdout}");
        assert_eq!(
            stdout.matches(r#""gbps":"#).count(),
            points,
            "{who}: {stdout}"
        );
        assert!(
            number_after(&stdout, "gbps").unwrap() > 0.0,
            "{who}: {stdout}"
        );
    }
    assert!(text(&embedded.stdout).contains(r#""nsocks":2"#));
    // A bad value is a usage error, not a run.
    let out = tcpx().args(["stream", "--window", "17"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid value '17' for '--window <N>': expected 1..=16"));
}
