//! The C++ layer from C++: `include/tcpx.hpp` must compile alone under strict warnings, and
//! `tests/cpp/two_process.cpp` is compiled with the system C++ compiler (C++17, `-Wall -Wextra
//! -Werror`), linked once with `libtcpx_p2p.a` and once with `libtcpx_p2p.so`; both programs
//! (each two processes talking over loopback) must exit 0.
//!
//! As in `c_api.rs`, the libraries are the ones Cargo built for this test run, in
//! `target/<profile>/deps/` next to this binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/cpp_api-<hash>  ->  target/<profile>/deps
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cxx() -> Command {
    Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()))
}

/// Runs `cmd` to completion, at most `limit`; returns whether it exited 0, printing its
/// output either way so a failure shows the program's own report.
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
    let mut cmd = cxx();
    cmd.args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg(repo_root().join("ffi/capi/tests/cpp/two_process.cpp"))
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
