//! One verified transfer between two network namespaces joined by a veth pair, the way two
//! hosts would run `tcpx bench --listen` / `--connect`. The namespaces are created here (as
//! root) and removed afterwards; where that is not permitted the test prints SKIP.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Netns {
    names: [String; 2],
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces `a`, `b` with `veth` ends `va` (10.77.k.1) and `vb` (10.77.k.2).
fn setup(k: u32) -> Result<(Netns, [String; 2]), String> {
    let id = std::process::id();
    let ns = Netns {
        names: [format!("tcpxa{id}"), format!("tcpxb{id}")],
    };
    let (va, vb) = (
        format!("txa{}", id % 100_000),
        format!("txb{}", id % 100_000),
    );
    for n in &ns.names {
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
    for (v, n, addr) in [(&va, &ns.names[0], 1), (&vb, &ns.names[1], 2)] {
        ip(&["link", "set", v, "netns", n])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("10.77.{k}.{addr}/24"),
            "dev",
            v,
        ])?;
        ip(&["-n", n, "link", "set", v, "up"])?;
    }
    Ok((ns, [va, vb]))
}

fn bench_in(ns: &str, ifname: &str, args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tcpx"), "bench"])
        .args(args)
        .env("TCPX_SOCK_IFNAME", format!("={ifname}"))
        .env_remove("TCPX_PLUGIN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec")
}

fn wait(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn transfer_between_two_namespaces() {
    let k = 1 + std::process::id() % 250;
    let (ns, [va, vb]) = match setup(k) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIP: network namespaces not permitted here ({why})");
            return;
        }
    };
    let port = "17377";
    let server = bench_in(
        &ns.names[0],
        &va,
        &["--listen", port, "--size", "8M", "--iters", "2", "--verify"],
    );
    let peer = format!("10.77.{k}.1:{port}");
    let client = bench_in(&ns.names[1], &vb, &["--connect", &peer]);
    let s = wait(server, Duration::from_secs(60));
    let c = wait(client, Duration::from_secs(60));
    let show = |o: &Output| {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(s.status.success(), "listener failed: {}", show(&s));
    assert!(c.status.success(), "connector failed: {}", show(&c));
    let out = String::from_utf8_lossy(&s.stdout);
    assert!(out.contains("8 MiB"), "no 8 MiB row: {out}");
    assert!(
        out.contains(&format!("ifname ={va}")),
        "not on the veth: {out}"
    );
}
