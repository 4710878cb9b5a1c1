//! Fuzzes `wire::sock::SockRequestHeader::parse`: never panics, every 8-byte input parses and
//! re-emits byte-identically (as `SockRequestHeader::new` would build it), other lengths are
//! refused, and `emit` into a short buffer fails with `BufferTooSmall`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::wire::sock::{SockRequestHeader, HEADER_LEN, MAX_SIZE};
use tcpx_core::wire::Error;

fuzz_target!(|data: &[u8]| {
    let parsed = SockRequestHeader::parse(data);
    assert_eq!(parsed.is_ok(), data.len() == HEADER_LEN);
    let Ok(h) = parsed else {
        return;
    };
    assert!(h.size <= MAX_SIZE);
    assert_eq!(
        h.to_bytes().as_ref().map(|b| &b[..]),
        Ok(data),
        "re-emit of {h:?}"
    );
    // The sender builds it from the full sequence number; only its low 32 bits travel.
    let high = u64::from(h.seq) | u64::from(data[0]) << 40;
    assert_eq!(
        SockRequestHeader::new(h.size as usize, h.inline, high),
        Ok(h)
    );
    assert!(h.is_for(high));
    let mut short = [0u8; HEADER_LEN - 1];
    assert!(matches!(
        h.emit(&mut short),
        Err(Error::BufferTooSmall { .. })
    ));
});
