//! Seeds of `machines`: byte streams the target decodes into plans and window events.

use super::*;

/// `machines` inputs: a first byte with bit 0 clear drives the windows with one byte per
/// event (low 3 bits the event, high 5 its argument); set, the planner with a 4-byte config
/// and 24-byte segments.
pub(super) fn machines() -> Named {
    // Window events, as the target decodes them.
    let post = |len: u8, device: bool| (len << 1 | u8::from(device)) << 3;
    let net_done = |extra: u8| (extra << 3) | 1;
    let launched = |ahead: u8| (ahead << 3) | 2;
    let unpacked = |ahead: u8| (ahead << 3) | 3;
    const CONSUME: u8 = 4;
    const STEP: u8 = 5;
    let send_post = |len: u8| (len << 3) | 6;
    let send_done = |extra: u8| (extra << 3) | 7;

    let mut full_host = vec![0u8];
    full_host.extend((0..16).map(|i| post(i % 16, false)));
    full_host.extend([STEP; 40]);
    let mut device = vec![0u8];
    for i in 0..6 {
        device.extend([
            post(i + 1, true),
            net_done(0),
            launched(0),
            unpacked(0),
            CONSUME,
        ]);
    }
    device.extend([post(3, true), post(4, true), STEP, STEP, STEP, STEP, STEP]);
    let mut send = vec![0u8];
    send.extend((0..17).map(|i| send_post(i % 32)));
    send.extend([send_done(0); 17]);
    send.extend([send_done(1)]);
    let illegal = vec![
        0,
        CONSUME,
        net_done(0),
        launched(3),
        unpacked(0),
        post(5, false),
        net_done(1),
        unpacked(0),
        launched(19),
        CONSUME,
        STEP,
        STEP,
        send_done(0),
    ];

    // Plans: the config as the target reads it, then the segments.
    // `cfg3`: bit 7 scales the chunk size by 128; the byte modulo 18 is the first channel.
    let plan = |chunk: u16, channels: u8, cfg3: u8, segs: &[(u64, u64, u64)]| {
        let mut v = vec![1u8];
        v.extend_from_slice(&chunk.to_le_bytes());
        v.push(channels);
        v.push(cfg3);
        for &(l, r, len) in segs {
            assert!(len < 100_000 && len >> 56 == 0, "the target keeps it as is");
            v.extend_from_slice(&l.to_le_bytes());
            v.extend_from_slice(&r.to_le_bytes());
            v.extend_from_slice(&len.to_le_bytes());
        }
        let chunk_bytes = u32::from(chunk) << if cfg3 & 0x80 != 0 { 7 } else { 0 };
        let cfg = PlanConfig::new(chunk_bytes, channels % 18).with_first_channel(cfg3 % 18);
        let segs: Vec<PlanSegment> = segs
            .iter()
            .map(|&(local_offset, remote_offset, len)| PlanSegment {
                local_offset,
                remote_offset,
                len,
            })
            .collect();
        (v, Plan::new(&segs, cfg).is_ok())
    };
    let accepted = |(v, ok): (Vec<u8>, bool)| {
        assert!(ok, "a valid plan seed is accepted");
        v
    };
    let refused = |(v, ok): (Vec<u8>, bool)| {
        assert!(!ok, "an edge plan seed is refused");
        v
    };
    named(vec![
        ("windows-full-host", full_host),
        ("windows-device", device),
        ("windows-send", send),
        ("windows-illegal", illegal),
        (
            "plan-one-segment",
            accepted(plan(4096, 4, 0, &[(0, 0, 65_536)])),
        ),
        (
            "plan-rotated",
            accepted(plan(
                1000,
                3,
                2,
                &[(0, 4096, 2500), (8192, 0, 0), (100, 50_000, 99_999)],
            )),
        ),
        (
            "plan-max-chunk",
            accepted(plan(
                (MAX_CHUNK_BYTES >> 7) as u16,
                16,
                // 128 + 13: the wide flag, first channel 15.
                0x80 | 13,
                &[(1 << 40, 0, 77_777)],
            )),
        ),
        ("plan-empty", accepted(plan(1, 1, 0, &[]))),
        ("plan-no-channels", refused(plan(4096, 0, 0, &[(0, 0, 10)]))),
        (
            "plan-first-beyond",
            refused(plan(4096, 2, 2, &[(0, 0, 10)])),
        ),
        (
            "plan-offset-overflow",
            refused(plan(4096, 2, 0, &[(u64::MAX - 5, 0, 10)])),
        ),
    ])
}
