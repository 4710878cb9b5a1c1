//! Builds the C logger shim: NCCL hands plugins a printf-style variadic logger, which stable
//! Rust cannot define, so a few lines of C format the message and pass plain text to Rust.

fn main() {
    println!("cargo:rerun-if-changed=csrc/log_shim.c");
    cc::Build::new()
        .file("csrc/log_shim.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("tcpx_log_shim");
}
