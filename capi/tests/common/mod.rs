//! Shared by the C and C++ API tests: where Cargo put the libraries and how to run a
//! compiled test program, bounded, with its output shown.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/deps`, this test binary's folder, where Cargo put `libtcpx_p2p.{a,so}`
/// for this run (never stale, unlike the copies one level up).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd` to completion, at most `limit`; returns whether it exited 0, printing its
/// output either way so a failure shows the program's own report.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> bool {
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
