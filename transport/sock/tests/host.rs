//! Host mode over 127.0.0.1, both endpoints in this process (threads), through the v7 table.
//! A CUDA machine is always in TCPX mode: the data tests print SKIP there.

mod common;

use common::*;
use std::time::Instant;
use tcpx_core::abi::{result, NET_DEVICE_HOST, NET_DEVICE_UNPACK, PTR_CUDA, PTR_HOST};

fn setup() {
    init(false, false, 0);
}

#[test]
fn table_and_properties() {
    setup();
    let n = net();
    // SAFETY: the name is a static C string.
    let name = unsafe { core::ffi::CStr::from_ptr(n.name) };
    assert_eq!(name.to_str().unwrap(), "tcpxsock");
    let mut nd = 0;
    // SAFETY: valid out-pointer.
    assert_eq!(unsafe { n.devices.unwrap()(&mut nd) }, result::SUCCESS);
    assert_eq!(nd, 1, "TCPX_SOCK_IFNAME=lo selects exactly lo");
    let p = props();
    assert_eq!(
        // SAFETY: `getProperties` points `name` at the device's NUL-terminated name, which the
        // plugin keeps for its lifetime (the process's here).
        unsafe { core::ffi::CStr::from_ptr(p.name) }
            .to_str()
            .unwrap(),
        "lo"
    );
    assert!(p.pci_path.is_null());
    assert_eq!(p.max_recvs, 1);
    if tcpx_sock::cuda::present() {
        // A CUDA box: the device is UNPACK, host buffers still land directly.
        assert_eq!(p.ptr_support, PTR_HOST | PTR_CUDA);
        assert_eq!(p.net_device_type, NET_DEVICE_UNPACK);
    } else {
        assert_eq!(p.ptr_support, PTR_HOST);
        assert_eq!(p.net_device_type, NET_DEVICE_HOST);
    }
    assert!(p.speed > 0 && p.max_comms >= 16);
    assert!(n.reg_mr_dma_buf.is_none());
}

#[test]
fn sizes_round_trip() {
    setup();
    if !host_mode("sizes_round_trip") {
        return;
    }
    let (s, r, d) = pair();
    assert!(
        d.is_null(),
        "host device: accept sets the device handle pointer to NULL"
    );
    let mut sizes = SIZES.to_vec();
    sizes.extend(rand_sizes(12, 3 << 20, 7));
    for (i, &len) in sizes.iter().enumerate() {
        round_trip(s, r, &pattern(len, i as u64), 13);
    }
    close_send(s);
    close_recv(r);
}

#[test]
fn sixteen_in_flight_in_order() {
    setup();
    if !host_mode("sixteen_in_flight_in_order") {
        return;
    }
    let (s, r, _) = pair();
    let lens: Vec<usize> = (0..16)
        .map(|i| [10, 70_000, 600_000, 4096][i % 4] + i)
        .collect();
    let srcs: Vec<Vec<u8>> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| pattern(l, 100 + i as u64))
        .collect();
    let mut dsts: Vec<Vec<u8>> = lens.iter().map(|&l| vec![0u8; l]).collect();
    let rreqs: Vec<Ptr> = dsts.iter_mut().map(|d| irecv(r, d).unwrap()).collect();
    let sreqs: Vec<Ptr> = srcs.iter().map(|b| isend(s, b).unwrap()).collect();
    let t = std::thread::spawn(move || sreqs.into_iter().map(wait).collect::<Vec<_>>());
    for (i, q) in rreqs.into_iter().enumerate() {
        assert_eq!(wait(q), Ok(lens[i]));
    }
    assert!(t.join().unwrap().iter().all(Result::is_ok));
    assert!(dsts == srcs);
    close_send(s);
    close_recv(r);
}

#[test]
fn shorter_send_reports_its_size_longer_is_an_error() {
    setup();
    if !host_mode("shorter_send_reports_its_size_longer_is_an_error") {
        return;
    }
    let (s, r, _) = pair();
    let src = pattern(1000, 1);
    let mut dst = vec![0u8; 5000];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert_eq!(wait(rr), Ok(1000));
    assert_eq!(wait(sr), Ok(1000));
    assert!(dst[..1000] == src[..]);
    let big = pattern(9000, 2);
    let mut small = vec![0u8; 8000];
    let rr = irecv(r, &mut small).unwrap();
    let _sr = isend(s, &big).unwrap();
    assert_eq!(wait(rr), Err(result::INTERNAL_ERROR));
    close_send(s);
    close_recv(r);
}

#[test]
fn seventeenth_request_is_rejected() {
    setup();
    if !host_mode("seventeenth_request_is_rejected") {
        return;
    }
    let (s, r, _) = pair();
    let mut bufs = vec![vec![0u8; 64]; 17];
    let (first, last) = bufs.split_at_mut(16);
    for b in first.iter_mut() {
        irecv(r, b).unwrap();
    }
    assert_eq!(irecv(r, &mut last[0]).err(), Some(result::INTERNAL_ERROR));
    let src = vec![1u8; 64];
    for _ in 0..16 {
        isend(s, &src).unwrap();
    }
    assert_eq!(isend(s, &src).err(), Some(result::INTERNAL_ERROR));
    close_send(s);
    close_recv(r);
}

#[test]
fn test_on_a_younger_request_is_rejected() {
    setup();
    if !host_mode("test_on_a_younger_request_is_rejected") {
        return;
    }
    let (s, r, _) = pair();
    let mut a = vec![0u8; 64];
    let mut b = vec![0u8; 64];
    let _ra = irecv(r, &mut a).unwrap();
    let rb = irecv(r, &mut b).unwrap();
    assert_eq!(test_once(rb), Err(result::INTERNAL_ERROR));
    let src = vec![5u8; 64];
    let _sa = isend(s, &src).unwrap();
    let sb = isend(s, &src).unwrap();
    assert_eq!(test_once(sb), Err(result::INTERNAL_ERROR));
    close_send(s);
    close_recv(r);
}

#[test]
fn irecv_with_two_buffers_is_rejected() {
    setup();
    if !host_mode("irecv_with_two_buffers_is_rejected") {
        return;
    }
    let (s, r, _) = pair();
    let mut a = vec![0u8; 64];
    assert_eq!(
        irecv_n(r, a.as_mut_ptr(), a.len(), 2).err(),
        Some(result::INTERNAL_ERROR)
    );
    close_send(s);
    close_recv(r);
}

#[test]
fn tags_are_ignored_matching_is_by_order() {
    setup();
    if !host_mode("tags_are_ignored_matching_is_by_order") {
        return;
    }
    let (s, r, _) = pair();
    // The helper posts tag 3 on receives and tag 7 on sends: they must still match.
    let src = pattern(300, 9);
    let mut dst = vec![0u8; 300];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert_eq!(wait(rr), Ok(300));
    assert_eq!(wait(sr), Ok(300));
    assert!(dst == src);
    close_send(s);
    close_recv(r);
}

#[test]
fn close_with_requests_in_flight_returns() {
    setup();
    if !host_mode("close_with_requests_in_flight_returns") {
        return;
    }
    let (s, r, _) = pair();
    let mut dst = vec![0u8; 4 << 20];
    let _rr = irecv(r, &mut dst).unwrap();
    let src = pattern(8 << 20, 3);
    let _sr = isend(s, &src).unwrap();
    let t0 = Instant::now();
    close_recv(r);
    close_send(s);
    assert!(t0.elapsed() < DEADLINE);
}

#[test]
fn peer_close_fails_pending_receive() {
    setup();
    if !host_mode("peer_close_fails_pending_receive") {
        return;
    }
    let (s, r, _) = pair();
    let mut dst = vec![0u8; 1 << 20];
    let rr = irecv(r, &mut dst).unwrap();
    close_send(s);
    let e = wait(rr).unwrap_err();
    assert!(
        e == result::REMOTE_ERROR || e == result::SYSTEM_ERROR,
        "got {e}"
    );
    close_recv(r);
}

#[test]
fn stray_connection_is_rejected() {
    setup();
    if !host_mode("stray_connection_is_rejected") {
        return;
    }
    let (mut h, l) = listen();
    let port = u16::from_le_bytes([h[8], h[9]]);
    // A stranger connects and says nothing sensible.
    let mut stray = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::Write;
    stray.write_all(&[0xAB; 32]).unwrap();
    let mut got = None;
    let mut s = None;
    let t0 = Instant::now();
    while got.is_none() || s.is_none() {
        assert!(t0.elapsed() < DEADLINE);
        if s.is_none() {
            s = connect_step(&mut h).unwrap();
        }
        if got.is_none() {
            got = accept_step(l).unwrap();
        }
    }
    // The stray was dropped: the accepted comm is the real one and carries data.
    let (r, _) = got.unwrap();
    let s = s.unwrap();
    let src = pattern(5000, 4);
    let mut dst = vec![0u8; 5000];
    let rr = irecv(r, &mut dst).unwrap();
    let sr = isend(s, &src).unwrap();
    assert_eq!(wait(rr), Ok(5000));
    assert_eq!(wait(sr), Ok(5000));
    assert!(dst == src);
    close_send(s);
    close_recv(r);
    close_listen(l);
}

/// Loopback throughput of 64 MiB transfers in 4 MiB requests (printed; not timed-asserted).
#[test]
fn throughput_64mib() {
    setup();
    if !host_mode("throughput_64mib") {
        return;
    }
    let (s, r, _) = pair();
    let total = 64 << 20;
    let chunk = 4 << 20;
    let src = pattern(total, 11);
    let mut dst = vec![0u8; total];
    let iters = 4;
    let t0 = Instant::now();
    for _ in 0..iters {
        let sp = Ptr(src.as_ptr() as *mut _);
        let sender = std::thread::spawn(move || {
            let sp = sp;
            let mut q = std::collections::VecDeque::new();
            for off in (0..total).step_by(chunk) {
                if q.len() == 16 {
                    wait(q.pop_front().unwrap()).unwrap();
                }
                // SAFETY: `src` outlives the thread (joined below).
                let b = unsafe { core::slice::from_raw_parts((sp.0 as *const u8).add(off), chunk) };
                q.push_back(isend(s, b).unwrap());
            }
            for x in q {
                wait(x).unwrap();
            }
        });
        let mut q = std::collections::VecDeque::new();
        for off in (0..total).step_by(chunk) {
            if q.len() == 16 {
                wait(q.pop_front().unwrap()).unwrap();
            }
            q.push_back(irecv(r, &mut dst[off..off + chunk]).unwrap());
        }
        for x in q {
            assert_eq!(wait(x), Ok(chunk));
        }
        sender.join().unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let ours = (iters * total) as f64 / secs / 1e9;
    let base = plain_tcp_gbps(iters * total);
    println!(
        "tcpxsock host 64 MiB x{iters}: {ours:.2} GB/s; plain single TCP stream: {base:.2} GB/s; ratio {:.2}",
        ours / base
    );
    assert!(dst == src);
    close_send(s);
    close_recv(r);
}

/// Baseline: one plain TCP stream over loopback moving `bytes` (what iperf3 measures).
fn plain_tcp_gbps(bytes: usize) -> f64 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 4 << 20];
        let mut got = 0;
        while got < bytes {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
    });
    let mut c = std::net::TcpStream::connect(a).unwrap();
    let buf = vec![1u8; 4 << 20];
    let t0 = Instant::now();
    for _ in 0..bytes / buf.len() {
        c.write_all(&buf).unwrap();
    }
    t.join().unwrap();
    bytes as f64 / t0.elapsed().as_secs_f64() / 1e9
}

/// 4 KiB ping-pong latency vs a plain TCP ping-pong (printed; not timed-asserted).
#[test]
fn latency_4k_ping_pong() {
    setup();
    if !host_mode("latency_4k_ping_pong") {
        return;
    }
    let (s1, r1, _) = pair();
    let (s2, r2, _) = pair();
    let n = 2000;
    let echo = std::thread::spawn(move || {
        let mut b = vec![0u8; 4096];
        for _ in 0..n {
            let q = irecv(r1, &mut b).unwrap();
            assert_eq!(wait(q), Ok(4096));
            wait(isend(s2, &b).unwrap()).unwrap();
        }
    });
    let src = pattern(4096, 12);
    let mut back = vec![0u8; 4096];
    let t0 = Instant::now();
    for _ in 0..n {
        let q = irecv(r2, &mut back).unwrap();
        wait(isend(s1, &src).unwrap()).unwrap();
        assert_eq!(wait(q), Ok(4096));
    }
    let ours = t0.elapsed().as_secs_f64() / n as f64 * 1e6;
    echo.join().unwrap();
    assert!(back == src);
    let base = plain_tcp_rtt_us(n);
    println!(
        "tcpxsock 4 KiB RTT {ours:.1} us; plain TCP {base:.1} us; ratio {:.2}",
        ours / base
    );
    for c in [s1, s2] {
        close_send(c);
    }
    for c in [r1, r2] {
        close_recv(c);
    }
}

fn plain_tcp_rtt_us(n: usize) -> f64 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_nodelay(true).unwrap();
        let mut b = [0u8; 4096];
        for _ in 0..n {
            c.read_exact(&mut b).unwrap();
            c.write_all(&b).unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(a).unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [7u8; 4096];
    let t0 = Instant::now();
    for _ in 0..n {
        c.write_all(&b).unwrap();
        c.read_exact(&mut b).unwrap();
    }
    let us = t0.elapsed().as_secs_f64() / n as f64 * 1e6;
    t.join().unwrap();
    us
}

/// Host mode keeps NCCL's socket-plugin leniency: a NULL memory handle means host memory
/// (TCPX mode refuses it: `tests/tcpx_mode.rs`).
#[test]
fn null_memory_handles_mean_host_memory() {
    setup();
    if !host_mode("null_memory_handles_mean_host_memory") {
        return;
    }
    let (s, r, _) = pair();
    let src = pattern(3000, 21);
    let mut dst = vec![0u8; 3000];
    let (mut rreq, mut sreq) = (core::ptr::null_mut(), core::ptr::null_mut());
    let mut data = [dst.as_mut_ptr().cast::<core::ffi::c_void>()];
    let mut sizes = [3000];
    let mut tags = [0];
    let mut mhs = [core::ptr::null_mut()];
    // SAFETY: one-entry arrays for n = 1; both buffers outlive their requests.
    unsafe {
        assert_eq!(
            net().irecv.unwrap()(
                r.0,
                1,
                data.as_mut_ptr(),
                sizes.as_mut_ptr(),
                tags.as_mut_ptr(),
                mhs.as_mut_ptr(),
                &mut rreq,
            ),
            result::SUCCESS
        );
        assert_eq!(
            net().isend.unwrap()(
                s.0,
                src.as_ptr() as *mut _,
                3000,
                0,
                core::ptr::null_mut(),
                &mut sreq,
            ),
            result::SUCCESS
        );
    }
    assert_eq!(wait(Ptr(rreq)), Ok(3000));
    assert_eq!(wait(Ptr(sreq)), Ok(3000));
    assert!(dst == src);
    close_send(s);
    close_recv(r);
}
