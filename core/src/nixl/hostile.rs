//! Hostile peers against the control protocol's machines: every kind of frame
//! `nixl/tests/hostile.rs` sends a real backend (unknown region, wrong key, ranges outside or
//! overflowing, wrong lengths, frames out of order, duplicate answers, answers for unknown
//! requests, frames a role never takes, floods, a peer that stops mid-frame or never sends its
//! data), each met by its specific refusal or by closing the conn, with nothing else changed.

extern crate std;

use core::time::Duration;
use std::borrow::ToOwned;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use super::pace;
use super::*;
use crate::wire::{self, Ack, Message, Notif, ReadAnnounce, ReadData, ReadRequest};

use super::tests::sim::*;

/// A flight of two READ parts sent (wire ids 10 and 11), the first offering 64 bytes inline.
fn two_parts() -> Flight<u32, Reason, [Part<u32>; 2]> {
    let mut f = Flight::new(Op::Read, [Part::default(); 2]);
    f.restart(10, false, Some(64), |_| {});
    f.handle_sent();
    f.handle_sent();
    f
}

#[test]
fn hostile_answers_are_violations_and_change_nothing_else() {
    fn text<T: core::fmt::Debug>(r: Result<T, Violation>) -> String {
        r.unwrap_err().to_string()
    }
    let mut f = two_parts();
    let parts = f.parts().to_vec();
    assert_eq!(
        text(f.handle_ack(12, 0, render)),
        "message for transfer 12, which is not a part of the current post (10..12)"
    );
    assert_eq!(
        text(f.check_read_announce(9)),
        "message for transfer 9, which is not a part of the current post (10..12)"
    );
    assert_eq!(
        text(f.handle_read_data(10, 63, render)),
        "ReadData of 63 bytes for a READ of 64"
    );
    assert_eq!(
        f.failure().unwrap().0,
        -5,
        "a wrong size fails the READ too"
    );
    assert_eq!(f.parts(), &parts[..], "and answers no part");
    let mut g = two_parts();
    let k = g.check_read_announce(11).unwrap();
    assert_eq!(g.handle_read_posted(k, 5), None);
    assert_eq!(text(g.check_read_announce(11)), "second answer to 11");
    assert_eq!(
        text(g.handle_error(11, 2, "no", render)),
        "second answer to 11"
    );
    assert_eq!(
        text(g.handle_read_data(11, 64, render)),
        "ReadData of 64 bytes for a READ of 64",
        "a second answer, inline"
    );
    let mut h = Flight::<u32, Reason, [Part<u32>; 1]>::new(Op::Write, [Part::default()]);
    h.restart(3, false, Some(8), |_| {});
    assert!(!h.offers_inline(), "only READs offer to take data inline");
    h.handle_sent();
    assert_eq!(
        text(h.handle_read_data(3, 8, render)),
        "ReadData of 8 bytes for a READ that did not offer inline, of 0"
    );
    let mut h = Flight::<u32, Reason, [Part<u32>; 1]>::new(Op::Write, [Part::default()]);
    h.restart(3, false, None, |_| {});
    h.handle_sent();
    assert_eq!(
        text(h.handle_ack(3, -2, render)),
        "negative Ack -2 for 3: not this wire version's protocol"
    );
    assert_eq!(
        h.failure(),
        Some(&(-2, "peer refused the WRITE (-2)".into()))
    );
    assert!(!h.parts()[0].answered);
}

#[test]
fn frames_a_role_never_takes_are_violations() {
    let max = 16;
    let v = |initiator, m: Message<'_>| inbound(initiator, m, max).unwrap_err().to_string();
    let segs = [seg(0, 8)];
    let wa = WriteAnnounce {
        xfer: 1,
        segments: &segs,
        notif: None,
        data: None,
    };
    assert_eq!(
        v(true, Message::WriteAnnounce(wa)),
        "unexpected WriteAnnounce on a initiator stream"
    );
    assert_eq!(
        v(false, Message::Ack(Ack { xfer: 1, status: 0 })),
        "unexpected Ack on a target stream"
    );
    assert_eq!(
        v(false, Message::ReadAnnounce(ReadAnnounce { xfer: 1 })),
        "unexpected ReadAnnounce on a target stream"
    );
    assert_eq!(
        v(false, Message::Keepalive(wire::Keepalive)),
        "unexpected Keepalive on a target stream"
    );
    assert_eq!(
        v(true, Message::Notif(Notif { msg: b"x" })),
        "unexpected Notif on a initiator stream"
    );
    let long = [0u8; 17];
    assert_eq!(
        v(false, Message::Notif(Notif { msg: &long })),
        "a notification of 17 bytes, above the 16 this agent told the peer it takes"
    );
    let wa = WriteAnnounce {
        notif: Some(&long),
        ..wa
    };
    assert!(v(false, Message::WriteAnnounce(wa)).starts_with("a notification of 17"));
    let inline = WriteAnnounce {
        data: Some(b"12345678"),
        notif: None,
        ..wa
    };
    assert_eq!(
        inbound(false, Message::WriteAnnounce(inline), max),
        Ok(Inbound::InlineWrite(inline))
    );
}

#[test]
fn hostile_frames_against_the_target_are_refused_or_close_it() {
    let mut p = Pair::new();
    let bad = |s: Segment| {
        frame(&Message::ReadRequest(ReadRequest {
            xfer: 40,
            segments: &[s],
            inline_ok: true,
        }))
    };
    for s in [
        Segment::new(REGION + 1, KEY, BASE, 8),
        Segment::new(REGION, KEY + 1, BASE, 8),
        Segment::new(REGION, KEY, BASE - 1, 8),
        Segment::new(REGION, KEY, BASE + LEN - 7, 8),
        Segment::new(REGION, KEY, u64::MAX - 3, 8),
    ] {
        // Emitted with an overflowing range patched in by hand (the emitter refuses it).
        let f = if s.end().is_none() {
            let mut f = bad(Segment::new(REGION, KEY, 0, 8));
            let at = f.len() - 16;
            f[at..at + 8].copy_from_slice(&s.addr().to_le_bytes());
            f
        } else {
            bad(s)
        };
        p.t.inbox.push_back(f);
    }
    p.t.pass(MS, &mut p.data);
    let texts: Vec<String> =
        p.t.out
            .drain(..)
            .map(|f| match wire::parse(&f).unwrap() {
                Message::Error(e) => e.text.to_owned(),
                m => panic!("expected an Error, got {m:?}"),
            })
            .collect();
    // The overflowing range is a malformed frame: the conn closes without an answer.
    assert_eq!(
        texts,
        [
            "segment 0: unknown region",
            "segment 0: wrong key",
            "segment 0: range outside the registration",
            "segment 0: range outside the registration",
        ]
    );
    assert!(p
        .t
        .closed
        .as_deref()
        .unwrap()
        .starts_with("bad control frame"));
    assert!(p.t.jobs.is_empty() && p.data.done.is_empty());
    // An inline WRITE whose data disagrees with its segments writes nothing and closes.
    let mut t = Target::new(8);
    let mut f = frame(&Message::WriteAnnounce(WriteAnnounce {
        xfer: 1,
        segments: &[seg(0, 4)],
        notif: None,
        data: Some(b"abcd"),
    }));
    let n = f.len();
    f[n - 4 - 32 + 24..n - 4 - 32 + 32].copy_from_slice(&5u64.to_le_bytes());
    t.inbox.push_back(f);
    t.pass(MS, &mut Data::default());
    assert!(t.closed.is_some(), "the frame is refused whole");
    assert!(t.mem.iter().all(|&b| b == 0) && t.out.is_empty());
}

#[test]
fn segment_checks_name_the_segment_and_the_fault() {
    let r = RegionView::new(1, 100, 50);
    let refused = |i, s: Segment, r| check_segment(i, &s, r).unwrap_err().to_string();
    assert_eq!(check_segment(0, &Segment::new(0, 1, 110, 40), r), Ok(10));
    assert_eq!(
        refused(3, Segment::new(0, 1, 100, 8), None),
        "segment 3: unknown region"
    );
    assert_eq!(
        refused(0, Segment::new(0, 2, 100, 8), r),
        "segment 0: wrong key"
    );
    assert_eq!(
        refused(1, Segment::new(0, 1, 99, 8), r),
        "segment 1: range outside the registration"
    );
    assert_eq!(
        refused(1, Segment::new(0, 1, 110, 41), r),
        "segment 1: range outside the registration"
    );
    assert_eq!(
        refused(1, Segment::new(0, 1, u64::MAX, 2), r),
        "segment 1: range outside the registration"
    );
}

#[test]
fn answers_for_unknown_requests_close_the_initiator() {
    for (m, why) in [
        (
            Message::Ack(Ack {
                xfer: 99,
                status: 0,
            }),
            "Ack for unknown 99",
        ),
        (
            Message::ReadAnnounce(ReadAnnounce { xfer: 99 }),
            "ReadAnnounce for unknown 99",
        ),
        (
            Message::ReadData(ReadData {
                xfer: 99,
                data: b"x",
            }),
            "ReadData for unknown 99",
        ),
    ] {
        let mut p = Pair::new();
        let r =
            p.i.post(Op::Read, vec![vec![seg(0, 8)]], false, None, &mut p.data);
        p.i.inbox.push_back(frame(&m));
        p.i.pass(MS, &mut p.data);
        assert_eq!(p.i.closed.as_deref(), Some(why));
        // Whatever was waiting on the conn fails with it.
        p.i.pass(2 * MS, &mut p.data);
        assert_eq!(p.result(r), &Err((-8, why.to_owned())));
    }
    // An Error about no part in flight is an answer to a released one: the conn stays.
    let mut p = Pair::new();
    let e = wire::ErrorMsg {
        code: 2,
        xfer: 99,
        text: "late",
    };
    p.i.inbox.push_back(frame(&Message::Error(e)));
    p.i.pass(MS, &mut p.data);
    assert!(p.i.closed.is_none());
}

#[test]
fn a_flood_of_notifications_reaches_the_application_once_in_order() {
    let mut p = Pair::new();
    for k in 0..10_000u32 {
        p.i.out.push_back(frame(&Message::Notif(Notif {
            msg: &k.to_le_bytes(),
        })));
    }
    let mut got = Vec::new();
    for _ in 0..1000 {
        p.tick();
        got.extend(p.t.take_notifs());
        if got.len() == 10_000 {
            break;
        }
    }
    let want: Vec<Vec<u8>> = (0..10_000u32).map(|k| k.to_le_bytes().to_vec()).collect();
    assert_eq!(got, want);
    assert!(p.t.closed.is_none() && p.t.jobs.is_empty());
}

#[test]
fn a_flood_of_refused_reads_is_answered_and_the_conn_keeps_serving() {
    let mut p = Pair::new();
    for k in 0..10_000u64 {
        p.t.inbox
            .push_back(frame(&Message::ReadRequest(ReadRequest {
                xfer: 1_000_000 + k,
                segments: &[Segment::new(REGION, KEY ^ (k + 1), BASE, 8)],
                inline_ok: k % 2 == 0,
            })));
    }
    let mut refused = 0;
    for n in 1..100 {
        p.t.pass(n * MS, &mut p.data);
        for f in p.t.out.drain(..) {
            match wire::parse(&f).unwrap() {
                Message::Error(e) => {
                    assert_eq!(e.text, "segment 0: wrong key");
                    refused += 1;
                }
                m => panic!("expected an Error, got {m:?}"),
            }
        }
    }
    assert_eq!(refused, 10_000);
    assert!(p.t.closed.is_none());
    p.data = Data::default();
    p.t.jobs = Jobs::new(FixedStore::new(), 8);
    p.now = 100 * MS;
    let r =
        p.i.post(Op::Read, vec![vec![seg(0, 64)]], false, None, &mut p.data);
    p.settle();
    assert_eq!(p.result(r), &Ok(()));
}

#[test]
fn inline_writes_flooding_behind_a_write_that_never_lands_wait_then_the_conn_closes() {
    let mut p = Pair::new();
    p.t = Target::new(4);
    let room = p.t.room;
    p.data.paused = true;
    p.i.max_outstanding = 64;
    p.i.post(
        Op::Write,
        vec![vec![seg(0, 4096)]],
        false,
        Some(b"w"),
        &mut p.data,
    );
    for k in 0..10 {
        p.i.post(
            Op::Write,
            vec![vec![seg(8192 + k, 1)]],
            true,
            Some(b"i"),
            &mut p.data,
        );
    }
    let mut closed_at = None;
    let mut last_frame = Duration::ZERO;
    let mut keepalives = 0;
    while closed_at.is_none() && p.now < 3 * TIMEOUT {
        p.tick();
        // Holding the peer back, the target may say it is alive, and nothing else.
        assert!(p.t.acked.is_empty() && p.t.delivered.is_empty());
        if pace::keepalive_due(p.t.held, last_frame, p.now, TIMEOUT) {
            last_frame = p.now;
            keepalives += 1;
        }
        if p.t.closed.is_some() {
            closed_at = Some(p.now);
        }
    }
    assert_eq!(
        p.t.jobs.len(),
        4,
        "the WRITE and three inline WRITEs: the bound"
    );
    let closed_at = closed_at.expect("the conn stayed open past the timeout");
    assert!(closed_at > TIMEOUT && closed_at < TIMEOUT + 5 * MS);
    assert!(
        keepalives >= 3,
        "a keepalive every quarter of the timeout: {keepalives}"
    );
    // The waiting WRITEs' notifications reserved room; the dead conn gives it back.
    while let Some(n) = p.t.jobs.poll_unreserved() {
        p.t.room += n.len() as u64 + 64;
    }
    assert_eq!(p.t.room, room);
    // The initiator sees the conn close, and every request fails with it.
    p.tick();
    assert!(p.i.reqs.iter().all(|q| q.result.is_some()));
}

#[test]
fn a_peer_that_stops_mid_frame_is_given_up_after_the_timeout() {
    let mut p = Pair::new();
    let f = frame(&Message::Notif(Notif { msg: b"half" }));
    p.t.inbox.push_back(f[..7].to_vec());
    let mut n = 0;
    while p.t.closed.is_none() {
        n += 1;
        p.t.pass(n * MS, &mut p.data);
        assert!(n < 200, "never closed");
    }
    assert_eq!(p.t.stall.since(), Some(MS));
    assert!(n * MS > TIMEOUT && n * MS <= TIMEOUT + 2 * MS);
    assert_eq!(p.t.closed.as_deref(), Some("no progress from the peer"));
    // The rest of the frame, in time, is progress.
    let mut p = Pair::new();
    p.t.inbox.push_back(f[..7].to_vec());
    p.t.pass(MS, &mut p.data);
    p.t.inbox.push_back(f[7..].to_vec());
    p.t.pass(TIMEOUT, &mut p.data);
    assert!(p.t.closed.is_none());
    assert_eq!(p.t.take_notifs(), [b"half".to_vec()]);
}
