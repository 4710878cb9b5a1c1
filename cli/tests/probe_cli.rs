//! `tcpx probe` run as a process against fake plugins: text, JSON, forced ABI, errors and
//! the plugin's own log line arriving on stderr through the C logger shim; `--preflight` on
//! this machine (no TCPX) and on a fake A3 tree (sysfs, RxDM sockets, env) in a temp dir.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::text;

fn probe(args: &[&str], plugin: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpx"));
    cmd.arg("probe")
        .args(args)
        .env_remove("TCPX_PLUGIN")
        .env("TCPX_LOG", "info");
    if let Some(p) = plugin {
        cmd.arg("--plugin").arg(p);
    }
    cmd.output().expect("run tcpx")
}

#[test]
fn text_output_describes_the_newest_table_and_each_device() {
    let path = common::build("cli_v7v10", &["EXPORT_V7", "EXPORT_V10"]);
    let out = probe(&[], Some(&path));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with(&format!("plugin:         {}\n", path.display())),
        "{stdout}"
    );
    for line in [
        "abi:            v10 (ncclNetPlugin_v10)\n",
        "name:           FakeV10\n",
        "devices:        2\n",
        "\ndev 1\n\tname:           fake1\n",
        "\tpci_path:       /sys/devices/pci0000:00/0000:00:05.0\n",
        "\tguid:           0x00000000010a0001\n",
        "\tspeed:          400000 Mbps\n",
        "\tptr_support:    HOST|CUDA|DMABUF\n",
        "\tmax_comms:      65536\n",
        "\tmax_recvs:      8\n",
        "\tdevice_type:    HOST (version 0x0)\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    // The plugin's printf-style log line, formatted by the C shim, routed to our stderr.
    assert!(
        stderr.contains("[nccl:NET]")
            && stderr.contains("fake init: 2 devices, tag=hello, ratio=0.50"),
        "{stderr}"
    );
}

#[test]
fn forced_abi_and_json_output() {
    let path = common::build(
        "cli_json",
        &[
            "EXPORT_V7",
            "EXPORT_V10",
            "OFFLOAD_TYPE=1",
            "OFFLOAD_VERSION=7",
        ],
    );
    let out = probe(&["--json", "--abi", "7"], Some(&path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    // The NUMA node comes from this machine's sysfs, where that path may exist.
    let numa = std::fs::read_to_string("/sys/devices/pci0000:00/0000:00:04.0/numa_node")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or("null".to_string(), |n| n.to_string());
    let expected = format!(
        concat!(
            r#"{{"plugin":"{}","abi":7,"symbol":"ncclNetPlugin_v7","name":"FakeV7","devices":["#,
            r#"{{"index":0,"name":"fake0","pci_path":"/sys/devices/pci0000:00/0000:00:04.0","#,
            r#""numa_node":{},"rank":null,"distance":null,"#,
            r#""guid":4199415808,"speed_mbps":100000,"port":1,"latency_us":0.5,"#,
            r#""ptr_support":["HOST","CUDA"],"max_comms":1024,"max_recvs":1,"#,
            r#""reg_is_global":false,"force_flush":false,"device_type":"UNPACK","#,
            r#""device_version":7,"vdevs":[],"max_p2p_bytes":null,"max_coll_bytes":null}},"#,
            r#"{{"index":1,"name":"fake1","pci_path":null,"#,
            r#""numa_node":null,"rank":null,"distance":null,"#,
            r#""guid":4199415809,"speed_mbps":100000,"port":2,"latency_us":0.5,"#,
            r#""ptr_support":["HOST","CUDA"],"max_comms":1024,"max_recvs":1,"#,
            r#""reg_is_global":false,"force_flush":false,"device_type":"UNPACK","#,
            r#""device_version":7,"vdevs":[],"max_p2p_bytes":null,"max_coll_bytes":null}}]}}"#,
            "\n"
        ),
        path.display(),
        numa
    );
    assert_eq!(json, expected);
}

#[test]
fn errors_exit_non_zero_with_a_clear_message() {
    let none = common::build("cli_none", &[]);
    let out = probe(&[], Some(&none));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(
        "exports none of the symbols tried (ncclNetPlugin_v10, ncclNetPlugin_v9, ncclNetPlugin_v8, ncclNetPlugin_v7)"
    ));

    let fail = common::build("cli_initfail", &["EXPORT_V7", "FAIL_INIT"]);
    let out = probe(&[], Some(&fail));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "tcpx probe: error: ncclNet plugin FakeV7: init failed with ncclSystemError (2)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("fake init refuses (errno 19)"), "{stderr}");

    let out = probe(&["--abi", "12"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value '12' for '--abi <7|8|9|10>': use 7, 8, 9 or 10")
    );
}

/// `tcpx probe` on our own plugin built as a shared object, as NCCL would load it.
#[test]
fn probes_the_tcpxsock_shared_object() {
    // Cargo leaves the dependency's cdylib next to this test binary (target/<profile>/deps).
    let deps = std::env::current_exe().unwrap();
    let so = deps.parent().unwrap().join("libtcpx_sock.so");
    assert!(so.exists(), "{} was not built", so.display());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpx"));
    cmd.args(["probe", "--plugin"]).arg(&so).arg("--json");
    cmd.env("TCPX_SOCK_IFNAME", "lo");
    let out = cmd.output().unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains(r#""abi":7"#), "{stdout}");
    assert!(stdout.contains(r#""name":"tcpxsock""#), "{stdout}");
    assert!(stdout.contains(r#""name":"lo""#), "{stdout}");
    assert!(stdout.contains(r#""max_recvs":1"#), "{stdout}");
    assert!(stdout.contains(r#""HOST""#), "{stdout}");
}

// ---- `tcpx probe --preflight` -----------------------------------------------------------

/// Every variable the preflight reads, removed so the host's environment cannot leak in.
const PREFLIGHT_ENV: [&str; 11] = [
    "TCPX_PLUGIN",
    "TCPX_GPU",
    "TCPX_TIMEOUT_MS",
    "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME",
    "NCCL_GPUDIRECTTCPX_CTRL_DEV",
    "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX",
    "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
    "NCCL_GPUDIRECTTCPX_REPORT_LIFECYCLE",
    "NCCL_DYNAMIC_CHUNK_SIZE",
    "NCCL_NSOCKS_PERTHREAD",
    "NCCL_SOCKET_NTHREADS",
];

fn preflight(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcpx"));
    cmd.args(["probe", "--preflight"]).args(args);
    for k in PREFLIGHT_ENV {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run tcpx");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The line of check `name` (the status column, then the name column).
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| {
            l.split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
                .starts_with(name)
        })
        .unwrap_or_else(|| panic!("no line for {name:?} in\n{stdout}"))
}

fn status<'a>(stdout: &'a str, name: &str) -> &'a str {
    line(stdout, name).split_whitespace().next().unwrap()
}

/// This machine has no TCPX: with nothing set, every requirement is `missing`, each with
/// what to do, and the exit status says so.
#[test]
fn preflight_without_tcpx_reports_missing_and_fails() {
    let (code, stdout, stderr) = preflight(&[], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for name in [
        "plugin",
        "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME",
        "NCCL_GPUDIRECTTCPX_CTRL_DEV",
        "NCCL_DYNAMIC_CHUNK_SIZE",
        "NCCL_NSOCKS_PERTHREAD",
    ] {
        assert_eq!(status(&stdout, name), "missing", "{name}:\n{stdout}");
    }
    assert!(
        line(&stdout, "NCCL_DYNAMIC_CHUNK_SIZE")
            .ends_with("-> export NCCL_DYNAMIC_CHUNK_SIZE=524288"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "plugin").contains("export TCPX_PLUGIN="),
        "{stdout}"
    );
    // The default handshake bound allows TCPX's 5 s accept.
    assert_eq!(status(&stdout, "engine"), "ok", "{stdout}");
    assert!(
        stdout.lines().last().unwrap().starts_with("preflight: "),
        "{stdout}"
    );
}

/// A fake A3 tree: sysfs NICs (two up behind PCI devices, one down), RxDM's sockets (one of
/// them stale), the tuning env, and a fake plugin that logs no version line.
#[test]
fn preflight_reads_a_fake_a3_tree() {
    use std::os::unix::net::UnixListener;
    let root = common::tmp_dir().join("preflight-a3");
    let _ = std::fs::remove_dir_all(&root);
    let sys = root.join("sys");
    let rxdm = root.join("rxdm");
    std::fs::create_dir_all(&rxdm).unwrap();
    for (nic, state, pci) in [
        ("eth0", "up", Some("0000:00:04.0")),
        ("eth1", "up", Some("0000:06:00.0")),
        ("eth2", "down", Some("0000:0c:00.0")),
        ("veth9", "up", None),
    ] {
        let dir = sys.join("class/net").join(nic);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("operstate"), format!("{state}\n")).unwrap();
        if let Some(pci) = pci {
            let dev = sys.join("devices/pci0000:00").join(pci);
            std::fs::create_dir_all(&dev).unwrap();
            std::os::unix::fs::symlink(&dev, dir.join("device")).unwrap();
        }
    }
    // Listeners that stay open (live RxDM endpoints) and one closed (a stale socket file).
    let _live: Vec<UnixListener> = ["rx_rule_manager", "get_gpu_fd_0000:04:00.0"]
        .iter()
        .map(|s| UnixListener::bind(rxdm.join(s)).expect("bind unix socket"))
        .collect();
    drop(UnixListener::bind(rxdm.join("rx_rule_uninstall")).unwrap());

    let plugin = common::build("preflight_v7", &["EXPORT_V7"]);
    let (code, stdout, stderr) = preflight(
        &[
            "--sysfs-root",
            sys.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
        ],
        &[
            ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "eth1,eth2,=eth9,veth"),
            ("NCCL_GPUDIRECTTCPX_CTRL_DEV", "eth0"),
            (
                "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX",
                rxdm.to_str().unwrap(),
            ),
            ("NCCL_DYNAMIC_CHUNK_SIZE", "524288"),
            ("NCCL_NSOCKS_PERTHREAD", "4"),
            ("NCCL_SOCKET_NTHREADS", "2"),
        ],
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    let ok = |name: &str| assert_eq!(status(&stdout, name), "ok", "{name}:\n{stdout}");
    let missing = |name: &str| assert_eq!(status(&stdout, name), "missing", "{name}:\n{stdout}");
    ok("ifname eth1");
    assert!(
        line(&stdout, "ifname eth1").contains("pci0000:00/0000:06:00.0"),
        "{stdout}"
    );
    missing("ifname eth2"); // down
    missing("ifname =eth9"); // no such interface
    missing("ifname veth9"); // no PCI device: the plugin's pciPath would be NULL
    ok("NCCL_GPUDIRECTTCPX_CTRL_DEV");
    ok("rxdm rx_rule_manager");
    missing("rxdm rx_rule_uninstall");
    assert!(
        line(&stdout, "rxdm rx_rule_uninstall").contains("stale"),
        "{stdout}"
    );
    ok("NCCL_DYNAMIC_CHUNK_SIZE");
    ok("NCCL_NSOCKS_PERTHREAD");
    assert_eq!(status(&stdout, "NCCL_SOCKET_NTHREADS"), "warn", "{stdout}");
    // The fake plugin loads and initialises in the child but is not Google's.
    assert_eq!(status(&stdout, "plugin"), "warn", "{stdout}");
    assert!(
        line(&stdout, "plugin").contains("FakeV7, 2 devices"),
        "{stdout}"
    );
    if std::env::var("REQUIRE_GPU").as_deref() != Ok("1") && !stdout.contains("ok       gpu") {
        // Without a GPU the session's RX pool is unknown: RxDM's offers are listed.
        assert_eq!(status(&stdout, "rxdm get_gpu_fd_*"), "warn", "{stdout}");
        assert!(
            line(&stdout, "rxdm get_gpu_fd_*").contains("0000:04:00.0"),
            "{stdout}"
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn preflight_json_and_a_plugin_whose_init_fails() {
    let fail = common::build("preflight_initfail", &["EXPORT_V7", "FAIL_INIT"]);
    let (code, stdout, stderr) = preflight(&["--json", "--plugin", fail.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(r#"{"checks":[{"status":"missing","check":"plugin","detail":""#),
        "{stdout}"
    );
    assert!(
        stdout.contains("init failed with ncclSystemError (2)"),
        "the child's error is reported: {stdout}"
    );
    assert!(
        stdout.trim_end().ends_with('}') && stdout.contains(r#""missing":"#),
        "{stdout}"
    );
    // The options are checked before anything runs.
    let (code, _, stderr) = preflight(&["--bogus"], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("unexpected argument '--bogus'"), "{stderr}");
}

/// `--gpu N` ranks every device for memory on that GPU: with no GPU path known (no driver
/// here) devices rank by index, and each line shows its rank; a bad number is refused.
#[test]
fn gpu_ranking_is_shown_per_device() {
    let path = common::build("cli_rank", &["EXPORT_V7"]);
    let out = probe(&["--gpu", "0"], Some(&path));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("ranked for:     GPU 0"), "{t}");
    assert!(t.contains("numa_node:"), "{t}");
    let ranks: Vec<&str> = t.lines().filter(|l| l.contains("rank:")).collect();
    assert_eq!(ranks.len(), 2, "{t}");
    assert!(ranks[0].contains("rank:           0"), "{t}");
    assert!(ranks[1].contains("rank:           1"), "{t}");
    let out = probe(&["--gpu", "x"], Some(&path));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--gpu"), "{}", text(&out.stderr));
}
