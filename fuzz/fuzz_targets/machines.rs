//! Fuzzes the core's state machines and planner with raw bytes decoded into events.
//!
//! Windows: arbitrary (mostly illegal) event streams must never panic, must leave a window
//! unchanged when rejected, and must consume chunks exactly in posting order. Planner:
//! arbitrary segments and configs must be refused or yield an exact, ordered cover.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpx_core::chunk::{RecvAction, RecvWindow, SendWindow};
use tcpx_core::mem::MemKind;
use tcpx_core::plan::{Plan, PlanConfig, Segment, MAX_CHANNELS, MAX_TRANSFER_BYTES};
use tcpx_core::ring::TCPX_REQUESTS;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((sel, rest)) if sel & 1 == 0 => windows(rest),
        Some((_, rest)) => plan(rest),
        None => {}
    }
});

/// One byte per event: the low 3 bits pick it, the high 5 bits are its argument.
fn windows(data: &[u8]) {
    let mut recv: RecvWindow<u64, TCPX_REQUESTS> = RecvWindow::new();
    let mut send: SendWindow<u64, TCPX_REQUESTS> = SendWindow::new();
    let mut consumed = 0u64;
    let mut sent = 0u64;
    for &b in data {
        let arg = b >> 3;
        let head = recv.next_seq() - recv.len() as u64;
        let before = recv.clone();
        let res = match b & 7 {
            0 => {
                let mem = if arg & 1 == 0 {
                    MemKind::Host
                } else {
                    MemKind::Device
                };
                let seq = recv.next_seq();
                match recv.post(u32::from(arg >> 1), mem, seq) {
                    Ok(s) => assert_eq!(s, seq),
                    Err(_) => assert!(before.is_full()),
                }
                Ok(())
            }
            1 => {
                let len = recv
                    .test_target()
                    .and_then(|(s, _)| recv.get(s))
                    .map_or(0, |e| e.len());
                recv.net_done(len as usize + usize::from(arg & 1))
                    .map(|_| ())
            }
            2 => recv.unpack_launched(head + u64::from(arg % 20)).map(|_| ()),
            3 => recv.unpack_done(head + u64::from(arg % 20)).map(|_| ()),
            4 => {
                consume(&mut recv, &mut consumed);
                Ok(())
            }
            5 => {
                if !step(&mut recv) {
                    consume(&mut recv, &mut consumed);
                }
                Ok(())
            }
            6 => {
                let was_full = send.is_full();
                let r = send.post(u32::from(arg), sent + send.len() as u64);
                assert_eq!(r.is_err(), was_full);
                Ok(())
            }
            _ => {
                let sbefore = send.clone();
                let len = send.iter().next().map_or(0, |(_, e)| e.len());
                match send.net_done(len as usize + usize::from(arg & 1)) {
                    Ok((seq, payload)) => {
                        assert_eq!((seq, payload), (sent, sent));
                        sent += 1;
                    }
                    Err(_) => assert_eq!(send, sbefore),
                }
                Ok(())
            }
        };
        if res.is_err() {
            assert_eq!(recv, before, "rejected event changed the window");
        }
        assert!(recv.len() <= TCPX_REQUESTS && send.len() <= TCPX_REQUESTS);
        assert_eq!(recv.next_seq(), consumed + recv.len() as u64);
    }
    // Following `poll` from any reachable state drains the window in order.
    for _ in 0..4 * TCPX_REQUESTS {
        if !step(&mut recv) {
            if recv.poll() == RecvAction::Idle {
                break;
            }
            consume(&mut recv, &mut consumed);
        }
    }
    assert!(recv.is_empty(), "poll-driven drain left chunks behind");
}

/// Call `consume`: it must hand back the next chunk in posting order, or change nothing.
fn consume(w: &mut RecvWindow<u64, TCPX_REQUESTS>, consumed: &mut u64) {
    let before = w.clone();
    match w.consume() {
        Ok((seq, payload)) => {
            assert_eq!(
                (seq, payload),
                (*consumed, *consumed),
                "consumed out of order"
            );
            *consumed += 1;
        }
        Err(_) => assert_eq!(*w, before, "rejected consume changed the window"),
    }
}

/// Perform `poll`'s action with correct inputs, except Consume; false when it is Consume or
/// Idle.
fn step(w: &mut RecvWindow<u64, TCPX_REQUESTS>) -> bool {
    let r = match w.poll() {
        RecvAction::LaunchUnpack { seq, slot } => {
            assert_eq!(slot as u64, seq % 16);
            w.unpack_launched(seq)
        }
        RecvAction::Test { seq } => {
            let len = w.get(seq).map_or(0, |e| e.len());
            w.net_done(len as usize)
        }
        RecvAction::AwaitUnpack { seq } => w.unpack_done(seq),
        RecvAction::Consume { .. } | RecvAction::Idle => return false,
    };
    assert!(r.is_ok(), "the action poll asked for was rejected: {r:?}");
    true
}

/// Chunk walks longer than this are checked by counts only, to keep each input fast.
const WALK_LIMIT: u64 = 20_000;

fn plan(data: &[u8]) {
    let Some((cfg, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mut chunk_bytes = u32::from(u16::from_le_bytes([cfg[0], cfg[1]]));
    if cfg[3] & 0x80 != 0 {
        // Reach the 4 MiB bound and beyond.
        chunk_bytes <<= 7;
    }
    let cfg = PlanConfig::new(chunk_bytes, cfg[2] % 18).with_first_channel(cfg[3] % 18);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let segs: Vec<Segment> = rest
        .chunks_exact(24)
        .map(|s| Segment {
            local_offset: word(&s[0..8]),
            remote_offset: word(&s[8..16]),
            // Mostly modest lengths, sometimes anything.
            len: if s[23] & 0x80 != 0 {
                word(&s[16..24])
            } else {
                word(&s[16..24]) % 100_000
            },
        })
        .collect();
    let Ok(plan) = Plan::new(&segs, cfg) else {
        return;
    };
    // Accepted: every promise behind order-only matching must hold.
    let mut total = 0u64;
    for s in &segs {
        assert!(s.local_offset.checked_add(s.len).is_some());
        assert!(s.remote_offset.checked_add(s.len).is_some());
        total += s.len;
    }
    assert!(total <= MAX_TRANSFER_BYTES);
    assert_eq!(plan.total_bytes(), total);
    let channels = u64::from(cfg.channels);
    let per_channel: u64 = (0..MAX_CHANNELS).map(|c| plan.chunks_on(c)).sum();
    assert_eq!(per_channel, plan.chunk_count());
    if plan.chunk_count() > WALK_LIMIT {
        for c in 0..cfg.channels {
            let mut it = plan.channel_chunks(c);
            for seq in 0..plan.chunks_on(c).min(3) {
                let ch = it.next().expect("chunks_on promised a chunk");
                assert_eq!((ch.channel, ch.seq), (c, seq));
            }
        }
        return;
    }
    let (mut seg, mut off, mut n, mut bytes) = (0usize, 0u64, 0u64, 0u64);
    let mut seqs = [0u64; MAX_CHANNELS as usize];
    for ch in plan.chunks() {
        while off == segs[seg].len {
            seg += 1;
            off = 0;
        }
        assert_eq!(ch.segment as usize, seg);
        assert_eq!(ch.local_offset, segs[seg].local_offset + off);
        assert_eq!(ch.remote_offset, segs[seg].remote_offset + off);
        assert!(ch.len >= 1 && ch.len <= cfg.chunk_bytes);
        assert_eq!(
            u64::from(ch.channel),
            (u64::from(cfg.first_channel) + n) % channels
        );
        assert_eq!(ch.seq, seqs[ch.channel as usize]);
        seqs[ch.channel as usize] += 1;
        off += u64::from(ch.len);
        bytes += u64::from(ch.len);
        n += 1;
    }
    assert_eq!(n, plan.chunk_count());
    // Contiguous chunks that add up to the total cover every byte exactly once.
    assert_eq!(bytes, total);
    for c in 0..cfg.channels {
        assert!(plan
            .channel_chunks(c)
            .eq(plan.chunks().filter(|ch| ch.channel == c)));
    }
}
