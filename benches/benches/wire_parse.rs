//! Control-message parse and emit costs: what the backend thread pays per frame on the
//! control stream. The 64-segment `WriteAnnounce` is the hot case (target < 200 ns).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tcpx_core::mem::MemKind;
use tcpx_core::wire::{
    self, Ack, ConnInfo, ErrorMsg, Hello, ListenHandles, Message, Notif, ReadAnnounce, ReadRequest,
    RegionToken, Segment, WriteAnnounce,
};

fn segments(n: u64) -> Vec<Segment> {
    (0..n)
        .map(|i| {
            Segment::new(
                i % 4,
                0x5eed ^ i,
                0x7f00_0000_0000 + i * (512 << 10),
                512 << 10,
            )
        })
        .collect()
}

fn emit(m: Message<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    m.emit(&mut v).unwrap();
    v
}

fn parse_each_kind(c: &mut Criterion) {
    let segs64 = segments(64);
    let segs4 = segments(4);
    let handles = [[0x42u8; 128]; 4];
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "conn_info",
            emit(Message::ConnInfo(ConnInfo {
                protocol: tcpx_core::wire::VERSION,
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), 47000),
                channels: 4,
                name: "prefill-worker-0",
            })),
        ),
        (
            "region_token",
            emit(Message::RegionToken(RegionToken {
                base: 0x7f00_0000_0000,
                len: 1 << 30,
                mem: MemKind::Device,
                device: 0,
                region: 7,
                key: 0xdead_beef,
            })),
        ),
        (
            "hello",
            emit(Message::Hello(Hello {
                channels: 4,
                name: "decode-worker-3",
            })),
        ),
        (
            "listen_handles_4",
            emit(Message::ListenHandles(ListenHandles {
                chunk_bytes: 512 * 1024,
                split: 8,
                handles: &handles,
            })),
        ),
        (
            "write_announce_4seg_notif",
            emit(Message::WriteAnnounce(WriteAnnounce {
                xfer: 1,
                segments: &segs4,
                notif: Some(b"layer-17-done"),
                data: None,
            })),
        ),
        (
            "write_announce_64seg",
            emit(Message::WriteAnnounce(WriteAnnounce {
                xfer: 2,
                segments: &segs64,
                notif: None,
                data: None,
            })),
        ),
        (
            "read_request_64seg",
            emit(Message::ReadRequest(ReadRequest {
                xfer: 3,
                segments: &segs64,
                inline_ok: false,
            })),
        ),
        (
            "read_announce",
            emit(Message::ReadAnnounce(ReadAnnounce { xfer: 3 })),
        ),
        ("ack", emit(Message::Ack(Ack { xfer: 2, status: 0 }))),
        ("notif", emit(Message::Notif(Notif { msg: b"kv-ready" }))),
        (
            "error",
            emit(Message::Error(ErrorMsg {
                code: 2,
                xfer: 9,
                text: "segment 3 outside region 7",
            })),
        ),
    ];

    let mut g = c.benchmark_group("wire_parse");
    g.throughput(Throughput::Elements(1));
    for (name, bytes) in &frames {
        g.bench_function(*name, |b| {
            b.iter(|| wire::parse(black_box(bytes)).map(|m| m.kind()))
        });
    }
    // The per-kind parser without the dispatch, plus a walk over the segments as the target
    // does when validating them against its registrations.
    let wa = &frames
        .iter()
        .find(|f| f.0 == "write_announce_64seg")
        .unwrap()
        .1;
    g.bench_function("write_announce_64seg/direct+walk", |b| {
        b.iter(|| {
            let w = WriteAnnounce::parse(black_box(wa)).unwrap();
            w.segments.iter().map(|s| s.len()).sum::<u64>()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("wire_emit");
    let w = WriteAnnounce {
        xfer: 2,
        segments: &segs64,
        notif: None,
        data: None,
    };
    let mut out = vec![0u8; w.buffer_len()];
    g.bench_function("write_announce_64seg", |b| {
        b.iter(|| black_box(&w).emit(black_box(&mut out)).unwrap())
    });
    let a = Ack { xfer: 2, status: 0 };
    let mut out = [0u8; 24];
    g.bench_function("ack", |b| {
        b.iter(|| black_box(&a).emit(black_box(&mut out)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, parse_each_kind);
criterion_main!(benches);
