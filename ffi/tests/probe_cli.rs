//! `tcpx probe` run as a process against fake plugins: text, JSON, forced ABI, errors and
//! the plugin's own log line arriving on stderr through the C logger shim.

mod common;

use std::path::Path;
use std::process::{Command, Output};

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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
    let expected = format!(
        concat!(
            r#"{{"plugin":"{}","abi":7,"symbol":"ncclNetPlugin_v7","name":"FakeV7","devices":["#,
            r#"{{"index":0,"name":"fake0","pci_path":"/sys/devices/pci0000:00/0000:00:04.0","#,
            r#""guid":4199415808,"speed_mbps":100000,"port":1,"latency_us":0.5,"#,
            r#""ptr_support":["HOST","CUDA"],"max_comms":1024,"max_recvs":1,"#,
            r#""reg_is_global":false,"force_flush":false,"device_type":"UNPACK","#,
            r#""device_version":7,"vdevs":[],"max_p2p_bytes":null,"max_coll_bytes":null}},"#,
            r#"{{"index":1,"name":"fake1","pci_path":null,"#,
            r#""guid":4199415809,"speed_mbps":100000,"port":2,"latency_us":0.5,"#,
            r#""ptr_support":["HOST","CUDA"],"max_comms":1024,"max_recvs":1,"#,
            r#""reg_is_global":false,"force_flush":false,"device_type":"UNPACK","#,
            r#""device_version":7,"vdevs":[],"max_p2p_bytes":null,"max_coll_bytes":null}}]}}"#,
            "\n"
        ),
        path.display()
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
    assert!(text(&out.stderr).contains("--abi \"12\": use 7, 8, 9 or 10"));
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
