//! Fuzzes stream framing (`wire::peek_frame`, `wire::next_frame`) over arbitrary byte
//! streams, parsing every frame it yields.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tcpx_fuzz::frame_stream(data));
