//! The fake ncclNet plugin (`engine/tests/plugins/fake_net.c`) built with the system C
//! compiler into a per-process scratch directory, one shared object per variant name; used by
//! the engine's tests and, by path, by the CLI's.

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

/// Compiles `engine/tests/plugins/fake_net.c` with `defines` into `<tmp>/<name>.so`.
pub fn build(name: &str, defines: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/plugins/fake_net.c");
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
