//! Builds the fake ncclNet plugin (`plugins/fake_net.c`) with the system C compiler into a
//! per-process scratch directory, one shared object per variant name.

#![allow(dead_code)]

pub mod engine;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The temp directory for this test process.
pub fn tmp_dir() -> PathBuf {
    // Under cargo's per-target scratch space, one directory per test process.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Compiles `fake_net.c` with `defines` into `<tmp>/<name>.so`.
pub fn build(name: &str, defines: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plugins/fake_net.c");
    let out = tmp_dir().join(format!("lib{name}.so"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cmd = Command::new(cc);
    cmd.args([
        "-shared",
        "-fPIC",
        "-O1",
        "-Wall",
        "-Werror",
        "-Wno-unused-function",
        "-Wno-unused-variable",
        "-o",
    ])
    .arg(&out)
    .arg(&src);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let status = cmd.status().expect("run the C compiler");
    assert!(status.success(), "compiling {name} failed");
    out
}

/// Reads one of the fake plugin's call counters (same path = same loaded instance).
pub fn counter(path: &Path, what: &str) -> i32 {
    // SAFETY: the test plugin has no initialisers with side effects.
    let lib = unsafe { libloading::Library::new(path) }.expect("reopen plugin");
    // SAFETY: `fake_counter` is `int fake_counter(const char*)` in fake_net.c.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
            lib.get(b"fake_counter\0").expect("fake_counter");
        let what = std::ffi::CString::new(what).unwrap();
        f(what.as_ptr())
    }
}
