//! Fuzzes the NIXL control protocol's sans-IO machines (`tcpx_core::nixl`) directly: no backend,
//! no sockets, no threads. The simulated pair of `core/src/nixl/sim.rs` (an initiator and a
//! target driver over the machines, a data session pairing sends and receives in posting
//! order, time as an argument) plays the operation streams of `control_backend` (same input
//! format, same seeds): WRITEs and READs in, around and outside the target's registration
//! (posted by the well-behaved initiator when they can be framed, inline or not, with
//! notifications), and from a hostile peer beside it raw bytes, headers with any
//! magic/version/kind/length, inline WRITEs whose data disagrees with their segments,
//! notifications up to 5,000 bytes and frames a target never expects.
//!
//! After every input, with simulated time run well past the timeout: every request of the
//! initiator has an outcome (nothing hangs); the initiator never saw a frame the protocol
//! forbids (the target's answers are always well-formed and about parts it was sent); every
//! frame the target sent parses; no Ack or notification overtook data still landing (the
//! simulated target asserts it); inline data went only inside the registration (the target's
//! memory is exactly the registration: a copy outside it panics); and once the application
//! takes its notifications, the notification queue's room is all back.
#![no_main]

extern crate std;

use libfuzzer_sys::fuzz_target;
use tcpx_core::nixl as proto;
use tcpx_core::wire::{
    self, Message, Notif, ReadRequest, Segment, WriteAnnounce, MAX_INLINE_WRITE,
};
use tcpx_fuzz::input::{frame_with_segments, raw_header, unexpected, Bytes};

#[path = "../../core/src/nixl/sim.rs"]
mod sim;

use sim::{frame, Pair, BASE, INLINE, KEY, LEN, REGION, TIMEOUT};

const PAGE: u64 = 4096;
const MAX_OPS: usize = 16;
const MAX_SEGS: usize = 6;
/// Wire ids of the hostile peer's frames: answers to them go to it, not to the initiator.
const HOSTILE: u64 = 1 << 40;

/// Segments around the registration, decoded as `control_backend` decodes them.
fn segments(b: &mut Bytes<'_>) -> Vec<Segment> {
    let n = 1 + usize::from(b.u8()) % MAX_SEGS;
    (0..n)
        .map(|_| {
            let flags = b.u8();
            let region = if flags & 1 == 0 {
                REGION
            } else {
                u64::from(b.u32())
            };
            let key = if flags & 2 == 0 {
                KEY
            } else {
                KEY ^ u64::from(b.u32())
            };
            let addr = if flags & 4 == 0 {
                let off = u64::from(b.u16()) % (LEN + 4 * PAGE);
                BASE + off - 2 * PAGE
            } else {
                u64::from(b.u32()) << (b.u8() % 40)
            };
            let len = if flags & 8 == 0 {
                u64::from(b.u16()) % (LEN + 2)
            } else {
                u64::MAX >> (b.u8() % 64)
            };
            Segment::new(region, key, addr, len)
        })
        .collect()
}

fn total(segs: &[Segment]) -> Option<u64> {
    segs.iter()
        .try_fold(0u64, |a, s| s.end().and(a.checked_add(s.len())))
}

/// The wire id a target's answer names.
fn answer_id(f: &[u8]) -> u64 {
    match wire::parse(f).unwrap_or_else(|e| panic!("the target sent a bad frame: {e:?}")) {
        Message::Ack(a) => a.xfer,
        Message::Error(e) => e.xfer,
        Message::ReadAnnounce(r) => r.xfer,
        Message::ReadData(d) => d.xfer,
        Message::Keepalive(_) => 0,
        m => panic!("a target never sends {m:?}"),
    }
}

/// One simulated millisecond: the initiator's and the hostile peer's bytes reach the target,
/// its answers go to whichever of them they are for.
fn tick(p: &mut Pair, hostile: &mut Vec<Vec<u8>>) {
    p.now += sim::MS;
    p.t.inbox.extend(p.i.out.drain(..));
    p.t.inbox.extend(hostile.drain(..));
    p.t.pass(p.now, &mut p.data);
    for f in p.t.out.drain(..) {
        if answer_id(&f) < HOSTILE {
            p.i.inbox.push_back(f);
        }
    }
    if p.t.closed.is_some() && p.i.closed.is_none() && p.i.inbox.is_empty() {
        p.i.closed = Some("peer closed the control stream".into());
    }
    p.i.pass(p.now, &mut p.data);
}

fn run(data: &[u8]) {
    let mut p = Pair::new();
    p.i.max_outstanding = 8;
    let room = p.t.room;
    let mut hostile: Vec<Vec<u8>> = Vec::new();
    let mut b = Bytes(data);
    let mut xfer = HOSTILE;
    for _ in 0..MAX_OPS {
        if b.is_empty() {
            break;
        }
        match b.u8() % 9 {
            0 => {
                let n = usize::from(b.u8());
                hostile.push(b.take(n).to_vec());
            }
            1 | 2 => {
                let segs = segments(&mut b);
                let lie = b.u8();
                if lie & 3 == 2 {
                    b.u16();
                }
                let notif = (lie & 0x80 != 0).then_some(&b"fuzz"[..]);
                if total(&segs).is_some() {
                    p.i.post(proto::Op::Write, vec![segs], false, notif, &mut p.data);
                } else {
                    hostile.push(frame_with_segments(&segs, |segments| {
                        frame(&Message::WriteAnnounce(WriteAnnounce {
                            xfer,
                            segments,
                            notif,
                            data: None,
                        }))
                    }));
                    xfer += 1;
                }
            }
            3 => {
                let inline_ok = b.u8() & 1 == 1;
                let segs = segments(&mut b);
                match total(&segs) {
                    Some(n) => {
                        let inline = inline_ok && n <= INLINE;
                        p.i.post(proto::Op::Read, vec![segs], inline, None, &mut p.data);
                    }
                    None => {
                        hostile.push(frame_with_segments(&segs, |segments| {
                            frame(&Message::ReadRequest(ReadRequest {
                                xfer,
                                segments,
                                inline_ok,
                            }))
                        }));
                        xfer += 1;
                    }
                }
            }
            4 => {
                let n = usize::from(b.u16() % 5000);
                let msg = b.take(n).to_vec();
                p.i.out
                    .push_back(frame(&Message::Notif(Notif { msg: &msg })));
            }
            5 => {
                let h = raw_header(&mut b);
                hostile.push(h);
            }
            6 => {
                let m = frame(&unexpected(b.u8(), xfer));
                hostile.push(m);
            }
            7 => {
                let segs = segments(&mut b);
                let lie = b.u8();
                let n = total(&segs).filter(|&n| n <= MAX_INLINE_WRITE as u64);
                match (lie & 3, n) {
                    (0, Some(_)) => {
                        p.i.post(proto::Op::Write, vec![segs], true, None, &mut p.data);
                    }
                    (lie, n) => {
                        let len = total(&segs)
                            .unwrap_or(u64::MAX)
                            .min(MAX_INLINE_WRITE as u64 + 8)
                            as usize;
                        let len = match lie {
                            1 => len.saturating_sub(1),
                            2 => len + 1,
                            _ => len,
                        };
                        let _ = n;
                        let mut f = frame_with_segments(&segs, |segments| {
                            frame(&Message::WriteAnnounce(WriteAnnounce {
                                xfer,
                                segments,
                                notif: None,
                                data: None,
                            }))
                        });
                        f[28] |= 2;
                        f.extend(std::iter::repeat_n(0xC3, len));
                        let l = f.len() as u32;
                        f[8..12].copy_from_slice(&l.to_le_bytes());
                        hostile.push(f);
                        xfer += 1;
                    }
                }
            }
            _ => {
                for _ in 0..5 {
                    tick(&mut p, &mut hostile);
                }
            }
        }
    }
    // Well past the timeout: whatever the input did, everything ends.
    for _ in 0..(4 * TIMEOUT.as_millis() as usize) {
        tick(&mut p, &mut hostile);
        p.t.take_notifs();
        if p.i.reqs.iter().all(|q| q.result.is_some()) && p.t.jobs.is_empty() && p.t.rx.is_empty() {
            break;
        }
    }
    assert!(
        p.i.reqs.iter().all(|q| q.result.is_some()),
        "a request never finished"
    );
    if let Some(why) = &p.i.closed {
        assert_eq!(
            why, "peer closed the control stream",
            "the initiator saw a forbidden frame"
        );
    }
    if p.t.closed.is_some() {
        while let Some(n) = p.t.jobs.poll_unreserved() {
            p.t.room += n.len() as u64 + 64;
        }
    }
    p.t.take_notifs();
    if p.t.closed.is_some() || !p.t.held {
        assert_eq!(p.t.room, room, "notification room leaked");
    }
}

fuzz_target!(|data: &[u8]| run(data));
