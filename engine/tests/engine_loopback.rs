//! The engine end to end over the embedded `tcpxsock` on loopback, both sessions in one
//! process (threads): data integrity, both directions, bad arguments, handshake timeout.

use std::time::Duration;

use tcpx::engine::{Config, Direction, Memory, Progress, Segment, Session};
use tcpx::Error;

mod common;

fn loopback_only() {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..common::engine::tcpx_mode_from_env(Default::default())
    });
}

fn cfg() -> Config {
    Config {
        channels: 3,
        chunk_bytes: 256 * 1024,
        timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

/// Two connected sessions over tcpxsock on `lo`.
fn pair(cfg: Config) -> (Session, Session) {
    common::engine::loopback_pair(Default::default(), cfg)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Segments over one region: odd sizes that cross chunk boundaries, one empty.
fn segments(mem: tcpx::MemId, lens: &[u64]) -> Vec<Segment> {
    common::engine::segments(mem, lens, 7)
}

fn drive_both(a: &mut Session, ax: tcpx::XferId, b: &mut Session, bx: tcpx::XferId) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut ad, mut bd) = (false, false);
    while !(ad && bd) {
        assert!(
            std::time::Instant::now() < deadline,
            "transfer did not finish"
        );
        if !ad {
            ad = matches!(a.poll(ax).unwrap(), Progress::Done { .. });
        }
        if !bd {
            bd = matches!(b.poll(bx).unwrap(), Progress::Done { .. });
        }
    }
}

#[test]
fn many_segments_cross_chunk_boundaries() {
    let (mut a, mut b) = pair(cfg());
    let lens = [
        1u64,
        4095,
        4096,
        4097,
        256 * 1024,
        256 * 1024 + 1,
        0,
        3 << 20,
        777_777,
    ];
    let total: usize = lens.iter().map(|&l| l as usize + 7).sum();
    let mut src = pattern(total, 1);
    let mut dst = vec![0u8; total];
    // SAFETY: both buffers outlive the sessions' use of them (deregistered below).
    let (sm, dm) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), src.len(), Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), dst.len(), Memory::Host)
                .unwrap(),
        )
    };
    for round in 0..3 {
        dst.iter_mut().for_each(|x| *x = 0);
        let ax = a.post(Direction::Send, &segments(sm, &lens)).unwrap();
        let bx = b.post(Direction::Recv, &segments(dm, &lens)).unwrap();
        drive_both(&mut a, ax, &mut b, bx);
        for s in segments(dm, &lens) {
            let r = s.offset as usize..(s.offset + s.len) as usize;
            assert_eq!(
                dst[r.clone()],
                src[r],
                "round {round}, segment at {}",
                s.offset
            );
        }
        // The 7-byte gaps between segments were never written.
        for s in segments(dm, &lens) {
            let gap = (s.offset + s.len) as usize..(s.offset + s.len + 7) as usize;
            assert!(
                dst[gap].iter().all(|&x| x == 0),
                "gap after {} written",
                s.offset
            );
        }
        assert_eq!(
            a.status(ax).unwrap(),
            Progress::Done {
                bytes: lens.iter().sum()
            }
        );
        a.release(ax).unwrap();
        b.release(bx).unwrap();
        assert!(a.status(ax).is_err(), "a released id is stale");
    }
    a.deregister(sm).unwrap();
    b.deregister(dm).unwrap();
}

#[test]
fn both_directions_at_once() {
    let (mut a, mut b) = pair(cfg());
    let n = 5 << 20;
    let (mut a_src, mut a_dst) = (pattern(n, 2), vec![0u8; n]);
    let (mut b_src, mut b_dst) = (pattern(n, 3), vec![0u8; n]);
    // SAFETY: buffers outlive the transfers.
    let (as_, ad, bs, bd) = unsafe {
        (
            a.register(a_src.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            a.register(a_dst.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            b.register(b_src.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            b.register(b_dst.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
        )
    };
    let seg = |mem| {
        [Segment {
            mem,
            offset: 0,
            remote_offset: 0,
            len: n as u64,
        }]
    };
    let a1 = a.post(Direction::Send, &seg(as_)).unwrap();
    let a2 = a.post(Direction::Recv, &seg(ad)).unwrap();
    let b1 = b.post(Direction::Recv, &seg(bd)).unwrap();
    let b2 = b.post(Direction::Send, &seg(bs)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = [a.poll(a1), a.poll(a2), b.poll(b1), b.poll(b2)]
            .into_iter()
            .all(|p| matches!(p.unwrap(), Progress::Done { .. }));
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
    }
    assert!(a_dst == b_src, "b -> a corrupted");
    assert!(b_dst == a_src, "a -> b corrupted");
}

#[test]
fn bad_arguments_change_nothing() {
    let (mut a, _b) = pair(cfg());
    let mut buf = vec![0u8; 4096];
    // SAFETY: buf outlives the registration.
    let m = unsafe {
        a.register(buf.as_mut_ptr().cast(), 4096, Memory::Host)
            .unwrap()
    };
    let out = [Segment {
        mem: m,
        offset: 4000,
        remote_offset: 0,
        len: 97,
    }];
    assert!(matches!(
        a.post(Direction::Send, &out),
        Err(Error::Invalid(_))
    ));
    let wrap = [Segment {
        mem: m,
        offset: u64::MAX,
        remote_offset: 0,
        len: 2,
    }];
    assert!(matches!(
        a.post(Direction::Send, &wrap),
        Err(Error::Invalid(_))
    ));
    // SAFETY: rejected before any use.
    let e = unsafe { a.register(std::ptr::null_mut(), 1, Memory::Host) };
    assert!(matches!(e, Err(Error::Invalid(_))));
    // SAFETY: rejected before any use.
    let e = unsafe { a.register(buf.as_mut_ptr().cast(), 4096, Memory::Cuda { device: 0 }) };
    assert!(matches!(e, Err(Error::Unsupported(_))), "{e:?}");
    a.deregister(m).unwrap();
    let stale = [Segment {
        mem: m,
        offset: 0,
        remote_offset: 0,
        len: 1,
    }];
    assert!(matches!(
        a.post(Direction::Send, &stale),
        Err(Error::Invalid(_))
    ));
    assert!(
        a.broken().is_none(),
        "argument errors must not break the session"
    );
    // The session still works: an empty transfer completes at once.
    let x = a.post(Direction::Send, &[]).unwrap();
    assert_eq!(a.poll(x).unwrap(), Progress::Done { bytes: 0 });
}

#[test]
fn in_flight_region_cannot_be_deregistered_and_release_abandons() {
    let (mut a, mut b) = pair(cfg());
    let n = 2 << 20;
    let mut src = pattern(n, 4);
    let mut dst = vec![0u8; n];
    // SAFETY: buffers outlive the transfers.
    let (sm, dm) = unsafe {
        (
            a.register(src.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
            b.register(dst.as_mut_ptr().cast(), n, Memory::Host)
                .unwrap(),
        )
    };
    let seg = |mem| {
        [Segment {
            mem,
            offset: 0,
            remote_offset: 0,
            len: n as u64,
        }]
    };
    let ax = a.post(Direction::Send, &seg(sm)).unwrap();
    // Posted, nothing sent yet: the transfer still needs the region.
    assert!(a.deregister(sm).is_err(), "a live transfer uses the region");
    a.progress().unwrap();
    // Socket buffers may have taken every byte already; only a transfer still going is
    // checked (its state changes only inside this thread's progress calls).
    if !matches!(a.status(ax).unwrap(), Progress::Done { .. }) {
        assert!(a.deregister(sm).is_err(), "chunks are in flight");
        a.release(ax).unwrap();
        // Released while in flight: abandoned, still live until its chunks finish.
        assert!(
            a.deregister(sm).is_err(),
            "an abandoned transfer still uses the region"
        );
    } else {
        a.release(ax).unwrap();
    }
    let bx = b.post(Direction::Recv, &seg(dm)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !matches!(b.poll(bx).unwrap(), Progress::Done { .. }) {
        a.progress().unwrap();
        assert!(std::time::Instant::now() < deadline);
    }
    while a.deregister(sm).is_err() {
        a.progress().unwrap();
        assert!(std::time::Instant::now() < deadline);
    }
    assert!(dst == src);
}

#[test]
fn handshake_times_out_without_peer() {
    loopback_only();
    let c = Config {
        timeout: Duration::from_millis(300),
        ..cfg()
    };
    let net = Session::open_net(&c).unwrap();
    // A peer that listens but never connects or accepts.
    let silent = Session::listen(net.clone(), c.clone()).unwrap();
    let me = Session::listen(net, c).unwrap();
    let e = me.connect(silent.conn_info()).err().expect("must time out");
    assert!(matches!(e, Error::Timeout(_)), "{e}");
}

#[test]
fn channel_count_or_chunk_size_mismatch_is_a_clear_error() {
    loopback_only();
    let net = Session::open_net(&cfg()).unwrap();
    let two = Session::listen(
        net.clone(),
        Config {
            channels: 2,
            ..cfg()
        },
    )
    .unwrap();
    let three = Session::listen(net.clone(), cfg()).unwrap();
    let e = three.connect(two.conn_info()).err().expect("must fail");
    assert!(e.to_string().contains("channels"), "{e}");
    // Same channels, different chunk size: the receiver would post chunks the sender never
    // cuts; refused when connecting, naming the setting.
    let small = Session::listen(
        net.clone(),
        Config {
            chunk_bytes: 128 * 1024,
            ..cfg()
        },
    )
    .unwrap();
    let e = Session::listen(net, cfg())
        .unwrap()
        .connect(small.conn_info())
        .err()
        .expect("must fail");
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("chunk_bytes 131072"), "{e}");
    let e = Session::listen(Session::open_net(&cfg()).unwrap(), cfg())
        .unwrap()
        .connect(b"garbage")
        .err()
        .expect("must fail");
    assert!(matches!(e, Error::Protocol(_)), "{e}");
}

/// A transfer whose last chunk fills the window, released once done, and its slot reused by
/// a new transfer while older ones still wait in the channel's queue: the new transfer's
/// chunks must go out after the older ones, in posting order on both sides, or the peers pair
/// them wrongly (each receive would take another transfer's bytes).
#[test]
fn a_reused_slot_keeps_its_place_behind_older_transfers() {
    let cfg = Config {
        channels: 1,
        window: 1,
        max_transfers: 3,
        ..cfg()
    };
    let (mut a, mut b) = pair(cfg);
    let len = 100_000usize;
    let mut src: Vec<Vec<u8>> = (0..4).map(|t| pattern(len, 40 + t)).collect();
    let mut dst: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; len]).collect();
    // SAFETY: the buffers outlive the sessions' use of them (the sessions drop first).
    let (sm, dm): (Vec<_>, Vec<_>) = unsafe {
        src.iter_mut()
            .zip(dst.iter_mut())
            .map(|(s, d)| {
                (
                    a.register(s.as_mut_ptr().cast(), len, Memory::Host)
                        .unwrap(),
                    b.register(d.as_mut_ptr().cast(), len, Memory::Host)
                        .unwrap(),
                )
            })
            .unzip()
    };
    let seg = |mem| Segment {
        mem,
        offset: 0,
        remote_offset: 0,
        len: len as u64,
    };
    let mut xs: Vec<_> = (0..3)
        .map(|t| {
            (
                a.post(Direction::Send, &[seg(sm[t])]).unwrap(),
                b.post(Direction::Recv, &[seg(dm[t])]).unwrap(),
            )
        })
        .collect();
    let done = |s: &mut Session, x| matches!(s.poll(x).unwrap(), Progress::Done { .. });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut ad, mut bd) = (false, false);
    while !(ad && bd) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first transfer timed out"
        );
        ad = ad || done(&mut a, xs[0].0);
        bd = bd || done(&mut b, xs[0].1);
    }
    // One side drives once more than the other, as two processes would: the sender moves on
    // to the second transfer while the receiver has not looked yet.
    a.progress().unwrap();
    a.release(xs[0].0).unwrap();
    b.release(xs[0].1).unwrap();
    // The fourth transfer takes the first one's slot; the second and third are still queued.
    xs[0] = (
        a.post(Direction::Send, &[seg(sm[3])]).unwrap(),
        b.post(Direction::Recv, &[seg(dm[3])]).unwrap(),
    );
    for &(ax, bx) in &xs {
        let (mut ad, mut bd) = (false, false);
        while !(ad && bd) {
            assert!(std::time::Instant::now() < deadline, "a transfer timed out");
            ad = ad || done(&mut a, ax);
            bd = bd || done(&mut b, bx);
        }
    }
    for t in 0..4 {
        assert!(
            dst[t] == src[t],
            "transfer {t} received another transfer's bytes"
        );
    }
}

/// Short transfers are cut into up to `split_chunks` chunks (`PlanConfig::sized_for`). The
/// ends here ask for different values: both must use the smaller one, or the receiver would
/// post chunks the sender never cuts and the transfer would mix or hang.
#[test]
fn short_transfers_are_cut_alike_whatever_each_end_asked() {
    for (sa, sb, want) in [(8u16, 3u16, 3u16), (1, 8, 1), (8, 8, 8)] {
        let with = |split_chunks| Config {
            channels: 2,
            chunk_bytes: 512 * 1024,
            split_chunks,
            timeout: Duration::from_secs(20),
            ..Config::default()
        };
        let (mut a, mut b) =
            common::engine::loopback_pair_with(Default::default(), with(sa), with(sb));
        assert_eq!(
            (a.config().split_chunks, b.config().split_chunks),
            (want, want),
            "asked {sa} and {sb}"
        );
        let total = 6 << 20;
        let mut src = pattern(total, u64::from(sa) * 10 + u64::from(sb));
        let mut dst = vec![0u8; total];
        // SAFETY: both buffers outlive the sessions' use of them (deregistered below).
        let (sm, dm) = unsafe {
            (
                a.register(src.as_mut_ptr().cast(), total, Memory::Host)
                    .unwrap(),
                b.register(dst.as_mut_ptr().cast(), total, Memory::Host)
                    .unwrap(),
            )
        };
        // One segment of 1 MiB (cut into 128 KiB chunks with split 8), odd sizes around the
        // cut, several segments whose total decides, and one past eight chunks (not cut).
        let plans: [&[u64]; 5] = [
            &[1 << 20],
            &[1_000_001],
            &[300_000, 4097, 700_000, 1],
            &[(2 << 20) + 3],
            &[(4 << 20) + 5],
        ];
        for lens in plans {
            dst.iter_mut().for_each(|x| *x = 0);
            let ax = a.post(Direction::Send, &segments(sm, lens)).unwrap();
            let bx = b.post(Direction::Recv, &segments(dm, lens)).unwrap();
            drive_both(&mut a, ax, &mut b, bx);
            for s in segments(dm, lens) {
                let r = s.offset as usize..(s.offset + s.len) as usize;
                assert_eq!(dst[r.clone()], src[r], "split {want}, lens {lens:?}");
            }
            a.release(ax).unwrap();
            b.release(bx).unwrap();
        }
        a.deregister(sm).unwrap();
        b.deregister(dm).unwrap();
    }
}
