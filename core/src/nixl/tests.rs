//! The control protocol's machines driven against each other in memory (the simulated pair of
//! `sim.rs`), and the hostile frames of `nixl/tests/hostile.rs` against them.

extern crate std;

use core::time::Duration;
use std::borrow::ToOwned;
use std::collections::VecDeque;
use std::string::{String, ToString};
use std::vec::Vec;
use std::{format, vec};

use super::pace;
use super::*;
use crate::nixl as proto;
use crate::wire::{self, Ack, Message, Notif, ReadAnnounce, ReadRequest};

#[path = "sim.rs"]
mod sim;

use sim::*;

#[test]
fn writes_and_reads_of_many_parts_complete_with_parts_waiting_for_room() {
    let mut p = Pair::new();
    let d = &mut p.data;
    let w = p.i.post(
        Op::Write,
        vec![vec![seg(0, 100)], vec![seg(100, 200)], vec![seg(300, 50)]],
        false,
        Some(b"w"),
        d,
    );
    let r = p.i.post(
        Op::Read,
        vec![vec![seg(0, 64)], vec![seg(64, 64), seg(512, 8)]],
        false,
        Some(b"r"),
        d,
    );
    // Four places: the READ's second part waits.
    assert_eq!((p.i.listed.len(), p.i.waiting.len()), (4, 1));
    assert!(
        !p.i.reqs[w].flight.notif_in_announce(),
        "several parts: a Notif after them"
    );
    p.settle();
    assert_eq!(p.result(w), &Ok(()));
    assert_eq!(p.result(r), &Ok(()));
    assert_eq!(p.t.acked, [1, 2, 3]);
    assert_eq!(p.t.take_notifs(), [b"w".to_vec(), b"r".to_vec()]);
    assert!(p.t.jobs.is_empty() && p.i.listed.is_empty() && p.t.closed.is_none());
    // A repost reuses the flight.
    let q = &mut p.i.reqs[w];
    assert!(q.flight.is_over());
    q.flight
        .restart(100, false, None, |_| panic!("nothing in flight"));
    assert_eq!((q.flight.sent(), q.flight.is_done()), (0, false));
}

#[test]
fn inline_writes_and_reads_move_their_bytes_in_the_frames() {
    let mut p = Pair::new();
    let w = p.i.post(
        Op::Write,
        vec![vec![seg(10, 100), seg(1000, 20)]],
        true,
        Some(b"n"),
        &mut p.data,
    );
    assert!(p.i.reqs[w].flight.notif_in_announce());
    p.settle();
    assert_eq!(p.result(w), &Ok(()));
    let sent = p.i.reqs[w].bytes.clone();
    assert_eq!(&p.t.mem[10..110], &sent[..100]);
    assert_eq!(&p.t.mem[1000..1020], &sent[100..]);
    let r = p.i.post(
        Op::Read,
        vec![vec![seg(10, 100), seg(1000, 20)]],
        true,
        None,
        &mut p.data,
    );
    p.settle();
    assert_eq!(p.result(r), &Ok(()));
    assert_eq!(
        p.i.reqs[r].bytes, sent,
        "the READ got the bytes the WRITE left"
    );
    assert!(
        p.data.done.is_empty(),
        "nothing went through the data session"
    );
    assert_eq!(p.t.take_notifs(), [b"n".to_vec()]);
}

#[test]
fn notifications_and_acks_follow_their_data_in_arrival_order() {
    let mut p = Pair::new();
    p.data.paused = true;
    let a = p.i.post(
        Op::Write,
        vec![vec![seg(0, 4096)]],
        false,
        Some(b"a"),
        &mut p.data,
    );
    let b = p.i.post(
        Op::Write,
        vec![vec![seg(8192, 10)]],
        true,
        Some(b"b"),
        &mut p.data,
    );
    p.i.out
        .push_back(frame(&Message::Notif(Notif { msg: b"c" })));
    // A READ still sending holds back nothing, even while the WRITE lands.
    for _ in 0..20 {
        p.tick();
    }
    assert_eq!(
        &p.t.mem[8192..8202],
        &p.i.reqs[b].bytes[..],
        "inline data written on arrival"
    );
    assert!(
        p.t.acked.is_empty() && p.t.delivered.is_empty(),
        "nothing overtakes the WRITE still landing"
    );
    assert_eq!(p.t.jobs.len(), 3);
    p.data.paused = false;
    p.settle();
    assert_eq!(p.t.acked, [1, 2]);
    assert_eq!(
        p.t.take_notifs(),
        [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!((p.result(a), p.result(b)), (&Ok(()), &Ok(())));
}

#[test]
fn a_full_notification_queue_holds_the_peer_back_with_keepalives() {
    let mut p = Pair::new();
    p.t.room = 2 * (64 + 50);
    for _ in 0..3 {
        p.i.out
            .push_back(frame(&Message::Notif(Notif { msg: &[7; 50] })));
    }
    let w =
        p.i.post(Op::Write, vec![vec![seg(0, 8)]], true, None, &mut p.data);
    for _ in 0..30 {
        p.tick();
    }
    assert!(p.t.held, "the third notification waits for room");
    assert_eq!(p.t.waiting_frames(), 2, "and so does everything after it");
    assert!(p.t.closed.is_none() && p.i.reqs[w].result.is_none());
    let last_frame = Duration::ZERO;
    assert!(
        pace::keepalive_due(p.t.held, last_frame, p.now, TIMEOUT),
        "a held conn says it is alive"
    );
    assert_eq!(p.t.take_notifs().len(), 2);
    p.settle();
    assert_eq!(p.t.take_notifs().len(), 1);
    assert_eq!(p.result(w), &Ok(()));
}

#[test]
fn inline_writes_past_the_job_bound_wait_behind_a_write_landing() {
    let mut p = Pair::new();
    p.t = Target::new(3);
    p.data.paused = true;
    p.i.max_outstanding = 16;
    p.i.post(
        Op::Write,
        vec![vec![seg(0, 4096)]],
        false,
        None,
        &mut p.data,
    );
    for k in 0..4 {
        p.i.post(
            Op::Write,
            vec![vec![seg(8192 + k, 1)]],
            true,
            None,
            &mut p.data,
        );
    }
    for _ in 0..5 {
        p.tick();
    }
    assert!(p.t.jobs.is_full() && p.t.held);
    assert_eq!((p.t.jobs.len(), p.t.waiting_frames()), (3, 2));
    p.data.paused = false;
    p.settle();
    assert_eq!(p.t.acked, [1, 2, 3, 4, 5]);
}

#[test]
fn a_refused_request_fails_alone_while_others_complete() {
    let mut p = Pair::new();
    let d = &mut p.data;
    let bad_key = p.i.post(
        Op::Read,
        vec![vec![Segment::new(REGION, KEY ^ 1, BASE, 8)]],
        false,
        None,
        d,
    );
    let good =
        p.i.post(Op::Write, vec![vec![seg(0, 64)]], false, Some(b"g"), d);
    let outside = p.i.post(
        Op::Write,
        vec![vec![seg(0, 8)], vec![seg(LEN - 4, 8)]],
        false,
        Some(b"x"),
        d,
    );
    let unknown = p.i.post(
        Op::Write,
        vec![vec![Segment::new(99, KEY, BASE, 8)]],
        true,
        None,
        d,
    );
    p.settle();
    assert_eq!(p.result(good), &Ok(()));
    assert_eq!(
        p.result(bad_key),
        &Err((-2, "part 0 of 1: segment 0: wrong key".into()))
    );
    assert_eq!(
        p.result(outside),
        &Err((
            -2,
            "part 1 of 2: segment 0: range outside the registration".into()
        ))
    );
    assert_eq!(
        p.result(unknown),
        &Err((-2, "part 0 of 1: segment 0: unknown region".into()))
    );
    // The refused WRITE's data was received and dropped: the session stays paired.
    assert!(p
        .data
        .sends
        .iter()
        .chain(&p.data.recvs)
        .all(VecDeque::is_empty));
    assert_eq!(
        p.t.take_notifs(),
        [b"g".to_vec()],
        "a refused WRITE's notification never comes"
    );
    assert_eq!(p.t.room, 1 << 20, "its room went back");
    let again =
        p.i.post(Op::Read, vec![vec![seg(0, 64)]], false, None, &mut p.data);
    p.settle();
    assert_eq!(p.result(again), &Ok(()));
    assert!(p.t.closed.is_none() && p.i.closed.is_none());
}

#[test]
fn losing_the_peer_mid_transfer_fails_both_sides_after_the_timeout() {
    let mut p = Pair::new();
    let w = p.i.post(
        Op::Write,
        vec![vec![seg(0, 64)]],
        false,
        Some(b"n"),
        &mut p.data,
    );
    // The initiator vanishes once its announce is out: its data never comes.
    p.data.dead = true;
    p.tick();
    let mut closed_at = None;
    for _ in 0..(TIMEOUT.as_millis() as usize + 10) {
        p.now += MS;
        p.t.pass(p.now, &mut p.data);
        if p.t.closed.is_some() && closed_at.is_none() {
            closed_at = Some(p.now);
        }
    }
    let closed_at = closed_at.expect("the target gave up on announced data that never came");
    assert!(closed_at > TIMEOUT && closed_at <= TIMEOUT + 3 * MS);
    let jobs = &mut p.t.jobs;
    assert_eq!(
        jobs.poll_unreserved(),
        Some(b"n".to_vec()),
        "its notification's room goes back"
    );
    assert_eq!(jobs.poll_unreserved(), None);
    assert!(
        jobs.poll_finished().is_none(),
        "nothing is delivered for it"
    );
    // The initiator's check fails the transfer once the peer is silent past its timeout.
    for _ in 0..(TIMEOUT.as_millis() as usize + 2) {
        p.now += MS;
        p.i.pass(p.now, &mut p.data);
    }
    assert_eq!(p.result(w), &Err((-7, "no progress from the peer".into())));
}

#[test]
fn a_released_read_still_posts_its_receives_and_copies_nothing() {
    let mut p = Pair::new();
    let r =
        p.i.post(Op::Read, vec![vec![seg(0, 64)]], false, None, &mut p.data);
    let i =
        p.i.post(Op::Read, vec![vec![seg(0, 64)]], true, None, &mut p.data);
    p.i.reqs[r]
        .flight
        .handle_release(|_| panic!("nothing posted yet"));
    p.i.reqs[i]
        .flight
        .handle_release(|_| panic!("nothing posted yet"));
    p.i.reqs[r].result = Some(Ok(()));
    p.i.reqs[i].result = Some(Ok(()));
    for _ in 0..5 {
        p.tick();
    }
    // The announce came: its receives were posted (and abandoned), the pairing holds.
    assert!(p.i.listed.is_empty());
    assert!(p
        .data
        .sends
        .iter()
        .chain(&p.data.recvs)
        .all(VecDeque::is_empty));
    assert!(
        p.i.reqs[i].bytes.is_empty(),
        "a released READ's memory is not written"
    );
    let next =
        p.i.post(Op::Read, vec![vec![seg(128, 64)]], false, None, &mut p.data);
    p.settle();
    assert_eq!(p.result(next), &Ok(()));
}

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
    let r = Some(RegionView {
        key: 1,
        base: 100,
        len: 50,
    });
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
fn acks_wait_only_for_earlier_writes_still_landing() {
    let mut j: Jobs<u32, u8, heapless::Deque<Job<u32, u8>, 8>> =
        Jobs::new(heapless::Deque::new(), 8);
    j.handle_read(1, 100).unwrap();
    j.handle_write(Some(2), 101, Some(b'a')).unwrap();
    j.handle_write(None, 102, None).unwrap();
    j.handle_notif(b'n').unwrap();
    // The READ still sending holds back nothing; the WRITE landing holds back what follows.
    assert_eq!(j.poll_finished(), None);
    j.handle_done(1);
    let fin = |wire, ack, notif| Some(Finished { wire, ack, notif });
    assert_eq!(j.poll_finished(), fin(101, true, Some(b'a')));
    assert_eq!(j.poll_finished(), fin(102, true, None));
    assert_eq!(j.poll_finished(), fin(0, false, Some(b'n')));
    assert_eq!(j.poll_finished(), None);
    assert_eq!(j.len(), 1, "the READ is still sending");
    // Slots behind a job still in flight wait until it finishes, then go.
    assert_eq!(j.slots(), 4);
    j.handle_done(0);
    assert_eq!(j.poll_finished(), fin(100, false, None));
    assert!(j.is_empty() && j.slots() == 0);
}

#[test]
fn a_fixed_job_store_says_when_it_is_full() {
    let mut j: Jobs<u32, u8, heapless::Deque<Job<u32, u8>, 2>> =
        Jobs::new(heapless::Deque::new(), 8);
    j.handle_notif(1).unwrap();
    j.handle_notif(2).unwrap();
    assert_eq!(j.handle_notif(3), Err(target::Full));
    assert_eq!(j.len(), 2);
}

#[test]
fn error_text_is_cut_at_a_character_boundary() {
    assert_eq!(error_text("short"), "short");
    let ascii = "x".repeat(wire::MAX_ERROR_TEXT + 10);
    assert_eq!(error_text(&ascii).len(), wire::MAX_ERROR_TEXT);
    // A two-byte character straddling the limit is left out whole.
    let straddle = format!("{}é", "x".repeat(wire::MAX_ERROR_TEXT - 1));
    assert_eq!(error_text(&straddle), &straddle[..wire::MAX_ERROR_TEXT - 1]);
}

#[test]
fn refusal_logging_is_bounded() {
    let lines = |n: u64| (1..=n).filter(|&k| log_refusal(k)).count();
    assert_eq!(lines(4), 4, "the first refusals are all logged");
    assert_eq!(lines(10_000), 15);
    assert_eq!(lines(1 << 20), 4 + 18, "logarithmic in the count");
    assert!(log_refusal(1024) && !log_refusal(1025));
}
