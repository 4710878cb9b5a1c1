//! Planning and walking a 1 GiB batch at 512 KiB chunks over 4 channels: the per-transfer
//! cost the engine pays in `post()` (validation) and while feeding windows (iteration).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tcpx_core::plan::{Plan, PlanConfig, Segment};

/// 1 GiB as `n` equal segments, scattered on both sides.
fn batch(n: u64) -> Vec<Segment> {
    let len = (1u64 << 30) / n;
    (0..n)
        .map(|i| Segment {
            local_offset: i * 2 * len,
            remote_offset: (n - i) * 3 * len,
            len,
        })
        .collect()
}

fn plan_gib(c: &mut Criterion) {
    let cfg = PlanConfig::new(512 << 10, 4);
    let mut g = c.benchmark_group("plan_1gib_512k_4ch");
    g.throughput(Throughput::Elements(2048));
    for n in [1u64, 64, 1024] {
        let segs = batch(n);
        g.bench_function(format!("{n}_segments/all_chunks"), |b| {
            b.iter(|| {
                let plan = Plan::new(black_box(&segs), cfg).unwrap();
                let mut acc = 0u64;
                for ch in plan.chunks() {
                    acc = acc.wrapping_add(ch.local_offset ^ u64::from(ch.len) ^ ch.seq);
                }
                black_box(acc)
            })
        });
        g.bench_function(format!("{n}_segments/per_channel"), |b| {
            b.iter(|| {
                let plan = Plan::new(black_box(&segs), cfg).unwrap();
                let mut acc = 0u64;
                for channel in 0..4 {
                    for ch in plan.channel_chunks(channel) {
                        acc = acc.wrapping_add(ch.local_offset ^ u64::from(ch.len) ^ ch.seq);
                    }
                }
                black_box(acc)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, plan_gib);
criterion_main!(benches);
