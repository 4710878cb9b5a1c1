//! Tests of two agents linked on loopback: transfers, notifications, refusals, dead peers.

use super::*;

/// Two backends that know each other, their data sessions on loopback.
fn linked() -> (Backend, Backend) {
    linked_with(&[])
}

fn linked_with(extra: &[(&str, &str)]) -> (Backend, Backend) {
    linked_each(extra, extra)
}

/// `a` and `b` with their own extra options.
fn linked_each(a_extra: &[(&str, &str)], b_extra: &[(&str, &str)]) -> (Backend, Backend) {
    tcpx_sock::config::configure(tcpx_sock::config::Config {
        ifname: Some("lo".into()),
        ..Default::default()
    });
    let base = [("listen_addr", "127.0.0.1:0"), ("timeout_ms", "5000")];
    let a = Backend::new("a", base.iter().chain(a_extra).copied()).unwrap();
    let b = Backend::new("b", base.iter().chain(b_extra).copied()).unwrap();
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    b.load_remote_conn_info("a", a.conn_info()).unwrap();
    (a, b)
}

/// Polls until the request leaves IN_PROG; bounded so a stuck transfer fails the test.
fn finish(b: &Backend, h: ReqId) -> Result<Status, Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match b.check_xfer(h) {
            Ok(Status::InProgress) => {}
            other => return other,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transfer never finished"
        );
        std::thread::yield_now();
    }
}

/// Waits until `poll` gives something, without calling `checkXfer`; bounded so a transfer
/// that never finishes fails the test with `what`.
fn wait_for<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = poll() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn notifs(b: &Backend) -> Vec<(String, Vec<u8>)> {
    let mut got = Vec::new();
    b.take_notifs(|from, m| {
        got.push((from.to_owned(), m.to_vec()));
        true
    })
    .unwrap();
    got
}

/// Registers `n` bytes at `s` on `a` ("a") and at `t` on `b` ("b"), and loads `b`'s into
/// `a`: (a's md, b's md, b's region as `a` names it).
/// Undoes [`dram_pair`] once every request is released, and checks none is left.
fn undo_dram_pair(a: &Backend, b: &Backend, (ms, mt, rt): (MdId, MdId, MdId)) {
    a.unload_md(rt).unwrap();
    a.deregister_mem(ms).unwrap();
    b.deregister_mem(mt).unwrap();
    assert_eq!(a.live_requests(), 0);
}

fn dram_pair(a: &Backend, b: &Backend, s: u64, t: u64, n: u64) -> (MdId, MdId, MdId) {
    let ms = a.register_mem(&d(s, n, 0), MEM_DRAM).unwrap();
    let mt = b.register_mem(&d(t, n, 0), MEM_DRAM).unwrap();
    let rt = a
        .load_remote_md(&d(t, n, 0), &b.public_data(mt).unwrap(), MEM_DRAM, "b")
        .unwrap();
    (ms, mt, rt)
}

/// Descriptors 64 bytes long, 128 bytes apart at both ends (nothing to join), from `at`.
fn strided(base: u64, md: MdId, at: usize, n: usize) -> Vec<Desc> {
    (0..n)
        .map(|i| d(base + ((at + i) * 128) as u64, 64, md))
        .collect()
}

#[test]
fn transfers_of_many_parts_wait_for_room_and_land_whole() {
    let (a, b) = linked();
    // Two parts outstanding at most: most parts below wait for earlier ones.
    a.remote.set_max_outstanding(2);
    const N: usize = 3 * 1024 + 100; // four parts
    const BYTES: usize = 3 * N * 128;
    let mut src: Vec<u8> = (0..BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; BYTES];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, mt, rt) = dram_pair(&a, &b, s, t, BYTES as u64);
    // A WRITE of four parts, a READ of four parts and a small WRITE, all in flight.
    let (wl, wr) = (strided(s, ms, 0, N), strided(t, rt, 0, N));
    let (rl, rr) = (strided(s, ms, N, N), strided(t, rt, N, N));
    let (sl, sr) = (strided(s, ms, 2 * N, 1), strided(t, rt, 2 * N, 1));
    for i in 0..N {
        let at = (N + i) * 128;
        dst[at..at + 64].fill(0xA0 | (i % 16) as u8);
    }
    let mut w = args(Op::Write, &wl, &wr, "b");
    w.notif = Some(b"four parts");
    let mut small = args(Op::Write, &sl, &sr, "b");
    small.notif = Some(b"after");
    let (mut hw, mut hr, mut hs) = (0, 0, 0);
    a.post_xfer(&w, &mut hw).unwrap();
    a.post_xfer(&args(Op::Read, &rl, &rr, "b"), &mut hr)
        .unwrap();
    a.post_xfer(&small, &mut hs).unwrap();
    for h in [hw, hr, hs] {
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
    }
    for i in 0..N {
        let at = i * 128;
        assert_eq!(dst[at..at + 64], src[at..at + 64], "WRITE descriptor {i}");
        assert!(dst[at + 64..at + 128].iter().all(|&v| v == 0), "gap {i}");
        let at = (N + i) * 128;
        assert!(
            src[at..at + 64].iter().all(|&v| v == 0xA0 | (i % 16) as u8),
            "READ descriptor {i}"
        );
    }
    let at = 2 * N * 128;
    assert_eq!(dst[at..at + 64], src[at..at + 64]);
    // Each WRITE's notification came once its data landed (the multi-part one's is sent
    // when every part is acknowledged; the small WRITE, posted while it ran, may come
    // first).
    let got = notifs(&b);
    let mut got: Vec<&[u8]> = got.iter().map(|(_, m)| m.as_slice()).collect();
    got.sort();
    assert_eq!(got, [&b"after"[..], &b"four parts"[..]]);
    for h in [hw, hr, hs] {
        a.release_req(h).unwrap();
    }
    undo_dram_pair(&a, &b, (ms, mt, rt));
}

#[test]
fn a_transfer_left_unchecked_after_busy_polling_is_sent_by_the_backend_thread() {
    let (a, b) = linked();
    // Parts beyond the first two wait for room: someone must post them as earlier ones end.
    a.remote.set_max_outstanding(2);
    const N: usize = 3 * 1024 + 100; // four parts
    const BYTES: usize = N * 128;
    let mut src: Vec<u8> = (0..BYTES).map(|i| (i * 13 % 251) as u8).collect();
    let mut dst = vec![0u8; BYTES];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, mt, rt) = dram_pair(&a, &b, s, t, BYTES as u64);
    // Poll back to back for a while, so the backend thread leaves the conn to `checkXfer`
    // and looks at it less and less often.
    let (one_l, one_r) = (strided(s, ms, 0, 1), strided(t, rt, 0, 1));
    let busy_until = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while std::time::Instant::now() < busy_until {
        let mut h = 0;
        a.post_xfer(&args(Op::Write, &one_l, &one_r, "b"), &mut h)
            .unwrap();
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        a.release_req(h).unwrap();
    }
    // Then stop checking: the parts that wait for room must still be sent, and the data
    // land, with no `checkXfer`.
    let (wl, wr) = (strided(s, ms, 0, N), strided(t, rt, 0, N));
    let mut hw = 0;
    a.post_xfer(&args(Op::Write, &wl, &wr, "b"), &mut hw)
        .unwrap();
    let landed = |i: usize| {
        // SAFETY: `dst` outlives the transfer; volatile reads of bytes the engine writes
        // (only compared, never kept).
        (0..64).all(|j| unsafe {
            std::ptr::read_volatile(dst.as_ptr().add(i * 128 + j)) == src[i * 128 + j]
        })
    };
    wait_for("the unchecked WRITE never landed", || {
        (0..N).all(landed).then_some(())
    });
    assert_eq!(finish(&a, hw).unwrap(), Status::Success);
    a.release_req(hw).unwrap();
    undo_dram_pair(&a, &b, (ms, mt, rt));
}

#[test]
fn a_write_of_several_parts_notifies_its_peer_without_a_check() {
    let (a, b) = linked();
    a.remote.set_max_outstanding(2);
    const N: usize = 3 * 1024 + 100; // four parts: the notification goes after the data
    const BYTES: usize = N * 128;
    let mut src: Vec<u8> = (0..BYTES).map(|i| (i * 31 % 253) as u8).collect();
    let mut dst = vec![0u8; BYTES];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, mt, rt) = dram_pair(&a, &b, s, t, BYTES as u64);
    let (wl, wr) = (strided(s, ms, 0, N), strided(t, rt, 0, N));
    let mut w = args(Op::Write, &wl, &wr, "b");
    w.notif = Some(b"landed");
    for round in 0..2 {
        let mut hw = 0;
        a.post_xfer(&w, &mut hw).unwrap();
        // No `checkXfer` until the peer has the notification.
        let got = wait_for(
            &format!("round {round}: no notification without a check"),
            || Some(notifs(&b)).filter(|g| !g.is_empty()),
        );
        assert_eq!(got, [("a".to_owned(), b"landed".to_vec())], "round {round}");
        // Sent after the data: all of it is in place when the notification is seen.
        for i in 0..N {
            let at = i * 128;
            assert_eq!(
                dst[at..at + 64],
                src[at..at + 64],
                "round {round}, descriptor {i}"
            );
        }
        assert_eq!(a.check_xfer(hw).unwrap(), Status::Success);
        assert_eq!(a.check_xfer(hw).unwrap(), Status::Success);
        // Exactly once.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            notifs(&b).is_empty(),
            "round {round}: a second notification"
        );
        a.release_req(hw).unwrap();
        dst.fill(0);
    }
    undo_dram_pair(&a, &b, (ms, mt, rt));
}

#[test]
fn a_refused_write_fails_alone_and_the_conn_keeps_serving() {
    let (a, b) = linked_with(&[("inline_write_bytes", "0")]);
    const N: usize = 8 << 20;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 247) as u8).collect();
    let mut dst = vec![0u8; N];
    let mut gone = vec![0x77u8; 1 << 20];
    let (s, t, g) = (
        src.as_mut_ptr() as u64,
        dst.as_mut_ptr() as u64,
        gone.as_mut_ptr() as u64,
    );
    let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
    let mg = b.register_mem(&d(g, 1 << 20, 0), MEM_DRAM).unwrap();
    let rg = a
        .load_remote_md(
            &d(g, 1 << 20, 0),
            &b.public_data(mg).unwrap(),
            MEM_DRAM,
            "b",
        )
        .unwrap();
    b.deregister_mem(mg).unwrap();
    // A healthy 8 MiB WRITE in flight, then one into the region b no longer has (a
    // thousand descriptors, so two parts), then READ from it.
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    let mut h = 0;
    a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    let conn = a.remote.outgoing_id("b");
    let (bl, br) = (strided(s, ms, 0, 1500), strided(g, rg, 0, 1500));
    let mut bad = args(Op::Write, &bl, &br, "b");
    bad.notif = Some(b"never");
    let mut hb = 0;
    a.post_xfer(&bad, &mut hb).unwrap();
    let e = finish(&a, hb).unwrap_err();
    assert_eq!(e.status(), Status::InvalidParam, "{e}");
    assert!(e.to_string().contains("unknown region"), "{e}");
    let (rl, rr) = ([d(s, 4096, ms)], [d(g, 4096, rg)]);
    let mut hr = 0;
    a.post_xfer(&args(Op::Read, &rl, &rr, "b"), &mut hr)
        .unwrap();
    assert_eq!(finish(&a, hr).unwrap_err().status(), Status::InvalidParam);
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert!(dst == src, "the healthy WRITE landed whole");
    assert!(
        gone.iter().all(|&v| v == 0x77),
        "nothing of the refused WRITE landed"
    );
    assert!(b.drained_writes() >= 1);
    assert_eq!(a.remote.outgoing_id("b"), conn, "the conn stayed up");
    assert!(
        notifs(&b).is_empty(),
        "the refused WRITE's notification was not delivered"
    );
    // The conn serves the next transfer.
    dst.fill(0);
    a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert!(dst == src);
    for x in [h, hb, hr] {
        a.release_req(x).unwrap();
    }
    src[0] = 1;
}

/// Notification size in the full-queue test, and how many fit its 64 KiB queue.
const NOTE: usize = 4096;
const FIT: usize = (64 * 1024) / (NOTE + NotifQueue::ENTRY_OVERHEAD as usize);

#[test]
fn a_full_notification_queue_holds_the_peer_back_and_loses_nothing() {
    for inline_bytes in ["0", "16384"] {
        // A short timeout: the held WRITE outlives it three times over, kept alive by the
        // target's keepalives (every timeout / 4). Not shorter: on a loaded 2-core CI box
        // a 300 ms bound saw a scheduling stall longer than its 225 ms of slack.
        let (a, b) = linked_with(&[
            ("notif_queue_bytes", "65536"),
            ("max_notif_bytes", "4096"),
            ("timeout_ms", "500"),
            ("inline_write_bytes", inline_bytes),
        ]);
        const N: usize = 8192;
        let mut src: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; N];
        let mut own = vec![0u8; N];
        let (s, t, o) = (
            src.as_mut_ptr() as u64,
            dst.as_mut_ptr() as u64,
            own.as_mut_ptr() as u64,
        );
        let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);
        let mo = b.register_mem(&d(o, N as u64, 0), MEM_DRAM).unwrap();
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let note = |i: usize| -> Vec<u8> { vec![i as u8; NOTE] };
        let post = |n: Option<&[u8]>| {
            let mut w = args(Op::Write, &l, &r, "b");
            w.notif = n;
            let mut h = 0;
            a.post_xfer(&w, &mut h).unwrap();
            h
        };
        let write = |n: Option<&[u8]>| {
            let h = post(n);
            let st = finish(&a, h);
            a.release_req(h).unwrap();
            st
        };
        // WRITEs with notifications until the target's queue is full: each succeeds.
        for i in 0..FIT {
            assert_eq!(write(Some(&note(i))).unwrap(), Status::Success, "WRITE {i}");
        }
        let conn = a.remote.outgoing_id("b").expect("a conn to b");
        // The next one waits (its data not written), and so does everything after it on
        // the conn, for several timeouts: never refused, never timed out.
        dst.fill(0);
        src[0] = 0xEE;
        let held = post(Some(&note(FIT)));
        let behind = post(None);
        a.gen_notif("b", &note(FIT + 1)).unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < until {
            assert_eq!(a.check_xfer(held).unwrap(), Status::InProgress);
            assert_eq!(a.check_xfer(behind).unwrap(), Status::InProgress);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(dst.iter().all(|&v| v == 0), "a held WRITE wrote nothing");
        // The application's own notifications are never held back.
        b.gen_notif("b", b"own").unwrap();
        let (bl, br) = ([d(t, N as u64, mt)], [d(o, N as u64, mo)]);
        let mut own_w = args(Op::Write, &bl, &br, "b");
        own_w.notif = Some(b"own write");
        let mut h = 0;
        assert_eq!(b.post_xfer(&own_w, &mut h).unwrap(), Status::Success);
        b.release_req(h).unwrap();
        assert_eq!(own, dst, "the self WRITE copied");
        // Taken: the conn resumes, everything lands in order, nothing lost.
        let got = notifs(&b);
        assert_eq!(got.len(), FIT + 2);
        for (i, (from, m)) in got[..FIT].iter().enumerate() {
            assert_eq!((from.as_str(), m), ("a", &note(i)), "notification {i}");
        }
        assert_eq!(got[FIT].1, b"own");
        assert_eq!(got[FIT + 1].1, b"own write");
        assert_eq!(finish(&a, held).unwrap(), Status::Success);
        assert_eq!(finish(&a, behind).unwrap(), Status::Success);
        assert_eq!(dst, src, "the held WRITE landed once taken");
        a.release_req(held).unwrap();
        a.release_req(behind).unwrap();
        assert_eq!(write(None).unwrap(), Status::Success);
        // (sender, length, first byte) of each: the notifications are 4 KiB.
        let got: Vec<(String, usize, u8)> = notifs(&b)
            .into_iter()
            .map(|(from, m)| (from, m.len(), m[0]))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), NOTE, FIT as u8),
                ("a".to_owned(), NOTE, FIT as u8 + 1)
            ],
            "the held WRITE's notification, then the one sent after it (inline {inline_bytes})"
        );
        assert_eq!(
            a.remote.outgoing_id("b"),
            Some(conn),
            "the conn stayed up throughout"
        );
        // A notification longer than the peer takes is refused at the initiator, naming
        // the bound, before anything is sent.
        let e = a.gen_notif("b", &[0u8; NOTE + 1]).unwrap_err();
        assert!(e.to_string().contains("max_notif_bytes"), "{e}");
        drop((src, own));
    }
}

#[test]
fn peers_configured_differently_are_refused_naming_the_setting() {
    for (mine, theirs, what) in [
        (("channels", "3"), ("channels", "2"), "channels"),
        (
            ("chunk_bytes", "131072"),
            ("chunk_bytes", "1048576"),
            "chunk_bytes",
        ),
    ] {
        let (a, b) = linked_each(&[mine], &[theirs]);
        const N: usize = 1 << 20;
        let mut src = vec![7u8; N];
        let mut dst = vec![0u8; N];
        let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
        let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let mut h = 0;
        // The session is refused when it is made, before any transfer is posted on it.
        let err = a
            .post_xfer(&args(Op::Write, &l, &r, "b"), &mut h)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(what) && err.contains("configured alike"),
            "{what}: {err}"
        );
        assert!(dst.iter().all(|&v| v == 0), "{what}: nothing moved");
        drop((src, dst));
    }
}

#[test]
fn small_writes_travel_inline_and_are_acknowledged_in_announce_order() {
    let (a, b) = linked_with(&[]);
    const N: usize = 8 << 20;
    let mut src: Vec<u8> = (0..N).map(|i| (i * 13 % 251) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, _, rt) = dram_pair(&a, &b, s, t, N as u64);
    let post = |a: &Backend, ms, pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
        let l: Vec<Desc> = pieces.iter().map(|&(lo, _, n)| d(s + lo, n, ms)).collect();
        let r: Vec<Desc> = pieces.iter().map(|&(_, ro, n)| d(t + ro, n, rt)).collect();
        let mut x = args(Op::Write, &l, &r, "b");
        x.notif = note;
        let mut h = 0;
        a.post_xfer(&x, &mut h).unwrap();
        h
    };
    let write = |pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
        let h = post(&a, ms, pieces, note);
        let st = finish(&a, h);
        a.release_req(h).unwrap();
        st
    };
    // Three pieces, 8 KiB + 1 in all: one inline announce, data in order.
    let small = [(100, 0, 1), (4096, 64, 4095), (20_001, 8000, 4096)];
    assert_eq!(write(&small, Some(b"w1")).unwrap(), Status::Success);
    assert_eq!(b.inline_writes(), 1, "8 KiB WRITE taken inline");
    for &(lo, ro, n) in &small {
        let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
        assert_eq!(dst[ro..ro + n], src[lo..lo + n], "piece at {ro}");
    }
    assert!(
        dst[1..64].iter().all(|&v| v == 0),
        "bytes outside the pieces moved"
    );
    // The Ack follows the notification: it is already queued.
    assert_eq!(notifs(&b), [("a".to_owned(), b"w1".to_vec())]);
    // Over the limit (16 KiB): the data session.
    dst.fill(0);
    assert_eq!(
        write(&[(0, 0, 16 * 1024 + 1)], None).unwrap(),
        Status::Success
    );
    assert_eq!(b.inline_writes(), 1, "16 KiB + 1 went through the engine");
    assert_eq!(dst[..16 * 1024 + 1], src[..16 * 1024 + 1]);
    // A small WRITE announced behind a large one: its notification and Ack wait for the
    // large one's data, so notifications arrive in announce order.
    for round in 0..5u8 {
        let big = post(&a, ms, &[(0, 0, N as u64 - 8192)], Some(&[b'B', round]));
        let tiny = post(
            &a,
            ms,
            &[(N as u64 - 100, N as u64 - 100, 100)],
            Some(&[b'T', round]),
        );
        assert_eq!(finish(&a, tiny).unwrap(), Status::Success);
        assert_eq!(finish(&a, big).unwrap(), Status::Success);
        a.release_req(tiny).unwrap();
        a.release_req(big).unwrap();
        assert_eq!(
            notifs(&b),
            [
                ("a".to_owned(), vec![b'B', round]),
                ("a".to_owned(), vec![b'T', round])
            ],
            "round {round}"
        );
    }
    assert_eq!(b.inline_writes(), 6);
    assert!(dst[..N - 8192] == src[..N - 8192], "large WRITE data");
    assert!(dst[N - 100..] == src[N - 100..], "small WRITE data");
    // An initiator with inline_write_bytes 0 never goes inline.
    let (c, e) = linked_each(&[("inline_write_bytes", "0")], &[]);
    let (mc, _, re) = dram_pair(&c, &e, s, t, N as u64);
    dst.fill(0);
    let (l, r) = ([d(s, 4096, mc)], [d(t, 4096, re)]);
    let mut h = 0;
    c.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&c, h).unwrap(), Status::Success);
    assert_eq!(e.inline_writes(), 0);
    assert_eq!(dst[..4096], src[..4096]);
    drop((src, dst));
}

#[test]
fn small_reads_travel_inline_and_large_ones_through_the_engine() {
    let (a, b) = linked_with(&[("inline_read_bytes", "8192")]);
    const N: usize = 64 * 1024;
    let mut src: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    // a reads from b: a's `dst` is local, b's `src` is remote.
    let (md, _, rs) = dram_pair(&a, &b, t, s, N as u64);
    let read = |pieces: &[(u64, u64, u64)], note: Option<&[u8]>| {
        let l: Vec<Desc> = pieces.iter().map(|&(lo, _, n)| d(t + lo, n, md)).collect();
        let r: Vec<Desc> = pieces.iter().map(|&(_, ro, n)| d(s + ro, n, rs)).collect();
        let mut x = args(Op::Read, &l, &r, "b");
        x.notif = note;
        let mut h = 0;
        a.post_xfer(&x, &mut h).unwrap();
        let st = finish(&a, h);
        a.release_req(h).unwrap();
        st
    };
    // Three pieces, 8 KiB in all: inline, one frame, data in request order.
    let small = [(0, 100, 1), (64, 4096, 4095), (8000, 20_000, 4096)];
    assert_eq!(read(&small, Some(b"r1")).unwrap(), Status::Success);
    assert_eq!(b.inline_answers(), 1, "8 KiB READ answered inline");
    for &(lo, ro, n) in &small {
        let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
        assert_eq!(dst[lo..lo + n], src[ro..ro + n], "piece at {lo}");
    }
    assert!(
        dst[1..64].iter().all(|&v| v == 0),
        "bytes outside the pieces moved"
    );
    // A READ's notification follows its completion: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = notifs(&b);
    while got.is_empty() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
        got = notifs(&b);
    }
    assert_eq!(got, [("a".to_owned(), b"r1".to_vec())]);
    // One byte over: the engine path, same result.
    dst.fill(0);
    let big = [(0, 0, 8193)];
    assert_eq!(read(&big, None).unwrap(), Status::Success);
    assert_eq!(b.inline_answers(), 1, "8 KiB + 1 went through the engine");
    assert_eq!(dst[..8193], src[..8193]);
    // Reposts of an inline READ.
    for i in 0..50u64 {
        dst[..4096].fill(0);
        assert_eq!(read(&[(0, i * 64, 4096)], None).unwrap(), Status::Success);
        let o = (i * 64) as usize;
        assert_eq!(dst[..4096], src[o..o + 4096], "repost {i}");
    }
    assert_eq!(b.inline_answers(), 51);
    // An initiator that offers inline to a target that never answers inline (its own
    // setting 0): the READ goes through the data session.
    let (c, e) = linked_each(&[], &[("inline_read_bytes", "0")]);
    let (mc, _, re) = dram_pair(&c, &e, t, s, N as u64);
    dst.fill(0);
    let (l, r) = ([d(t, 4096, mc)], [d(s, 4096, re)]);
    let mut h = 0;
    c.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&c, h).unwrap(), Status::Success);
    assert_eq!(e.inline_answers(), 0);
    assert_eq!(dst[..4096], src[..4096]);
    drop((c, e));
    drop(src);
}

/// Reads one whole frame from a blocking stream.
fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut f = vec![0u8; tcpx_core::wire::HEADER_LEN];
    s.read_exact(&mut f).unwrap();
    let len = tcpx_core::wire::peek_frame(&f).unwrap().unwrap();
    f.resize(len, 0);
    s.read_exact(&mut f[tcpx_core::wire::HEADER_LEN..]).unwrap();
    f
}

fn frame(m: &tcpx_core::wire::Message<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.buffer_len()];
    m.emit(&mut v).unwrap();
    v
}

#[test]
fn an_inline_answer_of_the_wrong_size_fails_the_read_and_closes_the_conn() {
    use std::io::{Read, Write};
    use tcpx::engine::{Config as EngineConfig, Session};
    use tcpx_core::wire::{self, Message, ReadData, RegionToken};
    let (a, _b) = linked();
    // A fake target: the real handshake, then a ReadData 3 bytes long for a 4 KiB READ.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _hello = read_frame(&mut s);
        let theirs = read_frame(&mut s);
        let cfg = EngineConfig {
            timeout: std::time::Duration::from_secs(5),
            ..EngineConfig::default()
        };
        let lis = Session::listen(Session::open_net(&cfg).unwrap(), cfg).unwrap();
        s.write_all(lis.conn_info()).unwrap();
        s.write_all(&frame(&Message::Limits(wire::Limits { max_notif: 4096 })))
            .unwrap();
        let _sess = lis.connect(&theirs).unwrap();
        let req = read_frame(&mut s);
        let Ok(Message::ReadRequest(r)) = wire::parse(&req) else {
            panic!("expected a ReadRequest");
        };
        assert!(r.inline_ok, "a 4 KiB READ into host memory offers inline");
        s.write_all(&frame(&Message::ReadData(ReadData {
            xfer: r.xfer,
            data: b"abc",
        })))
        .unwrap();
        // Until the initiator closes the conn (0) or gives up waiting (error).
        let mut one = [0u8; 1];
        s.read(&mut one).unwrap_or(1)
    });
    a.load_remote_conn_info("fake", &blob::encode_conn_info("fake", addr, 2).unwrap())
        .unwrap();
    let token = RegionToken {
        base: 0x1000_0000,
        len: 1 << 20,
        mem: MemKind::Host,
        device: 0,
        region: 7,
        key: 99,
    };
    let rt = a
        .load_remote_md(
            &d(0x1000_0000, 1 << 20, 0),
            &blob::encode_token(&token).unwrap(),
            MEM_DRAM,
            "fake",
        )
        .unwrap();
    let mut dst = vec![0x5au8; 4096];
    let md = a
        .register_mem(&d(dst.as_mut_ptr() as u64, 4096, 0), MEM_DRAM)
        .unwrap();
    let (l, r) = (
        [d(dst.as_mut_ptr() as u64, 4096, md)],
        [d(0x1000_0000, 4096, rt)],
    );
    let mut h = 0;
    a.post_xfer(&args(Op::Read, &l, &r, "fake"), &mut h)
        .unwrap();
    let e = finish(&a, h).unwrap_err();
    assert_eq!(e.status(), Status::Mismatch, "{e}");
    assert!(e.to_string().contains("ReadData of 3 bytes"), "{e}");
    assert!(
        dst.iter().all(|&v| v == 0x5a),
        "nothing of the bad answer was written"
    );
    assert_eq!(fake.join().unwrap(), 0, "the initiator closed the conn");
    a.release_req(h).unwrap();
}

#[test]
fn deregistering_waits_for_a_released_read_to_finish_into_memory() {
    let (a, b) = linked();
    const N: usize = 32 << 20;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 249) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    // a READs b's `src` into its `dst`, through the data session (32 MiB).
    let (md, _, rs) = dram_pair(&a, &b, t, s, N as u64);
    let (l, r) = ([d(t, N as u64, md)], [d(s, N as u64, rs)]);
    let mut h = 0;
    a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
    // Wait until the READ is under way, then release it in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // SAFETY: reads of one byte the engine may be writing (volatile, so each is a fresh
    // read); `dst` outlives the transfer.
    let landed = || unsafe { std::ptr::read_volatile((t + 1) as *const u8) } != 0;
    while !landed() && std::time::Instant::now() < deadline {
        let _ = a.check_xfer(h);
    }
    a.release_req(h).unwrap();
    // Once deregistration returns, nothing may land in the memory any more: the released
    // READ finished into it first.
    a.deregister_mem(md).unwrap();
    assert!(
        dst == src,
        "the released READ finished into memory before deregistration returned"
    );
    let snapshot = dst.clone();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(dst == snapshot, "bytes landed after deregisterMem returned");
    drop((src, dst));
}

#[test]
fn remote_write_read_refusal_and_dead_peer() {
    let (a, b) = linked();
    const N: usize = 1 << 20;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);

    // WRITE with a notification: delivered to b once the data is there.
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    let mut w = args(Op::Write, &l, &r, "b");
    w.notif = Some(b"w");
    let mut h = 0;
    assert_eq!(a.post_xfer(&w, &mut h).unwrap(), Status::InProgress);
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert_eq!(dst, src);
    assert_eq!(notifs(&b), [("a".to_owned(), b"w".to_vec())]);
    a.release_req(h).unwrap();

    // READ of a sub-range back into a different place.
    dst[..4096].fill(0x5a);
    let (l, r) = ([d(s + 8192, 4096, ms)], [d(t, 4096, rt)]);
    let mut h = 0;
    a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert!(src[8192..8192 + 4096].iter().all(|&x| x == 0x5a));
    a.release_req(h).unwrap();

    // b drops the region a still holds a token for: b refuses. A refused READ leaves the
    // conn usable; a refused WRITE (its data already sent) closes it, and the next
    // transfer reconnects.
    b.deregister_mem(mt).unwrap();
    let mut h = 0;
    a.post_xfer(&args(Op::Read, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&a, h).unwrap_err().status(), Status::InvalidParam);
    a.release_req(h).unwrap();
    let mut h = 0;
    a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    let st = finish(&a, h).unwrap_err().status();
    assert!(
        matches!(st, Status::InvalidParam | Status::RemoteDisconnect),
        "{st:?}"
    );
    a.release_req(h).unwrap();
    let mt = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
    a.unload_md(rt).unwrap();
    let rt = a
        .load_remote_md(
            &d(t, N as u64, 0),
            &b.public_data(mt).unwrap(),
            MEM_DRAM,
            "b",
        )
        .unwrap();
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    dst.fill(0);
    let mut h = 0;
    a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert_eq!(dst, src);
    a.release_req(h).unwrap();

    // b goes away: a's transfers fail with REMOTE_DISCONNECT, none hangs.
    b.deregister_mem(mt).unwrap();
    drop(b);
    let mut h = 0;
    let st = match a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h) {
        Err(e) => e.status(),
        Ok(_) => finish(&a, h).unwrap_err().status(),
    };
    assert_eq!(st, Status::RemoteDisconnect);
    if h != 0 {
        a.release_req(h).unwrap();
    }
    a.unload_md(rt).unwrap();
    a.deregister_mem(ms).unwrap();
    dst[0] = 1;
}

/// A prepared request is reposted after its conn died under it: the reused flight moves
/// to the new conn (its segments remapped to the new session) and the data lands.
#[test]
fn repost_after_a_dead_conn_moves_to_the_new_one() {
    let (a, b) = linked();
    const N: usize = 256 * 1024;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 249) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = a.register_mem(&d(s, N as u64, 0), MEM_DRAM).unwrap();
    let mt = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
    let token = b.public_data(mt).unwrap();
    let rt = a
        .load_remote_md(&d(t, N as u64, 0), &token, MEM_DRAM, "b")
        .unwrap();
    for op in [Op::Write, Op::Read] {
        let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
        let x = args(op, &l, &r, "b");
        let mut h = a.prep_xfer(&x).unwrap();
        assert_eq!(a.post_xfer(&x, &mut h).unwrap(), Status::InProgress);
        assert_eq!(
            a.post_xfer(&x, &mut h).unwrap_err().status(),
            Status::RepostActive
        );
        // Kill the conn while the transfer may still be in flight: it either finished
        // first or fails as a disconnect; either way the handle can be posted again.
        a.remote.disconnect("b");
        match finish(&a, h) {
            Ok(st) => assert_eq!(st, Status::Success),
            Err(e) => assert_eq!(e.status(), Status::RemoteDisconnect),
        }
        dst.fill(0);
        if op == Op::Read {
            dst.copy_from_slice(&src);
            src.fill(0);
        }
        assert_eq!(a.post_xfer(&x, &mut h).unwrap(), Status::InProgress);
        assert_eq!(finish(&a, h).unwrap(), Status::Success);
        assert_eq!(src, dst, "{op:?}");
        a.release_req(h).unwrap();
    }
    undo_dram_pair(&a, &b, (ms, mt, rt));
}

#[test]
fn identical_registrations_share_one_token_and_the_last_one_releases_it() {
    let (a, b) = linked();
    const N: usize = 64 * 1024;
    let mut src: Vec<u8> = (0..N).map(|i| (i % 241) as u8).collect();
    let mut dst = vec![0u8; N];
    let (s, t) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let (ms, mt, rt) = dram_pair(&a, &b, s, t, N as u64);
    let again = b.register_mem(&d(t, N as u64, 0), MEM_DRAM).unwrap();
    assert_eq!(again, mt);
    assert_eq!(b.public_data(again).unwrap(), b.public_data(mt).unwrap());
    // One of the two goes: the region stays, transfers into it still land.
    b.deregister_mem(mt).unwrap();
    let (l, r) = ([d(s, N as u64, ms)], [d(t, N as u64, rt)]);
    let mut h = 0;
    a.post_xfer(&args(Op::Write, &l, &r, "b"), &mut h).unwrap();
    assert_eq!(finish(&a, h).unwrap(), Status::Success);
    assert_eq!(dst, src);
    a.release_req(h).unwrap();
    // The last one goes: the token no longer names anything.
    b.deregister_mem(again).unwrap();
    assert!(b.public_data(again).is_err());
    assert_eq!(b.live_metadata(), 0);
    src[0] = 1;
}
