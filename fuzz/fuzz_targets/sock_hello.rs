//! Fuzzes `wire::sock::SockHello::parse`: never panics, what parses re-emits byte-identically,
//! and `emit` into a short buffer fails with `BufferTooSmall`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::wire::sock::{SockHello, HELLO_LEN, MAGIC, VERSION};
use tcpx_core::wire::Error;

fn check(data: &[u8]) {
    let Ok(h) = SockHello::parse(data) else {
        return;
    };
    assert_eq!(data.len(), HELLO_LEN);
    assert_eq!(
        h.to_bytes().as_ref().map(|b| &b[..]),
        Ok(data),
        "re-emit of {h:?}"
    );
    assert!(h.index <= h.nsocks && h.nsocks >= 1 && h.chunk_bytes > 0);
    let mut short = [0u8; HELLO_LEN - 1];
    assert!(matches!(
        h.emit(&mut short),
        Err(Error::BufferTooSmall { .. })
    ));
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // Again with a valid magic and version, so time goes into the field checks.
    if data.len() >= 6 {
        let mut fixed = data.to_vec();
        fixed[..4].copy_from_slice(&MAGIC.to_le_bytes());
        fixed[4..6].copy_from_slice(&VERSION.to_le_bytes());
        check(&fixed);
    }
});
