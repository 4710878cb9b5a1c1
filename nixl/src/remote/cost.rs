//! What transfers to peers cost so far, for `estimateXferCost`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What transfers to other agents have cost so far: a latency (small transfers) and a
/// throughput (large ones), each a moving average of completed transfers, for
/// `estimateXferCost`. Starts from figures measured over tcpxsock on loopback on a 2-core box.
#[derive(Debug)]
pub struct CostModel {
    /// Nanoseconds of a transfer too small for its bytes to matter.
    latency_ns: AtomicU64,
    /// Bytes per second of large transfers, past the latency.
    bytes_per_s: AtomicU64,
}

impl CostModel {
    /// Transfers up to this size teach the latency.
    const SMALL: u64 = 64 * 1024;
    /// Transfers from this size on teach the throughput.
    const LARGE: u64 = 1 << 20;

    /// A model starting at `latency` and `bytes_per_s`.
    pub fn new(latency: Duration, bytes_per_s: u64) -> Self {
        CostModel {
            latency_ns: AtomicU64::new(latency.as_nanos() as u64),
            bytes_per_s: AtomicU64::new(bytes_per_s.max(1)),
        }
    }

    /// A completed transfer of `bytes` that took `took`.
    pub fn observe(&self, bytes: u64, took: Duration) {
        // Moving averages with weight 1/8: steady under noise, current within tens of
        // transfers. Racing updates may lose one sample; the model stays an estimate.
        let ewma = |old: u64, new: u64| old - old / 8 + new / 8;
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        if bytes <= Self::SMALL {
            let l = self.latency_ns.load(Ordering::Relaxed);
            self.latency_ns.store(ewma(l, ns), Ordering::Relaxed);
        } else if bytes >= Self::LARGE {
            let moving = ns
                .saturating_sub(self.latency_ns.load(Ordering::Relaxed))
                .max(1);
            let rate = (u128::from(bytes) * 1_000_000_000 / u128::from(moving))
                .min(u128::from(u64::MAX)) as u64;
            let r = self.bytes_per_s.load(Ordering::Relaxed);
            self.bytes_per_s
                .store(ewma(r, rate).max(1), Ordering::Relaxed);
        }
    }

    /// Expected duration of a transfer of `bytes`, and the margin around it.
    pub fn estimate(&self, bytes: u64) -> (Duration, Duration) {
        let latency = self.latency_ns.load(Ordering::Relaxed);
        let rate = self.bytes_per_s.load(Ordering::Relaxed).max(1);
        let moving = (u128::from(bytes) * 1_000_000_000 / u128::from(rate)) as u64;
        let total = Duration::from_nanos(latency.saturating_add(moving));
        // Half the latency, plus a quarter of the time the bytes take: what run-to-run noise
        // looked like in the measurements.
        let margin = Duration::from_nanos(latency / 2 + moving / 4);
        (total, margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_model_learns_latency_and_throughput() {
        let m = CostModel::new(Duration::from_micros(100), 1_000_000_000);
        let (small, margin) = m.estimate(0);
        assert_eq!(small, Duration::from_micros(100));
        assert!(margin > Duration::ZERO && margin < small);
        let (big, _) = m.estimate(1 << 30);
        assert!(big > Duration::from_millis(1000), "{big:?}");
        // Faster small transfers and a slower link pull the estimates their way.
        for _ in 0..64 {
            m.observe(4096, Duration::from_micros(20));
            m.observe(64 << 20, Duration::from_millis(128));
        }
        let (small2, _) = m.estimate(0);
        assert!(small2 < Duration::from_micros(30), "{small2:?}");
        let (big2, _) = m.estimate(1 << 30);
        assert!(big2 > Duration::from_millis(1800), "{big2:?}");
        // Mid-sized transfers teach nothing (neither a latency nor a rate alone).
        let before = m.estimate(1 << 20);
        m.observe(256 << 10, Duration::from_secs(5));
        assert_eq!(m.estimate(1 << 20), before);
    }
}
