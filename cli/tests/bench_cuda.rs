//! `tcpx bench` between two processes with device memory: each process has its own CUDA
//! context and session over the embedded tcpxsock (TCPX receive path, shuffled bounce pages).
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

mod common;

use common::engine::gpu;

/// Two processes (`tcpx bench --listen` receives, `--connect` sends), each with its own CUDA
/// context and session: VRAM→VRAM, DRAM→VRAM and VRAM→DRAM with `--verify`, so every
/// received byte is checked against the sender's pattern after the timed iterations.
#[test]
fn two_processes_each_direction_of_device_memory() {
    use std::process::Command;
    if gpu().is_none() {
        return;
    }
    for mem in ["cuda:cuda", "host:cuda", "cuda:host"] {
        let args = [
            "--mem", mem, "--size", "4097,3M", "--iters", "3", "--verify",
        ];
        let tcpx = || {
            let mut c = Command::new(env!("CARGO_BIN_EXE_tcpx"));
            c.env("TCPX_SOCK_IFNAME", "lo")
                .env("TCPX_SOCK_SHUFFLE", "1");
            c
        };
        let (listener, connector) = common::bench_two_processes(tcpx, &args);
        for (who, out) in [("listener", &listener), ("connector", &connector)] {
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert!(out.status.success(), "{mem} {who}: {stderr}\n{stdout}");
            assert!(stdout.contains("    3 MiB "), "{mem} {who}: {stdout}");
        }
    }
}
