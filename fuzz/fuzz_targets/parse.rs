//! Fuzzes `wire::parse`, the dispatcher: never panics, and what parses re-emits
//! byte-identically and is accepted by its per-kind parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tcpx_fuzz::dispatch_round_trip(data));
