//! Compiles `src/unpack.cu` (the unpack kernels) and `src/stage.cu` (tcpxsock's staging kernel)
//! with nvcc, each into one fatbin (SASS sm_80 + sm_90, PTX compute_90) that the crate
//! embeds. nvcc comes from `$NVCC`, else `<workspace>/.tools/nvcc/nvidia/cu13/bin/nvcc`
//! (scripts/install-nvcc.sh), else `nvcc` on PATH. Without one the blob is empty, the crate is
//! built with `cfg(tcpx_no_kernels)`, and loading the kernels fails at run time with
//! `KernelsNotBuilt`; `KERNELS_REQUIRE_NVCC=1` makes a missing nvcc a build error instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each source and the fatbin it becomes.
const SOURCES: [(&str, &str); 2] = [
    ("src/unpack.cu", "unpack.fatbin"),
    ("src/stage.cu", "stage.fatbin"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tcpx_no_kernels)");
    for (source, _) in SOURCES {
        println!("cargo::rerun-if-changed={source}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=NVCC_CCBIN");
    println!("cargo::rerun-if-env-changed=KERNELS_REQUIRE_NVCC");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let require = env::var("KERNELS_REQUIRE_NVCC").is_ok_and(|v| v == "1");

    let Some(nvcc) = find_nvcc(&manifest) else {
        let msg = "nvcc not found (set NVCC or run scripts/install-nvcc.sh): \
                   tcpx-kernels is built without its CUDA kernels";
        if require {
            panic!("KERNELS_REQUIRE_NVCC=1: {msg}");
        }
        println!("cargo::warning={msg}");
        println!("cargo::rustc-cfg=tcpx_no_kernels");
        for (_, fatbin) in SOURCES {
            std::fs::write(out_dir.join(fatbin), []).expect("write empty fatbin");
        }
        return;
    };
    // Rebuild when the compiler found is replaced (a re-install, another version).
    println!("cargo::rerun-if-changed={}", nvcc.display());

    for (source, fatbin) in SOURCES {
        let status = Command::new(&nvcc)
            .current_dir(&manifest)
            .args(["--fatbin", "-O3", "-std=c++17", "-Xptxas", "-warn-spills"])
            .args(["-gencode", "arch=compute_80,code=sm_80"])
            .args(["-gencode", "arch=compute_90,code=sm_90"])
            .args(["-gencode", "arch=compute_90,code=compute_90"])
            // The unpack table's shape, from its one definition (src/unpack.cu reads these).
            .arg(format!(
                "-DUNPACK_SLOTS={}u",
                tcpx_core::ring::TCPX_REQUESTS
            ))
            .arg(format!(
                "-DUNPACK_ENTRIES={}u",
                tcpx_core::unpack::ENTRIES_PER_SLOT
            ))
            .arg("-o")
            .arg(out_dir.join(fatbin))
            .arg(source)
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        // A kernel that fails to compile is a bug, never a reason to build without kernels.
        assert!(
            status.success(),
            "{} failed on {source}: {status}",
            nvcc.display()
        );
    }
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let tools = manifest.join("../.tools/nvcc/nvidia/cu13/bin/nvcc");
    if tools.is_file() {
        return Some(tools);
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}
