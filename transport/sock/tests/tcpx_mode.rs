//! TCPX mode without a GPU (`Config::unpack`): each behaviour of Google's plugin that a CPU
//! can show, enforced by tcpxsock — the device handle filled in place at `accept` (T1), `test`
//! never writing sizes (T2), `iflush` refused (T4), host receives held until `irecvConsumed`
//! (T5), NULL memory handles refused (T8), the accept delay (T10) and fragments of odd lengths
//! with plugin-written gaps, checked against the CPU unpack oracle (T11).

mod common;

use core::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

use common::*;
use tcpx_core::abi::{result, DevHandle, NET_DEVICE_UNPACK, NET_UNPACK_VERSION, PTR_HOST};
use tcpx_core::unpack::{slot_of, unpack_cpu, UnpackDevHandle, ENTRIES_PER_SLOT, PAGE_SIZE};

fn setup() {
    init_with(tcpx_sock::Config {
        unpack: true,
        ..tcpx_sock::Config::default()
    });
    assert!(tcpx_mode(), "Config::unpack makes the device UNPACK");
}

/// Published `cnt` of receive `k`.
fn cnt(r: Ptr, k: u64) -> u64 {
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    // SAFETY: the meta table is live; a volatile read of a published count.
    unsafe { core::ptr::addr_of!((*v.meta).cnt[slot_of(k)]).read_volatile() }
}

#[test]
fn accept_fills_the_callers_device_handle_and_refuses_a_null_one() {
    setup();
    let (mut h, l) = listen();
    // The sender's connect leaves its device-handle pointer alone (send comms have none).
    let mut send_dev = zeroed_dev_handle();
    let marker: *mut DevHandle = &mut send_dev;
    let mut s = None;
    let mut refused = 0;
    let t0 = Instant::now();
    let (r, filled) = loop {
        assert!(t0.elapsed() < DEADLINE, "connect/accept timed out");
        if s.is_none() {
            let mut sp = core::ptr::null_mut();
            let mut d = marker;
            // SAFETY: valid out-pointers and a handle from listen.
            let rc = unsafe { net().connect.unwrap()(0, h.as_mut_ptr().cast(), &mut sp, &mut d) };
            assert_eq!(rc, result::SUCCESS);
            assert_eq!(d, marker, "connect does not touch *sendDevComm");
            s = (!sp.is_null()).then_some(Ptr(sp));
        }
        // `&null`: TCPX would write through NULL; tcpxsock refuses it and moves nothing.
        let mut null: *mut DevHandle = core::ptr::null_mut();
        let (rc, c) = accept_raw(l, &mut null);
        assert_eq!(
            rc,
            result::INTERNAL_ERROR,
            "accept with *recvDevComm == NULL"
        );
        assert!(c.0.is_null() && null.is_null());
        refused += 1;
        if s.is_some() && refused > 3 {
            // The connection was kept: a call with a handle gets it.
            if let Some((r, d)) = accept_step(l).unwrap() {
                break (r, d);
            }
        }
        std::thread::yield_now();
    };
    let s = s.unwrap();
    assert_eq!(send_dev.net_device_type, 0, "connect wrote nothing");
    // SAFETY: accept filled the handle accept_step passed.
    let d = unsafe { *filled };
    assert_eq!(d.net_device_type, NET_DEVICE_UNPACK);
    assert_eq!(d.net_device_version, NET_UNPACK_VERSION);
    assert_eq!(d.size, core::mem::size_of::<UnpackDevHandle>());
    assert_eq!(d.needs_proxy_progress, 1);
    // SAFETY: without CUDA the UNPACK handle is host memory, alive with the comm.
    let u = unsafe { *(d.handle as *const UnpackDevHandle) };
    assert_eq!(
        u.head,
        u64::MAX,
        "the consumer increments head before its first read"
    );
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    assert_eq!(u.meta as usize, v.meta as usize);
    // The comm works.
    let src = pattern(5000, 1);
    let mut dst = vec![0u8; 5000];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert_eq!(wait(sr), Ok(UNTOUCHED));
    assert!(dst == src);
    assert_eq!(consumed(r, rr), result::SUCCESS);
    close_send(s);
    close_recv(r);
    close_listen(l);

    // No out-pointer at all: nothing to fill, and nothing refused (TCPX checks for it).
    let (h, l) = listen();
    let mut h2 = h;
    let t0 = Instant::now();
    let (mut s, mut r) = (None, None);
    while s.is_none() || r.is_none() {
        assert!(t0.elapsed() < DEADLINE, "connect/accept timed out");
        if s.is_none() {
            s = connect_step(&mut h2).unwrap();
        }
        if r.is_none() {
            let (rc, c) = accept_raw(l, core::ptr::null_mut());
            assert_eq!(rc, result::SUCCESS);
            r = (!c.0.is_null()).then_some(c);
        }
    }
    close_send(s.unwrap());
    close_recv(r.unwrap());
    close_listen(l);
}

#[test]
fn test_never_writes_sizes() {
    setup();
    let (s, r, _) = pair();
    // Inline, direct and helper-moved sizes, zero included.
    for (k, len) in [0usize, 10, 70_000, 200_000, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let src = pattern(len, 20 + k as u64);
        let mut dst = vec![0u8; len + 1];
        let rr = irecv(r, &mut dst).unwrap();
        let sr = isend(s, &src).unwrap();
        // `test_once` fails if a size is written while not done; a done one must leave the
        // sentinel too.
        assert_eq!(wait(sr), Ok(UNTOUCHED), "send of {len}");
        assert_eq!(wait(rr), Ok(UNTOUCHED), "receive of {len}");
        assert!(dst[..len] == src[..], "size {len}");
        assert_eq!(cnt(r, k as u64), 0, "host receive: cnt 0");
        assert_eq!(consumed(r, rr), result::SUCCESS);
    }
    close_send(s);
    close_recv(r);
}

#[test]
fn host_receives_hold_their_slot_until_consumed() {
    setup();
    let (s, r, _) = pair();
    let mut bufs = vec![vec![0u8; 3000]; 17];
    let mut reqs = Vec::new();
    for (k, b) in bufs.iter_mut().take(16).enumerate() {
        let src = pattern(3000, 40 + k as u64);
        let rr = irecv(r, b).unwrap();
        // Sends leave at test: sixteen of them never fill the send queue.
        wait(isend(s, &src).unwrap()).unwrap();
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        assert!(b[..] == src[..], "host receive {k} lands in its buffer");
        assert_eq!(cnt(r, k as u64), 0, "host receive {k}: cnt 0");
        reqs.push(rr);
    }
    // Sixteen done-but-unconsumed host receives: a 17th request is TCPX's InternalError.
    let (last, _) = bufs.split_last_mut().unwrap();
    assert_eq!(irecv(r, last).err(), Some(result::INTERNAL_ERROR));
    // In posting order only.
    assert_eq!(consumed(r, reqs[1]), result::INTERNAL_ERROR);
    assert_eq!(consumed(r, reqs[0]), result::SUCCESS);
    assert_eq!(consumed(r, reqs[0]), result::INTERNAL_ERROR, "twice");
    let rr = irecv(r, last).expect("one slot freed by irecvConsumed");
    let src = pattern(3000, 99);
    wait(isend(s, &src).unwrap()).unwrap();
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert_eq!(cnt(r, 16), 0, "the 17th receive reuses slot 0 with cnt 0");
    for q in reqs.into_iter().skip(1).chain([rr]) {
        assert_eq!(consumed(r, q), result::SUCCESS);
    }
    close_send(s);
    close_recv(r);
}

#[test]
fn iflush_is_an_error_and_writes_nothing() {
    setup();
    let (s, r, _) = pair();
    let flush = |comm: *mut c_void, req: *mut *mut c_void| -> c_int {
        // SAFETY: every pointer argument is NULL or valid; the plugin must not dereference
        // the NULL ones.
        unsafe {
            net().iflush.unwrap()(
                comm,
                1,
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                req,
            )
        }
    };
    let mut slot: *mut c_void = 0x5a5a as *mut c_void;
    assert_eq!(flush(r.0, &mut slot), result::INTERNAL_ERROR);
    assert_eq!(
        slot, 0x5a5a as *mut c_void,
        "the request slot is not written"
    );
    assert_eq!(flush(r.0, core::ptr::null_mut()), result::INTERNAL_ERROR);
    assert_eq!(
        flush(core::ptr::null_mut(), core::ptr::null_mut()),
        result::INTERNAL_ERROR
    );
    close_send(s);
    close_recv(r);
}

#[test]
fn null_memory_handles_are_refused() {
    setup();
    let (s, r, _) = pair();
    let mut buf = vec![0u8; 64];
    let mut req = core::ptr::null_mut();
    // SAFETY: valid pointers; the buffer outlives the call.
    let rc = unsafe {
        net().isend.unwrap()(
            s.0,
            buf.as_mut_ptr().cast(),
            64,
            0,
            core::ptr::null_mut(),
            &mut req,
        )
    };
    assert_eq!(rc, result::INTERNAL_ERROR, "isend with a NULL mhandle");
    assert!(req.is_null());
    let mut data = [buf.as_mut_ptr().cast::<c_void>()];
    let mut sizes = [64 as c_int];
    let mut tags = [0 as c_int];
    let mut mhs = [core::ptr::null_mut()];
    // SAFETY: one-entry arrays for n = 1.
    let rc = unsafe {
        net().irecv.unwrap()(
            r.0,
            1,
            data.as_mut_ptr(),
            sizes.as_mut_ptr(),
            tags.as_mut_ptr(),
            mhs.as_mut_ptr(),
            &mut req,
        )
    };
    assert_eq!(rc, result::INTERNAL_ERROR, "irecv with a NULL mhandle");
    // SAFETY: as above, with no mhandle array at all.
    let rc = unsafe {
        net().irecv.unwrap()(
            r.0,
            1,
            data.as_mut_ptr(),
            sizes.as_mut_ptr(),
            tags.as_mut_ptr(),
            core::ptr::null_mut(),
            &mut req,
        )
    };
    assert_eq!(rc, result::INTERNAL_ERROR, "irecv with no mhandles");
    let mut mh = core::ptr::null_mut();
    // SAFETY: a valid out-pointer.
    let rc = unsafe {
        net().reg_mr.unwrap()(
            core::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            64,
            PTR_HOST,
            &mut mh,
        )
    };
    assert_eq!(rc, result::INTERNAL_ERROR, "regMr with a NULL comm");
    // Nothing was posted: a registered transfer still pairs up.
    let src = pattern(64, 3);
    let rr = irecv(r, &mut buf).unwrap();
    assert_eq!(wait(isend(s, &src).unwrap()), Ok(UNTOUCHED));
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert!(buf == src);
    assert_eq!(consumed(r, rr), result::SUCCESS);
    close_send(s);
    close_recv(r);
}

#[test]
fn accept_returns_no_comm_before_the_delay() {
    setup();
    let delay = Duration::from_millis(1500);
    let (mut h, l) = listen_with(tcpx_sock::Config {
        unpack: true,
        accept_delay_ms: delay.as_millis() as usize,
        ..tcpx_sock::Config::default()
    });
    // The connection is established after this instant, so no comm may come before t0 + delay.
    let t0 = Instant::now();
    let s = loop {
        assert!(t0.elapsed() < DEADLINE, "connect timed out");
        if let Some(s) = connect_step(&mut h).unwrap() {
            break s;
        }
        assert!(accept_step(l).unwrap().is_none());
        std::thread::yield_now();
    };
    // Every socket is connected and has said hello: the comm is established but held back.
    let mut nulls = 0;
    let (r, _) = loop {
        assert!(t0.elapsed() < DEADLINE, "accept timed out");
        match accept_step(l).unwrap() {
            Some(x) => break x,
            None => nulls += 1,
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        t0.elapsed() >= delay,
        "accept returned a comm {:?} after connecting, before the {delay:?} delay",
        t0.elapsed()
    );
    assert!(nulls > 0, "accept said 'not yet' while the delay ran");
    round_trip_tcpx(s, r, 100_000);
    close_send(s);
    close_recv(r);
    close_listen(l);
}

/// One transfer of `len` bytes between a send comm and a TCPX-mode recv comm (host receive).
fn round_trip_tcpx(s: Ptr, r: Ptr, len: usize) {
    let src = pattern(len, len as u64);
    let mut dst = vec![0u8; len];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    let sender = std::thread::spawn(move || wait(sr));
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert_eq!(sender.join().unwrap(), Ok(UNTOUCHED));
    assert!(dst == src);
    assert_eq!(consumed(r, rr), result::SUCCESS);
}

/// Host receives through bounce pages (`host_bounce`) in odd fragments with `LINEAR` bytes per
/// receive written by the plugin into the buffer: the entries never overlap, stay within 2048
/// per slot and leave exactly the linear bytes to the plugin's own writes, and the CPU oracle
/// rebuilds every byte. Through the streamed helpers and through direct page receives.
#[test]
fn odd_fragments_and_linear_bytes_match_the_cpu_oracle() {
    setup();
    const LINEAR: usize = 3001;
    for (stream_bounce, shuffle) in [(true, false), (false, true)] {
        let (h, l) = listen_with(tcpx_sock::Config {
            host_bounce: true,
            odd_fragments: true,
            linear_bytes: LINEAR,
            stream_bounce,
            shuffle,
            ..tcpx_sock::Config::default()
        });
        let (s, r, _) = connect_accept(h, l);
        // SAFETY: `r` is a live recv comm.
        let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
        // SAFETY: host memory of bounce_len bytes, alive with the comm; read only after test
        // reported a request done.
        let bounce = unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) };
        let mut sizes = vec![
            1usize,
            3000,
            3001,
            3002,
            4097,
            60_000,
            200_000,
            1 << 20,
            4 << 20,
        ];
        sizes.extend(rand_sizes(8, 4 << 20, 5));
        let (mut odd_src, mut odd_len) = (false, false);
        for (k, &len) in sizes.iter().enumerate() {
            let k = k as u64;
            let src = pattern(len, 300 + k);
            let mut buf = vec![0u8; len];
            let rr = irecv(r, &mut buf).unwrap();
            let sr = isend(s, &src).unwrap();
            let sender = std::thread::spawn(move || wait(sr));
            assert_eq!(wait(rr), Ok(UNTOUCHED));
            assert_eq!(sender.join().unwrap(), Ok(UNTOUCHED));
            // SAFETY: the meta table lives with the comm; slot k was published.
            let e = unsafe { &*v.meta }.slot_entries(slot_of(k)).unwrap();
            assert!(e.len() <= ENTRIES_PER_SLOT);
            // The plugin wrote exactly the bytes no entry covers, and nothing else.
            let mut covered = vec![false; len];
            for m in e {
                assert!(m.len as usize <= PAGE_SIZE && m.len > 0);
                for c in &mut covered[m.dst_off as usize..(m.dst_off + m.len as u64) as usize] {
                    assert!(!*c, "entries overlap in the request (receive {k})");
                    *c = true;
                }
                odd_src |= m.src_off % 2 == 1;
                odd_len |= m.len % 2 == 1;
            }
            assert_eq!(covered.iter().filter(|c| !**c).count(), LINEAR.min(len));
            for (i, c) in covered.iter().enumerate() {
                let want = if *c { 0 } else { src[i] };
                assert_eq!(buf[i], want, "receive {k} ({len} B), byte {i}");
            }
            let mut srcs: Vec<(u32, u32)> = e.iter().map(|m| (m.src_off, m.len)).collect();
            srcs.sort_unstable();
            assert!(
                srcs.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
                "entries overlap in the bounce region (receive {k})"
            );
            assert_eq!(
                unpack_cpu(e, bounce, &mut buf),
                Ok((len - LINEAR.min(len)) as u64)
            );
            assert!(buf == src, "receive {k} ({len} B) rebuilt");
            assert_eq!(consumed(r, rr), result::SUCCESS);
        }
        assert!(odd_src && odd_len, "odd offsets and lengths were published");
        close_send(s);
        close_recv(r);
    }
}
