//! Fuzzes `wire::sock::SockHandle::parse`: never panics; what parses re-emits to the same
//! first 40 bytes with a zero connect stage, parses back to the same handle, and never writes
//! past its 48 bytes; `emit` into a short buffer fails with `BufferTooSmall`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::abi::HANDLE_MAX_SIZE;
use tcpx_core::wire::sock::{SockHandle, HANDLE_LEN, HANDLE_STAGE_OFF, MAGIC, VERSION};
use tcpx_core::wire::Error;

fn check(data: &[u8]) {
    let parsed = SockHandle::parse(data);
    assert_eq!(SockHandle::stage(data).is_ok(), data.len() >= HANDLE_LEN);
    let Ok(h) = parsed else {
        return;
    };
    assert!(data.len() >= HANDLE_LEN);
    // Emitted over a copy of NCCL's 128 bytes: only the first 48 may change.
    let mut out = [0u8; HANDLE_MAX_SIZE];
    let n = data.len().min(HANDLE_MAX_SIZE);
    out[..n].copy_from_slice(&data[..n]);
    assert_eq!(h.emit(&mut out), Ok(HANDLE_LEN));
    assert_eq!(
        out[..HANDLE_STAGE_OFF],
        data[..HANDLE_STAGE_OFF],
        "re-emit of {h:?}"
    );
    assert_eq!(SockHandle::stage(&out), Ok(0));
    assert_eq!(out[HANDLE_LEN..n], data[HANDLE_LEN..n]);
    assert_eq!(SockHandle::parse(&out), Ok(h));
    let mut short = [0u8; HANDLE_LEN - 1];
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
