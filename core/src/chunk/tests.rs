extern crate std;

use std::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::ring::TCPX_REQUESTS;

const ALL_RECV_STATES: [RecvState; 6] = [
    RecvState::Free,
    RecvState::Posted,
    RecvState::NetDone,
    RecvState::Unpacking,
    RecvState::Unpacked,
    RecvState::Consumed,
];
const ALL_RECV_EVENTS: [RecvEvent; 6] = [
    RecvEvent::Post,
    RecvEvent::NetDone,
    RecvEvent::UnpackLaunched,
    RecvEvent::UnpackDone,
    RecvEvent::Consumed,
    RecvEvent::Retire,
];

#[test]
fn host_lifecycle_skips_unpack() {
    let mut c = RecvChunk::new(MemKind::Host);
    for (ev, to) in [
        (RecvEvent::Post, RecvState::Posted),
        (RecvEvent::NetDone, RecvState::NetDone),
        (RecvEvent::Consumed, RecvState::Consumed),
        (RecvEvent::Retire, RecvState::Free),
    ] {
        assert_eq!(c.apply(ev), Ok(to));
    }
    let mut c = RecvChunk::new(MemKind::Host);
    c.apply(RecvEvent::Post).unwrap();
    c.apply(RecvEvent::NetDone).unwrap();
    assert_eq!(
        c.apply(RecvEvent::UnpackLaunched),
        Err(Illegal {
            from: RecvState::NetDone,
            event: RecvEvent::UnpackLaunched
        })
    );
    assert_eq!(c.state(), RecvState::NetDone);
}

#[test]
fn device_lifecycle_requires_unpack_before_consume() {
    let mut c = RecvChunk::new(MemKind::Device);
    c.apply(RecvEvent::Post).unwrap();
    c.apply(RecvEvent::NetDone).unwrap();
    assert!(!c.is_consumable());
    assert!(c.apply(RecvEvent::Consumed).is_err());
    assert!(c.apply(RecvEvent::UnpackDone).is_err());
    assert_eq!(c.apply(RecvEvent::UnpackLaunched), Ok(RecvState::Unpacking));
    assert!(c.apply(RecvEvent::Consumed).is_err());
    assert_eq!(c.apply(RecvEvent::UnpackDone), Ok(RecvState::Unpacked));
    assert!(c.is_consumable());
    assert_eq!(c.apply(RecvEvent::Consumed), Ok(RecvState::Consumed));
    assert_eq!(c.apply(RecvEvent::Retire), Ok(RecvState::Free));
}

#[test]
fn transition_table_is_exactly_the_documented_one() {
    let mut legal = 0;
    for mem in [MemKind::Host, MemKind::Device] {
        for from in ALL_RECV_STATES {
            for ev in ALL_RECV_EVENTS {
                if recv_next(from, mem, ev).is_some() {
                    legal += 1;
                }
            }
        }
    }
    // Host: Post, NetDone, Consumed, Retire; device adds the two unpack steps.
    assert_eq!(legal, 4 + 6);
    assert_eq!(
        send_next(SendState::Posted, SendEvent::NetDone),
        Some(SendState::Done)
    );
    assert_eq!(send_next(SendState::Free, SendEvent::NetDone), None);
    assert_eq!(send_next(SendState::Done, SendEvent::NetDone), None);
}

#[test]
fn send_machine() {
    let mut c = SendChunk::new();
    assert_eq!(c.apply(SendEvent::Post), Ok(SendState::Posted));
    assert!(c.apply(SendEvent::Post).is_err());
    assert_eq!(c.apply(SendEvent::NetDone), Ok(SendState::Done));
    assert_eq!(
        c.apply(SendEvent::NetDone),
        Err(Illegal {
            from: SendState::Done,
            event: SendEvent::NetDone
        })
    );
    assert_eq!(c.apply(SendEvent::Retire), Ok(SendState::Free));
}

#[test]
fn recv_window_device_pipeline() {
    let mut w: RecvWindow<&str, TCPX_REQUESTS> = RecvWindow::new();
    assert_eq!(w.poll(), RecvAction::Idle);
    assert_eq!(w.post(100, MemKind::Device, "a"), Ok(0));
    assert_eq!(w.post(200, MemKind::Device, "b"), Ok(1));
    assert_eq!(w.poll(), RecvAction::Test { seq: 0 });
    assert_eq!(w.test_target(), Some((0, &"a")));
    assert_eq!(
        w.net_done(100),
        Ok(RecvAction::LaunchUnpack { seq: 0, slot: 0 })
    );
    // The next request can be tested while 0 is still in bounce pages.
    assert_eq!(w.test_target(), Some((1, &"b")));
    assert_eq!(w.unpack_launched(0), Ok(RecvAction::Test { seq: 1 }));
    assert_eq!(
        w.net_done(200),
        Ok(RecvAction::LaunchUnpack { seq: 1, slot: 1 })
    );
    assert_eq!(w.unpack_launched(1), Ok(RecvAction::AwaitUnpack { seq: 0 }));
    // The younger unpack finishes first: still not consumable (head is 0).
    assert_eq!(w.unpack_done(1), Ok(RecvAction::AwaitUnpack { seq: 0 }));
    assert_eq!(w.consumable(), None);
    assert!(matches!(
        w.consume(),
        Err(ChunkError::Recv {
            seq: 0,
            from: RecvState::Unpacking,
            event: RecvEvent::Consumed,
            ..
        })
    ));
    assert_eq!(w.unpack_done(0), Ok(RecvAction::Consume { seq: 0 }));
    assert_eq!(w.consume(), Ok((0, "a")));
    assert_eq!(w.poll(), RecvAction::Consume { seq: 1 });
    assert_eq!(w.consume(), Ok((1, "b")));
    assert_eq!(w.poll(), RecvAction::Idle);
    assert_eq!(w.next_seq(), 2);
}

#[test]
fn recv_window_rejects_out_of_place_events() {
    let mut w: RecvWindow<u8, 2> = RecvWindow::new();
    assert!(matches!(
        w.net_done(0),
        Err(ChunkError::Recv {
            from: RecvState::Free,
            event: RecvEvent::NetDone,
            ..
        })
    ));
    w.post(10, MemKind::Host, 0).unwrap();
    w.post(10, MemKind::Device, 1).unwrap();
    assert_eq!(w.post(10, MemKind::Host, 2), Err(Full(2)));
    let before = w.clone();
    assert_eq!(
        w.net_done(11),
        Err(ChunkError::SizeMismatch {
            seq: 0,
            posted: 10,
            received: 11
        })
    );
    assert!(w.unpack_launched(0).is_err());
    assert!(w.unpack_done(1).is_err());
    assert!(w.unpack_launched(7).is_err());
    assert!(w.consume().is_err());
    assert_eq!(w, before);
    assert_eq!(w.net_done(10), Ok(RecvAction::Consume { seq: 0 }));
    assert!(matches!(
        w.unpack_launched(0),
        Err(ChunkError::Recv {
            memory: Some(MemKind::Host),
            from: RecvState::NetDone,
            ..
        })
    ));
}

#[test]
fn recv_window_of_64_tracks_every_entry() {
    let mut w: RecvWindow<u64, 64> = RecvWindow::new();
    for round in 0..3u64 {
        for i in 0..64 {
            w.post(1, MemKind::Device, round * 64 + i).unwrap();
        }
        assert!(w.is_full());
        for _ in 0..64 {
            w.net_done(1).unwrap();
        }
        assert_eq!(w.pending_launches().count(), 64);
        // Launch and finish youngest first: nothing is consumable until the head is.
        for seq in (round * 64..round * 64 + 64).rev() {
            w.unpack_launched(seq).unwrap();
        }
        assert_eq!(w.unpacking().count(), 64);
        for seq in (round * 64 + 1..round * 64 + 64).rev() {
            assert_eq!(
                w.unpack_done(seq),
                Ok(RecvAction::AwaitUnpack { seq: round * 64 })
            );
        }
        w.unpack_done(round * 64).unwrap();
        for seq in round * 64..round * 64 + 64 {
            assert_eq!(w.poll(), RecvAction::Consume { seq });
            assert_eq!(w.consume(), Ok((seq, seq)));
        }
        assert_eq!(w.poll(), RecvAction::Idle);
    }
}

#[test]
fn send_window_in_order() {
    let mut w: SendWindow<u32, 2> = SendWindow::new();
    assert_eq!(w.poll(), SendAction::Idle);
    assert!(w.net_done(0).is_err());
    assert_eq!(w.post(5, 50), Ok(0));
    assert_eq!(w.post(6, 60), Ok(1));
    assert_eq!(w.post(7, 70), Err(Full(70)));
    assert_eq!(w.poll(), SendAction::Test { seq: 0 });
    assert!(matches!(
        w.net_done(6),
        Err(ChunkError::SizeMismatch { .. })
    ));
    assert_eq!(w.net_done(5), Ok((0, 50)));
    assert_eq!(w.net_done(6), Ok((1, 60)));
    assert_eq!(w.next_seq(), 2);
    assert!(w.is_empty());
}

// ---- property tests ----

fn recv_event() -> impl Strategy<Value = RecvEvent> {
    proptest::sample::select(&ALL_RECV_EVENTS[..])
}

proptest! {
    /// Any event sequence keeps a chunk in a state reachable for its memory kind, and a
    /// rejected event changes nothing.
    #[test]
    fn recv_chunk_random_events(
        device in any::<bool>(),
        events in proptest::collection::vec(recv_event(), 0..64),
    ) {
        let mem = if device { MemKind::Device } else { MemKind::Host };
        let mut c = RecvChunk::new(mem);
        for ev in events {
            let before = c;
            match c.apply(ev) {
                Ok(to) => {
                    prop_assert_eq!(Some(to), recv_next(before.state(), mem, ev));
                    prop_assert_eq!(c.state(), to);
                }
                Err(e) => {
                    prop_assert_eq!(c, before);
                    prop_assert_eq!(e, Illegal { from: before.state(), event: ev });
                }
            }
            if mem == MemKind::Host {
                prop_assert!(!matches!(c.state(), RecvState::Unpacking | RecvState::Unpacked));
            }
        }
    }

    #[test]
    fn send_chunk_random_events(events in proptest::collection::vec(0u8..3, 0..64)) {
        let mut c = SendChunk::new();
        for e in events {
            let ev = [SendEvent::Post, SendEvent::NetDone, SendEvent::Retire][e as usize];
            let before = c;
            match c.apply(ev) {
                Ok(to) => prop_assert_eq!(Some(to), send_next(before.state(), ev)),
                Err(_) => prop_assert_eq!(c, before),
            }
        }
    }
}

#[derive(Debug, Clone)]
enum WOp {
    Post { device: bool, len: u32 },
    NetDone { wrong_size: bool },
    Launch { back: u8 },
    Done { back: u8 },
    Consume,
    FollowPoll,
}

fn wop() -> impl Strategy<Value = WOp> {
    prop_oneof![
        3 => (any::<bool>(), 0u32..5).prop_map(|(device, len)| WOp::Post { device, len }),
        2 => any::<bool>().prop_map(|wrong_size| WOp::NetDone { wrong_size }),
        2 => (0u8..6).prop_map(|back| WOp::Launch { back }),
        2 => (0u8..6).prop_map(|back| WOp::Done { back }),
        2 => Just(WOp::Consume),
        2 => Just(WOp::FollowPoll),
    ]
}

/// Structural invariants of a receive window.
fn check_invariants(w: &RecvWindow<u64, 4>) -> Result<(), TestCaseError> {
    prop_assert!(w.len() <= 4);
    let mut seen_posted = false;
    let (mut launch, mut unpacking) = (Vec::new(), Vec::new());
    for (seq, e) in w.iter() {
        prop_assert_eq!(*e.payload(), seq, "payload travels with its seq");
        prop_assert!(!matches!(e.state(), RecvState::Free | RecvState::Consumed));
        if e.memory() == MemKind::Host {
            prop_assert!(!matches!(
                e.state(),
                RecvState::Unpacking | RecvState::Unpacked
            ));
        }
        // Posted entries form a suffix: the network completes in posting order.
        if e.state() == RecvState::Posted {
            seen_posted = true;
        } else {
            prop_assert!(!seen_posted);
        }
        if e.state() == RecvState::NetDone && e.memory() == MemKind::Device {
            launch.push(seq);
        }
        if e.state() == RecvState::Unpacking {
            unpacking.push(seq);
        }
    }
    // The bookkeeping masks agree with the states.
    let got: Vec<u64> = w.pending_launches().map(|(s, _)| s).collect();
    prop_assert_eq!(got, launch);
    let got: Vec<u64> = w.unpacking().map(|(s, _)| s).collect();
    prop_assert_eq!(got, unpacking);
    Ok(())
}

proptest! {
    /// Random (mostly illegal) event streams: the window never breaks its invariants,
    /// errors leave it unchanged, and chunks are consumed exactly in posting order.
    #[test]
    fn recv_window_random_events(ops in proptest::collection::vec(wop(), 0..300)) {
        let mut w: RecvWindow<u64, 4> = RecvWindow::new();
        // (seq, payload) in consumption order; payload was the seq at post time.
        let mut consumed: Vec<(u64, u64)> = Vec::new();
        for op in ops {
            let before = w.clone();
            let head = w.next_seq().saturating_sub(w.len() as u64);
            let res: Result<(), ChunkError> = match op {
                WOp::Post { device, len } => {
                    let mem = if device { MemKind::Device } else { MemKind::Host };
                    match w.post(len, mem, w.next_seq()) {
                        Ok(seq) => { prop_assert_eq!(seq, before.next_seq()); Ok(()) }
                        Err(Full(_)) => { prop_assert!(before.is_full()); prop_assert_eq!(&w, &before); Ok(()) }
                    }
                }
                WOp::NetDone { wrong_size } => {
                    let len = w.test_target().map(|(s, _)| w.get(s).unwrap().len()).unwrap_or(0);
                    w.net_done(len as usize + usize::from(wrong_size)).map(|_| ())
                }
                WOp::Launch { back } => w.unpack_launched(head + u64::from(back)).map(|_| ()),
                WOp::Done { back } => w.unpack_done(head + u64::from(back)).map(|_| ()),
                WOp::Consume => w.consume().map(|sp| consumed.push(sp)),
                WOp::FollowPoll => match w.poll() {
                    RecvAction::Consume { .. } => w.consume().map(|sp| consumed.push(sp)),
                    RecvAction::LaunchUnpack { seq, slot } => {
                        prop_assert_eq!(slot as u64, seq % 16);
                        w.unpack_launched(seq).map(|_| ())
                    }
                    RecvAction::Test { seq } => {
                        let len = w.get(seq).unwrap().len();
                        w.net_done(len as usize).map(|_| ())
                    }
                    RecvAction::AwaitUnpack { seq } => w.unpack_done(seq).map(|_| ()),
                    RecvAction::Idle => Ok(()),
                },
            };
            if res.is_err() {
                prop_assert_eq!(&w, &before);
            }
            check_invariants(&w)?;
        }
        // Drain by following poll: every legal path ends with all chunks consumed.
        let posted = w.next_seq();
        for _ in 0..100 {
            match w.poll() {
                RecvAction::Consume { .. } => consumed.push(w.consume().unwrap()),
                RecvAction::LaunchUnpack { seq, .. } => { w.unpack_launched(seq).unwrap(); }
                RecvAction::Test { seq } => {
                    let len = w.get(seq).unwrap().len();
                    w.net_done(len as usize).unwrap();
                }
                RecvAction::AwaitUnpack { seq } => { w.unpack_done(seq).unwrap(); }
                RecvAction::Idle => break,
            }
        }
        prop_assert!(w.is_empty());
        let want: Vec<(u64, u64)> = (0..posted).map(|s| (s, s)).collect();
        prop_assert_eq!(consumed, want);
    }

    /// Send windows complete in posting order; wrong sizes and empty windows are rejected
    /// without change.
    #[test]
    fn send_window_random_events(ops in proptest::collection::vec(0u8..4, 0..300)) {
        let mut w: SendWindow<u64, 3> = SendWindow::new();
        let mut done = 0u64;
        for op in ops {
            let before = w.clone();
            match op {
                0 | 1 => {
                    let r = w.post(7, w.next_seq());
                    prop_assert_eq!(r.is_err(), before.is_full());
                }
                2 => match w.net_done(7) {
                    Ok((seq, p)) => { prop_assert_eq!(seq, done); prop_assert_eq!(p, seq); done += 1; }
                    Err(_) => { prop_assert!(before.is_empty()); prop_assert_eq!(&w, &before); }
                },
                _ => {
                    prop_assert!(w.net_done(8).is_err());
                    prop_assert_eq!(&w, &before);
                }
            }
            prop_assert!(w.len() <= 3);
            prop_assert!(w.iter().all(|(_, e)| e.state() == SendState::Posted));
            prop_assert_eq!(w.next_seq(), done + w.len() as u64);
        }
    }
}
