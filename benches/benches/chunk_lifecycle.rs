//! One chunk's full life through a channel window: post, net done, (unpack,) consume,
//! retire. This is the per-chunk bookkeeping cost of the engine's poll loop; target < 20 ns.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tcpx_core::chunk::{RecvAction, RecvWindow, SendWindow};
use tcpx_core::mem::MemKind;
use tcpx_core::ring::TCPX_REQUESTS;

/// Stand-in for the engine's per-chunk record (request pointer, destination, event index).
#[derive(Clone, Copy)]
struct Req {
    request: usize,
    dst: u64,
}

fn recv_host(c: &mut Criterion) {
    let mut w: RecvWindow<Req, TCPX_REQUESTS> = RecvWindow::new();
    c.bench_function("recv_lifecycle/host", |b| {
        b.iter(|| {
            let len = black_box(512 << 10);
            // Match on each action as the engine would, instead of spilling it to memory.
            let mut ok = w
                .post(len, MemKind::Host, Req { request: 1, dst: 2 })
                .is_ok();
            ok &= matches!(w.net_done(len as usize), Ok(RecvAction::Consume { .. }));
            let req = match w.consume() {
                Ok((_, req)) => req,
                Err(_) => Req { request: 0, dst: 0 },
            };
            black_box((ok, req.request, req.dst));
        })
    });
}

fn recv_device(c: &mut Criterion) {
    let mut w: RecvWindow<Req, TCPX_REQUESTS> = RecvWindow::new();
    c.bench_function("recv_lifecycle/device", |b| {
        b.iter(|| {
            let len = black_box(512 << 10);
            let seq = w
                .post(len, MemKind::Device, Req { request: 1, dst: 2 })
                .unwrap_or(0);
            let mut ok = matches!(
                w.net_done(len as usize),
                Ok(RecvAction::LaunchUnpack { .. })
            );
            ok &= matches!(w.unpack_launched(seq), Ok(RecvAction::AwaitUnpack { .. }));
            ok &= matches!(w.unpack_done(seq), Ok(RecvAction::Consume { .. }));
            let req = match w.consume() {
                Ok((_, req)) => req,
                Err(_) => Req { request: 0, dst: 0 },
            };
            black_box((ok, req.request, req.dst));
        })
    });
}

fn send(c: &mut Criterion) {
    let mut w: SendWindow<Req, TCPX_REQUESTS> = SendWindow::new();
    c.bench_function("send_lifecycle", |b| {
        b.iter(|| {
            let len = black_box(512 << 10);
            let ok = w.post(len, Req { request: 1, dst: 2 }).is_ok();
            let req = match w.net_done(len as usize) {
                Ok((_, req)) => req,
                Err(_) => Req { request: 0, dst: 0 },
            };
            black_box((ok, req.request, req.dst));
        })
    });
}

criterion_group!(benches, recv_host, recv_device, send);
criterion_main!(benches);
