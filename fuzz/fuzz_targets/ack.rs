//! Fuzzes `wire::Ack::parse`: never panics, and what parses re-emits byte-identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::wire::Ack;

fuzz_target!(|data: &[u8]| tcpx_fuzz::kind_round_trip::<Ack>(data));
