//! TCPX mode over 127.0.0.1 in this process, host receives through bounce pages
//! (`Config::host_bounce`): bounce pages, meta slots, TCPX's rules. Data is rebuilt with the
//! CPU reference unpack from the published slot entries.

mod common;

use common::*;
use tcpx_core::abi::{result, DevHandle, NET_DEVICE_UNPACK, NET_UNPACK_VERSION};
use tcpx_core::unpack::{slot_of, unpack_cpu, UnpackDevHandle, PAGE_SIZE};

/// The smallest legal pool (one 4 MiB receive), so back-pressure is easy to reach.
const BOUNCE: usize = 4 << 20;

fn setup() {
    init_with(tcpx_sock::Config {
        host_bounce: true,
        shuffle: true,
        bounce_bytes: BOUNCE,
        ..tcpx_sock::Config::default()
    });
}

/// Reads the k-th receive's data through the recv comm's host view.
fn unpack(r: Ptr, k: u64, len: usize) -> Vec<u8> {
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    assert!(!v.bounce_device);
    // SAFETY: the view's meta table lives as long as the comm.
    let meta = unsafe { &*v.meta };
    // SAFETY: the bounce region is host memory of BOUNCE bytes.
    let bounce = unsafe { core::slice::from_raw_parts(v.bounce, BOUNCE) };
    let entries = meta.slot_entries(slot_of(k)).unwrap();
    assert_eq!(
        entries.len(),
        len.div_ceil(PAGE_SIZE),
        "one entry per 4 KiB fragment"
    );
    assert!(entries.iter().all(|e| e.len as usize <= PAGE_SIZE));
    let mut out = vec![0u8; len];
    assert_eq!(unpack_cpu(entries, bounce, &mut out), Ok(len as u64));
    out
}

/// Entry point of the re-executed peer; a no-op when run as a normal test.
#[test]
#[ignore = "runs only as the peer of another test"]
fn peer_entry() {
    setup();
    peer_main();
}

#[test]
fn two_processes_round_trip_unpacked() {
    setup();
    let (h, l) = listen();
    let mut child = spawn_peer("send", &h);
    let (r, _) = accept_one(l);
    for (k, len) in peer_sizes().into_iter().enumerate() {
        let mut unused = vec![0u8; 1];
        let rr = irecv_n(r, unused.as_mut_ptr(), len, 1).unwrap();
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        assert!(
            unpack(r, k as u64, len) == pattern(len, 500 + k as u64),
            "size {len}"
        );
        assert_eq!(consumed(r, rr), result::SUCCESS);
    }
    assert!(child.wait().unwrap().success());
    close_recv(r);
    close_listen(l);
}

#[test]
fn properties_and_device_handle() {
    setup();
    let p = props();
    assert_eq!(p.net_device_type, NET_DEVICE_UNPACK);
    assert_eq!(p.net_device_version, NET_UNPACK_VERSION);
    let (s, r, d) = pair();
    assert!(!d.is_null());
    // SAFETY: accept filled the handle we passed.
    let dh: DevHandle = unsafe { *d };
    assert_eq!(dh.net_device_type, NET_DEVICE_UNPACK);
    assert_eq!(dh.net_device_version, NET_UNPACK_VERSION);
    assert_eq!(dh.needs_proxy_progress, 1);
    assert_eq!(dh.size, core::mem::size_of::<UnpackDevHandle>());
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    assert_eq!(v.bounce_len, BOUNCE);
    if tcpx_sock::cuda::present() {
        // Device memory there (tests/cuda.rs reads it).
        println!("SKIP: the UNPACK handle is device memory on this machine");
    } else {
        // SAFETY: without CUDA the UNPACK handle is host memory, alive with the comm.
        let u = unsafe { *(dh.handle as *const UnpackDevHandle) };
        assert_eq!(u.head, u64::MAX);
        assert_eq!(u.meta as usize, v.meta as usize);
        assert_eq!(u.bounce_buf as usize, v.bounce as usize);
    }
    close_send(s);
    close_recv(r);
}

#[test]
fn sizes_round_trip_through_bounce_pages() {
    setup();
    let (s, r, _) = pair();
    let mut sizes = SIZES.to_vec();
    // Lone sends above `inline_bytes` and up to `direct_bytes` are sent by the calling thread
    // (`Config::direct_bytes`); their receives into bounce pages still go to the helpers.
    sizes.extend([200_000, tcpx_sock::Config::default().direct_bytes]);
    sizes.extend(rand_sizes(20, 4 << 20, 99));
    let mut scattered = false;
    for (k, &len) in sizes.iter().enumerate() {
        let src = pattern(len, 1000 + k as u64);
        let mut unused = vec![0u8; len];
        let rr = irecv(r, &mut unused).unwrap();
        let sr = isend(s, &src).unwrap();
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        assert_eq!(wait(sr), Ok(UNTOUCHED));
        assert!(
            unused.iter().all(|b| *b == 0),
            "a bounce receive without linear bytes must not touch the buffer"
        );
        assert!(unpack(r, k as u64, len) == src, "size {len}");
        // SAFETY: `r` is a live recv comm.
        let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
        // SAFETY: the view's meta table is live.
        let e = unsafe { &*v.meta }.slot_entries(slot_of(k as u64)).unwrap();
        scattered |= e
            .windows(2)
            .any(|w| w[1].src_off != w[0].src_off + PAGE_SIZE as u32);
        assert_eq!(consumed(r, rr), result::SUCCESS);
    }
    assert!(
        scattered,
        "shuffle on: fragments should not all be contiguous"
    );
    close_send(s);
    close_recv(r);
}

#[test]
fn consumed_out_of_order_or_early_is_rejected() {
    setup();
    let (s, r, _) = pair();
    let mut a = vec![0u8; 100];
    let mut b = vec![0u8; 100];
    let ra = irecv(r, &mut a).unwrap();
    let rb = irecv(r, &mut b).unwrap();
    assert_eq!(
        consumed(r, ra),
        result::INTERNAL_ERROR,
        "not yet reported done"
    );
    let src = pattern(100, 5);
    let sa = isend(s, &src).unwrap();
    let sb = isend(s, &src).unwrap();
    assert_eq!(wait(ra), Ok(UNTOUCHED));
    assert_eq!(wait(rb), Ok(UNTOUCHED));
    assert_eq!(consumed(r, rb), result::INTERNAL_ERROR, "younger first");
    assert_eq!(consumed(r, ra), result::SUCCESS);
    assert_eq!(consumed(r, rb), result::SUCCESS);
    assert_eq!(consumed(r, rb), result::INTERNAL_ERROR, "twice");
    wait(sa).unwrap();
    wait(sb).unwrap();
    close_send(s);
    close_recv(r);
}

#[test]
fn done_but_unconsumed_requests_count_toward_sixteen() {
    setup();
    let (s, r, _) = pair();
    let src = pattern(10, 6);
    let mut bufs = vec![vec![0u8; 10]; 17];
    let mut reqs = Vec::new();
    for b in bufs.iter_mut().take(16) {
        let rr = irecv(r, b).unwrap();
        wait(isend(s, &src).unwrap()).unwrap();
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        reqs.push(rr);
    }
    assert_eq!(irecv(r, &mut bufs[16]).err(), Some(result::INTERNAL_ERROR));
    assert_eq!(consumed(r, reqs[0]), result::SUCCESS);
    assert!(
        irecv(r, &mut bufs[16]).is_ok(),
        "one slot freed by irecvConsumed"
    );
    close_send(s);
    close_recv(r);
}

#[test]
fn test_not_oldest_and_n_not_one_rejected() {
    setup();
    let (s, r, _) = pair();
    let mut a = vec![0u8; 10];
    let mut b = vec![0u8; 10];
    let _ra = irecv(r, &mut a).unwrap();
    let rb = irecv(r, &mut b).unwrap();
    assert_eq!(test_once(rb), Err(result::INTERNAL_ERROR));
    assert_eq!(
        irecv_n(r, a.as_mut_ptr(), 10, 2).err(),
        Some(result::INTERNAL_ERROR)
    );
    close_send(s);
    close_recv(r);
}

#[test]
fn exhausted_pool_back_pressures_until_consumed() {
    setup();
    let (s, r, _) = pair();
    let len = 4 << 20; // the whole pool
    let a = pattern(len, 7);
    let b = pattern(len, 8);
    let (mut ua, mut ub) = (vec![0u8; 1], vec![0u8; 1]);
    let ra = irecv_n(r, ua.as_mut_ptr(), len, 1).unwrap();
    let rb = irecv_n(r, ub.as_mut_ptr(), len, 1).unwrap();
    let sa = isend(s, &a).unwrap();
    let sb = isend(s, &b).unwrap();
    let ap = Ptr(a.as_ptr() as *mut _);
    let bp = Ptr(b.as_ptr() as *mut _);
    let t = std::thread::spawn(move || {
        let (_a, _b) = (ap, bp);
        (wait(sa), wait(sb))
    });
    assert_eq!(wait(ra), Ok(UNTOUCHED));
    let first = unpack(r, 0, len);
    // The second request cannot land: every page is held by the first.
    for _ in 0..200 {
        assert_eq!(test_once(rb), Ok(None));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(first == a, "pages in use were not overwritten");
    assert_eq!(consumed(r, ra), result::SUCCESS);
    assert_eq!(wait(rb), Ok(UNTOUCHED));
    assert!(unpack(r, 1, len) == b);
    let (x, y) = t.join().unwrap();
    assert_eq!((x, y), (Ok(UNTOUCHED), Ok(UNTOUCHED)));
    close_send(s);
    close_recv(r);
}

#[test]
fn receive_over_four_mib_is_rejected() {
    setup();
    let (s, r, _) = pair();
    let mut u = vec![0u8; 1];
    assert_eq!(
        irecv_n(r, u.as_mut_ptr(), (4 << 20) + 1, 1).err(),
        Some(result::INTERNAL_ERROR)
    );
    close_send(s);
    close_recv(r);
}
