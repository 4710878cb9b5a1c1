//! tcpx-nixl: will hold the NIXL backend plugin `TCPX` (C++ ABI shim + Rust backend).
