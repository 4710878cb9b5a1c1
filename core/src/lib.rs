//! `tcpx-core`: the sans-IO, heap-free heart of tcpx.
//!
//! Everything here is plain data and state machines: no sockets, no CUDA, no clock, no
//! allocator. The std layer (`tcpx`) performs the I/O these types decide on.
#![no_std]

pub mod abi;
pub mod chunk;
pub mod id;
pub mod mem;
pub mod nixl;
pub mod plan;
pub mod ring;
pub mod size;
pub mod span;
pub mod topology;
pub mod unpack;
pub mod window;
pub mod wire;
