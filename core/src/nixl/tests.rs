//! The control protocol's machines driven against each other in memory (the simulated pair of
//! `sim.rs`), and the hostile frames of `nixl/tests/hostile.rs` against them.

extern crate std;

use core::time::Duration;
use std::collections::VecDeque;
use std::{format, vec};

use super::pace;
use super::*;
use crate::nixl as proto;
use crate::wire::{self, Message, Notif};

#[path = "sim.rs"]
pub(super) mod sim;

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

#[test]
fn a_refused_writes_data_is_dropped_in_the_initiators_chunks() {
    use super::target::drain_chunks;
    let segs = [seg(0, 10), seg(100, 4), seg(200, 0), seg(300, 8)];
    let chunks: std::vec::Vec<u64> = drain_chunks(&segs, 4).collect();
    assert_eq!(
        chunks,
        [4, 4, 2, 4, 4, 4],
        "each segment from its start, none for an empty one"
    );
    let huge = [Segment::new(1, 1, 0, u64::MAX)];
    assert_eq!(
        drain_chunks(&huge, 1 << 62).count(),
        4,
        "lazily, whatever the length"
    );
}

#[test]
fn only_small_transfers_of_one_part_go_inline() {
    use super::initiator::goes_inline;
    use super::target::answers_inline;
    assert!(goes_inline(16384, 16384, 1));
    assert!(!goes_inline(16384, 16385, 1));
    assert!(!goes_inline(16384, 8, 2), "several parts never");
    assert!(!goes_inline(0, 0, 1), "a limit of 0 turns it off");
    assert!(answers_inline(16384, 16384) && !answers_inline(16384, 16385));
    assert!(!answers_inline(0, 0));
}

#[test]
fn jobs_behind_a_read_in_flight_finish_in_order_and_the_read_after() {
    let mut j: Jobs<u32, u32, FixedStore<u32, u32, 2048>> = Jobs::new(FixedStore::new(), 4096);
    j.handle_read(1, 7).unwrap();
    for k in 0..1000 {
        j.handle_notif(k).unwrap();
    }
    let got: std::vec::Vec<u32> = core::iter::from_fn(|| j.poll_finished())
        .map(|f| f.notif.unwrap())
        .collect();
    assert_eq!(got, (0..1000).collect::<std::vec::Vec<_>>());
    assert_eq!(
        (j.len(), j.slots()),
        (1, 1001),
        "finished slots wait behind the READ"
    );
    // A WRITE landing after them holds back what follows it; the READ holds back nothing.
    j.handle_write(Some(2), 8, Some(5000)).unwrap();
    j.handle_notif(5001).unwrap();
    assert_eq!(j.poll_finished(), None);
    j.handle_done(0);
    assert_eq!(
        j.poll_finished().map(|f| f.wire),
        Some(7),
        "the READ, done, goes first"
    );
    assert_eq!(j.slots(), 2, "and the finished slots with it");
    j.handle_done(0);
    let fin = |f: Option<Finished<u32>>| f.map(|f| (f.wire, f.ack, f.notif));
    assert_eq!(fin(j.poll_finished()), Some((8, true, Some(5000))));
    assert_eq!(fin(j.poll_finished()), Some((0, false, Some(5001))));
    assert!(j.is_empty() && j.slots() == 0);
}
