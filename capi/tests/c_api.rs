//! The C API from C: `tests/c/loopback.c` is compiled with the system `cc` against
//! `include/tcpx.h`, linked once with `libtcpx_p2p.a` and once with `libtcpx_p2p.so`, and
//! both programs must exit 0 over loopback.
//!
//! Cargo builds the library (all its crate types, `.a` and `.so` included) before this test,
//! into `target/<profile>/deps/`, this binary's own folder; a plain `cargo build` also copies
//! them up to `target/<profile>/`. The test takes the `deps/` copies, which are never stale.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

use common::{lib_dir, repo_root, run_bounded};

fn compile(out: &Path, link: &[&str]) {
    let dir = lib_dir();
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-std=c11",
        "-D_POSIX_C_SOURCE=200809L",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-g",
    ])
    .arg("-I")
    .arg(repo_root().join("include"))
    .arg(repo_root().join("capi/tests/c/loopback.c"))
    .arg("-o")
    .arg(out)
    .arg(format!("-L{}", dir.display()))
    .args(link);
    assert!(
        run_bounded(cc, Duration::from_secs(120)),
        "compiling {} failed",
        out.display()
    );
}

fn run_loopback(exe: &Path) {
    let mut cmd = Command::new(exe);
    cmd.env("TCPX_SOCK_IFNAME", "lo")
        .env("TCPX_CHANNELS", "5")
        .env_remove("TCPX_PLUGIN");
    assert!(
        run_bounded(cmd, Duration::from_secs(300)),
        "{} did not exit 0",
        exe.display()
    );
}

#[test]
fn libraries_are_built_next_to_the_tests() {
    let dir = lib_dir();
    for f in ["libtcpx_p2p.a", "libtcpx_p2p.so"] {
        assert!(
            dir.join(f).is_file(),
            "{} missing: build with `cargo test -p tcpx-p2p`, which builds the library first",
            dir.join(f).display()
        );
    }
}

#[test]
fn c_program_linked_statically() {
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tcpx_loopback_static");
    compile(&exe, &["-l:libtcpx_p2p.a", "-lpthread", "-ldl", "-lm"]);
    run_loopback(&exe);
}

#[test]
fn c_program_linked_dynamically() {
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tcpx_loopback_shared");
    let rpath = format!("-Wl,-rpath,{}", lib_dir().display());
    compile(&exe, &["-ltcpx_p2p", &rpath, "-lpthread"]);
    run_loopback(&exe);
}

#[test]
fn header_parses_as_cplusplus() {
    let mut cxx = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cxx.args([
        "-x",
        "c++",
        "-std=c++11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fsyntax-only",
    ])
    .arg(repo_root().join("include/tcpx.h"));
    assert!(
        run_bounded(cxx, Duration::from_secs(60)),
        "tcpx.h is not valid C++"
    );
}
