//! Seeds of tcpxsock's wire targets (`sock_handle`, `sock_hello`, `sock_request`).

use super::*;

/// A valid handle over NCCL's `HANDLE_MAX_SIZE` bytes (the rest `fill`), `len` of them kept.
pub(super) fn sock_handle(h: SockHandle, fill: u8, len: usize) -> Vec<u8> {
    let mut v = vec![fill; HANDLE_MAX_SIZE];
    assert_eq!(h.emit(&mut v), Ok(HANDLE_LEN), "a seed handle emits");
    assert_eq!(SockHandle::stage(&v), Ok(0));
    assert_eq!(SockHandle::parse(&v), Ok(h), "a seed handle round-trips");
    v.truncate(len);
    v
}

pub(super) fn sock_hello(h: SockHello) -> Vec<u8> {
    let v = h.to_bytes().expect("a seed hello emits").to_vec();
    assert_eq!(SockHello::parse(&v), Ok(h), "a seed hello round-trips");
    v
}

pub(super) fn sock_header(size: u32, inline: bool, seq: u64) -> Vec<u8> {
    let h = SockRequestHeader::new(size as usize, inline, seq).expect("a seed size is in range");
    let v = h.to_bytes().expect("a seed header emits").to_vec();
    assert_eq!(
        SockRequestHeader::parse(&v),
        Ok(h),
        "a seed header round-trips"
    );
    v
}

/// tcpxsock's listen handle, hello and request header: valid ones (typical values and the
/// bounds of every field), then ones refused (handle and hello: past the magic and version).
pub(super) fn sock_seeds() -> Vec<(&'static str, Named)> {
    let v4 = |a, b, c, d, port| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port);
    let handle = |addr, nonce| SockHandle { addr, nonce };
    let typical = handle(v4(10, 0, 0, 7, 47000), 0xdead_beef_0102_0304);
    let h = sock_handle(typical, 0, HANDLE_LEN);
    let v6 = "[fe80::1:2]:65535".parse().unwrap();
    let all_ones = SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xff; 16])), u16::MAX);

    let hello = |index, nsocks, nonce, conn_id, chunk_bytes| {
        sock_hello(SockHello {
            index,
            nsocks,
            nonce,
            conn_id,
            chunk_bytes,
        })
    };
    let max_socks = MAX_SOCKETS as u8;
    let he = hello(2, 4, 7, 0x0102_0304_0506_0708, 512 << 10);

    vec![
        (
            "sock_handle",
            named(vec![
                ("valid-v4", h.clone()),
                ("valid-v6", sock_handle(handle(v6, 1), 0, HANDLE_LEN)),
                // NCCL's whole handle: the bytes after tcpxsock's are not read.
                (
                    "valid-nccl-128",
                    sock_handle(typical, 0xa5, HANDLE_MAX_SIZE),
                ),
                (
                    "valid-min",
                    sock_handle(handle(v4(0, 0, 0, 0, 0), 0), 0, HANDLE_LEN),
                ),
                (
                    "valid-max",
                    sock_handle(handle(all_ones, u64::MAX), 0xff, HANDLE_MAX_SIZE),
                ),
                ("edge-family", patch(h.clone(), 6, &[5])),
                ("edge-reserved-7", patch(h.clone(), 7, &[1])),
                ("edge-reserved-10", patch(h.clone(), 10, &[1])),
                ("edge-reserved-28", patch(h.clone(), 28, &[1])),
                ("edge-v4-high-bytes", patch(h.clone(), 16, &[1])),
                ("edge-short", h[..HANDLE_LEN - 1].to_vec()),
                ("edge-no-stage", h[..HANDLE_STAGE_OFF].to_vec()),
            ]),
        ),
        (
            "sock_hello",
            named(vec![
                ("valid", he.clone()),
                ("valid-min", hello(0, 1, 0, 0, CHUNK_ALIGN)),
                (
                    "valid-max",
                    hello(
                        max_socks,
                        max_socks,
                        u64::MAX,
                        u64::MAX,
                        u32::MAX - (CHUNK_ALIGN - 1),
                    ),
                ),
                ("valid-last-socket", hello(1, 1, 3, 4, 1 << 20)),
                ("edge-nsocks-0", patch(he.clone(), 6, &[0, 0])),
                ("edge-nsocks-17", patch(he.clone(), 7, &[max_socks + 1])),
                ("edge-index-above", patch(he.clone(), 6, &[5])),
                ("edge-chunk-0", patch(he.clone(), 24, &0u32.to_le_bytes())),
                (
                    "edge-chunk-unaligned",
                    patch(he.clone(), 24, &(CHUNK_ALIGN + 1).to_le_bytes()),
                ),
                ("edge-reserved", patch(he.clone(), 28, &[1])),
                ("edge-short", he[..HELLO_LEN - 1].to_vec()),
                ("edge-long", [he.clone(), vec![0]].concat()),
            ]),
        ),
        (
            "sock_request",
            named(vec![
                ("valid-inline", sock_header(4097, true, 3)),
                ("valid-data", sock_header(1 << 20, false, 0x1_0000_0002)),
                ("valid-empty", sock_header(0, false, 0)),
                ("valid-max", sock_header(MAX_SIZE, true, u64::MAX)),
                ("valid-max-data", sock_header(MAX_SIZE, false, u64::MAX - 1)),
                (
                    "edge-short",
                    sock_header(4097, true, 3)[..sock::HEADER_LEN - 1].to_vec(),
                ),
                ("edge-long", [sock_header(4097, false, 3), vec![0]].concat()),
            ]),
        ),
    ]
}
