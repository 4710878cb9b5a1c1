//! A plugin that calls `exit()` inside one of tcpx's calls into it (GPUDirect-TCPX does
//! when `cuInit` fails in `init`) is named on stderr on the way out; an exit elsewhere is
//! not blamed on it. The test runs itself again as the process that exits.

mod common;

use std::process::Command;

use tcpx::net::Net;

/// Set in the child: the plugin to load, and what the child does.
const PLUGIN: &str = "TCPX_TEST_EXIT_PLUGIN";
const MODE: &str = "TCPX_TEST_EXIT_MODE";
const TEST: &str = "a_plugin_exit_inside_a_call_is_named";

/// Runs this test again in a child process with `plugin` and `mode`.
fn child(plugin: &std::path::Path, mode: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(PLUGIN, plugin)
        .env(MODE, mode)
        .output()
        .expect("run the test binary again");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_plugin_exit_inside_a_call_is_named() {
    if let Some(path) = std::env::var_os(PLUGIN) {
        let net = Net::load(&path).unwrap();
        let r = net.init();
        if std::env::var(MODE).as_deref() == Ok("after-init") {
            r.unwrap();
            std::process::exit(3);
        }
        panic!("init returned ({r:?}) although the plugin calls exit(1)");
    }
    let exits = common::build("exitinit", &["EXPORT_V7", "EXIT_IN_INIT"]);
    let (code, stderr) = child(&exits, "in-init");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("tcpx: ncclNet plugin FakeV7 ended the process during init\n"),
        "{stderr}"
    );

    let fine = common::build("exitafter", &["EXPORT_V7"]);
    let (code, stderr) = child(&fine, "after-init");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(!stderr.contains("ended the process"), "{stderr}");
}
