//! Fuzzes `wire::ReadData::parse`: never panics, and what parses re-emits byte-identically.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::wire::ReadData;

fuzz_target!(|data: &[u8]| tcpx_fuzz::kind_round_trip::<ReadData>(data));
