//! The C API from C: `tests/c/loopback.c` is compiled with the system `cc` against
//! `include/tcpx.h`, linked once with `libtcpx_p2p.a` and once with `libtcpx_p2p.so`, and
//! both programs must exit 0 over loopback.
//!
//! Cargo builds the library (all its crate types, `.a` and `.so` included) before this test,
//! into `target/<profile>/deps/`, this binary's own folder; a plain `cargo build` also copies
//! them up to `target/<profile>/`. The test takes the `deps/` copies, which are never stale.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/c_api-<hash>  ->  target/<profile>/deps
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `cmd` to completion, at most `limit`; returns whether it exited 0, printing its
/// output either way so a failure shows the C program's own report.
fn run_bounded(mut cmd: Command, limit: Duration) -> bool {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("collect output");
    println!("$ {what}");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    match status {
        Some(s) => {
            println!("-> {s}");
            s.success()
        }
        None => {
            println!("-> killed after {limit:?}");
            false
        }
    }
}

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
    .arg(repo_root().join("ffi/capi/tests/c/loopback.c"))
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
