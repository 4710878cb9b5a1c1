//! The C++ layer from C++: `include/tcpx.hpp` must compile alone under strict warnings, and
//! `tests/cpp/two_process.cpp` is compiled with the system C++ compiler (C++17, `-Wall -Wextra
//! -Werror`), linked once with `libtcpx_p2p.a` and once with `libtcpx_p2p.so`; both programs
//! (each two processes talking over loopback) must exit 0.
//!
//! As in `c_api.rs`, the libraries are the ones Cargo built for this test run, in
//! `target/<profile>/deps/` next to this binary.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{lib_dir, repo_root, run_bounded};

fn cxx() -> Command {
    Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
}

fn compile(out: &Path, link: &[&str]) {
    let mut cmd = cxx();
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg(repo_root().join("capi/tests/cpp/two_process.cpp"))
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib_dir().display()))
        .args(link);
    assert!(
        run_bounded(cmd, Duration::from_secs(180)),
        "compiling {} failed",
        out.display()
    );
}

fn run_two_process(exe: &Path) {
    let mut cmd = Command::new(exe);
    cmd.env("TCPX_SOCK_IFNAME", "lo")
        .env("TCPX_CHANNELS", "3")
        .env_remove("TCPX_PLUGIN");
    assert!(
        run_bounded(cmd, Duration::from_secs(300)),
        "{} did not exit 0",
        exe.display()
    );
}

/// The header on its own, with warnings the test program does not ask for: a user's own
/// flags must not turn it into errors.
#[test]
fn header_compiles_alone_under_strict_warnings() {
    let mut cmd = cxx();
    cmd.args([
        "-x",
        "c++",
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wpedantic",
        "-Wshadow",
        "-Wconversion",
        "-Wsign-conversion",
        "-Wold-style-cast",
        "-Wnon-virtual-dtor",
        "-fsyntax-only",
    ])
    .arg(repo_root().join("include/tcpx.hpp"));
    assert!(
        run_bounded(cmd, Duration::from_secs(60)),
        "tcpx.hpp does not compile cleanly as C++17"
    );
}

#[test]
fn cpp_program_linked_dynamically() {
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tcpx_cpp_two_process_shared");
    let rpath = format!("-Wl,-rpath,{}", lib_dir().display());
    compile(&exe, &["-ltcpx_p2p", &rpath, "-lpthread"]);
    run_two_process(&exe);
}

#[test]
fn cpp_program_linked_statically() {
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tcpx_cpp_two_process_static");
    compile(&exe, &["-l:libtcpx_p2p.a", "-lpthread", "-ldl", "-lm"]);
    run_two_process(&exe);
}
