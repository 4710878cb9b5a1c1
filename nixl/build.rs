//! Compiles the C++ shim that presents NIXL's backend ABI and forwards to the Rust backend.
//!
//! The flags are part of the ABI contract with the NIXL wheel: C++20 and the cxx11 string ABI.
//! libstdc++ is linked dynamically (cc's default on Linux) so the plugin shares the
//! process's one copy of the allocator and exception runtime with libnixl.

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .pic(true)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("TCPX_NIXL_VERSION", format!("\"{version}\"").as_str())
        .flag_if_supported("-fvisibility=hidden")
        .flag_if_supported("-fvisibility-inlines-hidden")
        .warnings(true)
        .extra_warnings(true)
        .file("cpp/shim.cc")
        .compile("tcpx_nixl_shim");
    for f in ["cpp/shim.cc", "cpp/nixl_abi.h", "cpp/tcpx_nixl.h"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
