//! Regions larger than a v7 plugin's `int` registration size (TCPX: 2^31 - 1 bytes), as a
//! KV cache often is: the engine registers them as overlapping windows and every chunk uses a
//! window holding it. A 3 GiB host region on each side; transfers both ways into its last MiB
//! and across 2^31, data verified and the bytes around them untouched. The pages of the
//! regions are only touched where the transfers land.

use std::time::Duration;

use tcpx::engine::{Config, Memory, Segment};

mod common;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const REGION: u64 = 3 * GIB;

/// Bytes that depend on their offset and a seed, so a misplaced byte shows.
fn byte_at(off: u64, seed: u64) -> u8 {
    (off.wrapping_mul(0x9E37_79B9).wrapping_add(seed) >> 7) as u8 | 1
}

fn fill(buf: &mut [u8], ranges: &[(u64, u64)], seed: u64) {
    for &(off, len) in ranges {
        for i in off..off + len {
            buf[i as usize] = byte_at(i, seed);
        }
    }
}

fn check(buf: &[u8], ranges: &[(u64, u64)], seed: u64, what: &str) {
    for &(off, len) in ranges {
        for i in off..off + len {
            assert_eq!(
                buf[i as usize],
                byte_at(i, seed),
                "{what}: byte {i:#x} of the range [{off:#x}, +{len}) differs"
            );
        }
        let before = off.checked_sub(4096).map_or(0..off, |b| b..off);
        let after = off + len..(off + len + 4096).min(REGION);
        for i in before.chain(after) {
            assert_eq!(
                buf[i as usize], 0,
                "{what}: byte {i:#x} outside was written"
            );
        }
    }
}

fn segments(mem: tcpx::MemId, ranges: &[(u64, u64)]) -> Vec<Segment> {
    ranges
        .iter()
        .map(|&(offset, len)| Segment {
            mem,
            offset,
            remote_offset: offset,
            len,
        })
        .collect()
}

#[test]
fn regions_over_2_gib_move_data_in_their_last_mib_and_across_2_31() {
    let cfg = Config {
        channels: 2,
        timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let (mut a, mut b) = common::engine::loopback_pair(Default::default(), cfg);
    // Zeroed pages come from the kernel on first touch: 6 GiB of address space, a few MiB used.
    let mut ra = vec![0u8; REGION as usize];
    let mut rb = vec![0u8; REGION as usize];
    // SAFETY: both buffers outlive their registrations (deregistered below).
    let (ma, mb) = unsafe {
        (
            a.register(ra.as_mut_ptr().cast(), ra.len(), Memory::Host)
                .unwrap(),
            b.register(rb.as_mut_ptr().cast(), rb.len(), Memory::Host)
                .unwrap(),
        )
    };
    let write = [(REGION - MIB, MIB), ((1 << 31) - 300 * 1024, MIB + 12_345)];
    fill(&mut ra, &write, 1);
    assert!(common::engine::transfer(
        &mut a,
        &mut b,
        &segments(ma, &write),
        &segments(mb, &write),
        Duration::from_secs(60),
    ));
    check(&rb, &write, 1, "WRITE a -> b");
    // The other way ("READ": b's bytes into a), at other offsets around 2^31 and the end.
    let read = [
        ((1 << 31) - 1, 2 * MIB + 3),
        (REGION - 3 * MIB - 17, 2 * MIB),
        (REGION - 4096, 4096),
    ];
    for &(off, len) in &write {
        ra[off as usize..(off + len) as usize].fill(0);
    }
    fill(&mut rb, &read, 2);
    assert!(common::engine::transfer(
        &mut b,
        &mut a,
        &segments(mb, &read),
        &segments(ma, &read),
        Duration::from_secs(60),
    ));
    check(&ra, &read, 2, "READ b -> a");
    a.deregister(ma).unwrap();
    b.deregister(mb).unwrap();
}
