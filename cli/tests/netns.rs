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

/// Two namespaces joined by `pairs` veth pairs: pair `j` has ends `<tag0><id><j>`
/// (10.<77+j>.k.1) and `<tag1><id><j>` (10.<77+j>.k.2), each pair its own subnet, so traffic
/// to a peer address leaves by that pair. Returns the namespaces and each side's interfaces.
fn setup(k: u32, pairs: usize, tag: [&str; 2]) -> Result<(Netns, [Vec<String>; 2]), String> {
    let id = std::process::id() % 100_000;
    let ns = Netns {
        names: [format!("{}ns{id}", tag[0]), format!("{}ns{id}", tag[1])],
    };
    for n in &ns.names {
        ip(&["netns", "add", n])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    let mut ends: [Vec<String>; 2] = Default::default();
    for j in 0..pairs {
        let (va, vb) = (format!("{}{id}{j}", tag[0]), format!("{}{id}{j}", tag[1]));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (side, (v, n)) in [(&va, &ns.names[0]), (&vb, &ns.names[1])]
            .into_iter()
            .enumerate()
        {
            ip(&["link", "set", v, "netns", n])?;
            let addr = format!("10.{}.{k}.{}/24", 77 + j, side + 1);
            ip(&["-n", n, "addr", "add", &addr, "dev", v])?;
            ip(&["-n", n, "link", "set", v, "up"])?;
            ends[side].push(v.clone());
        }
    }
    Ok((ns, ends))
}

/// `tcpx bench` in namespace `ns` on the interfaces `ifname` selects (`TCPX_SOCK_IFNAME`),
/// with `env` set on top.
fn bench_in(ns: &str, ifname: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tcpx"), "bench"])
        .args(args)
        .env("TCPX_SOCK_IFNAME", ifname)
        .envs(env.iter().copied())
        .env_remove("TCPX_PLUGIN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ip netns exec")
}

/// A finished process's status and output, for assertion messages.
fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    let (ns, [va, vb]) = match setup(k, 1, ["txa", "txb"]) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIP: network namespaces not permitted here ({why})");
            return;
        }
    };
    let port = "17377";
    let (va, vb) = (&va[0], &vb[0]);
    let server = bench_in(
        &ns.names[0],
        &format!("={va}"),
        &[],
        &["--listen", port, "--size", "8M", "--iters", "2", "--verify"],
    );
    let peer = format!("10.77.{k}.1:{port}");
    let client = bench_in(&ns.names[1], &format!("={vb}"), &[], &["--connect", &peer]);
    let s = wait(server, Duration::from_secs(60));
    let c = wait(client, Duration::from_secs(60));
    assert!(s.status.success(), "listener failed: {}", show(&s));
    assert!(c.status.success(), "connector failed: {}", show(&c));
    let out = String::from_utf8_lossy(&s.stdout);
    assert!(out.contains("8 MiB"), "no 8 MiB row: {out}");
    assert!(
        out.contains(&format!("ifname ={va}")),
        "not on the veth: {out}"
    );
}

/// Bytes received so far on interface `ifname` of namespace `ns`.
fn rx_bytes(ns: &str, ifname: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat"])
        .arg(format!("/sys/class/net/{ifname}/statistics/rx_bytes"))
        .output()
        .expect("ip netns exec cat");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("rx_bytes of {ifname} in {ns}: {out:?}"))
}

/// `TCPX_DEVICES=all` with four NICs (veth pairs, one subnet each) on both hosts: the four
/// channels use one NIC each, every NIC carries its share of the bytes, and the data arrives
/// intact.
#[test]
fn channels_spread_over_every_nic_with_devices_all() {
    let k = 1 + (std::process::id() + 7) % 250;
    let (ns, [va, _]) = match setup(k, 4, ["txc", "txd"]) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIP: network namespaces not permitted here ({why})");
            return;
        }
    };
    let before: Vec<u64> = va.iter().map(|v| rx_bytes(&ns.names[0], v)).collect();
    let port = "17378";
    let env = [
        ("TCPX_DEVICES", "all"),
        ("TCPX_CHANNELS", "4"),
        ("TCPX_DEVICE", ""),
    ];
    let args = [
        "--listen", port, "--size", "16M", "--iters", "4", "--verify",
    ];
    let server = bench_in(&ns.names[0], "txc", &env, &args);
    let peer = format!("10.77.{k}.1:{port}");
    let client = bench_in(&ns.names[1], "txd", &env, &["--connect", &peer]);
    let s = wait(server, Duration::from_secs(90));
    let c = wait(client, Duration::from_secs(90));
    assert!(s.status.success(), "listener failed: {}", show(&s));
    assert!(c.status.success(), "connector failed: {}", show(&c));
    let out = String::from_utf8_lossy(&s.stdout);
    let devices: Vec<String> = (0..4).map(|j| format!("{j}({})", va[j])).collect();
    assert!(
        out.contains(&format!("devices {}", devices.join(","))),
        "channel c on device c: {out}"
    );
    // The listener received 4 x 16 MiB, a quarter on each NIC (plus framing).
    for (j, v) in va.iter().enumerate() {
        let got = rx_bytes(&ns.names[0], v) - before[j];
        assert!(got >= 12 << 20, "{v} carried {got} bytes of ~16 MiB: {out}");
    }
}
