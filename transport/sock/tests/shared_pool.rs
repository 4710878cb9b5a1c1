//! TCPX mode's bounce pool is one per GPU (per process without CUDA), shared by every recv comm,
//! as TCPX's RX pool is: NCCL's unpack keeps one `bounce_buf` per kernel block and applies every
//! connection's `src_off` to it. Host receives go through bounce pages here
//! (`Config::host_bounce`) and the data is rebuilt with the CPU reference unpack from one base.

mod common;

use std::sync::Mutex;

use common::*;
use tcpx_core::unpack::{slot_of, unpack_cpu, LoadMeta, UnpackDevHandle, PAGE_SIZE};

/// Two 4 MiB receives fill it.
const BOUNCE: usize = 8 << 20;
const PAGES: usize = BOUNCE / PAGE_SIZE;

/// The tests count the pool's pages, which every comm of this process shares: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn setup() -> std::sync::MutexGuard<'static, ()> {
    init_with(tcpx_sock::Config {
        host_bounce: true,
        shuffle: true,
        bounce_bytes: BOUNCE,
        ..tcpx_sock::Config::default()
    });
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn view(r: Ptr) -> tcpx_sock::UnpackView {
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.expect("TCPX mode");
    assert!(!v.bounce_device);
    v
}

/// The entries published for the `k`-th receive of `r`.
fn entries(r: Ptr, k: u64) -> Vec<LoadMeta> {
    // SAFETY: the view's meta table lives as long as the comm.
    let meta = unsafe { &*view(r).meta };
    meta.slot_entries(slot_of(k)).unwrap().to_vec()
}

/// Rebuilds the `k`-th receive of `r` from the pool, through the base `r` publishes.
fn unpack(r: Ptr, k: u64, len: usize) -> Vec<u8> {
    let v = view(r);
    // SAFETY: the pool is host memory of `bounce_len` bytes, alive with the comm.
    let bounce = unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) };
    let mut out = vec![0u8; len];
    assert_eq!(unpack_cpu(&entries(r, k), bounce, &mut out), Ok(len as u64));
    out
}

/// The `bounce_buf` of a device handle from `accept` (host memory without CUDA; None where it
/// is device memory).
fn published_base(d: *mut tcpx_core::abi::DevHandle) -> Option<usize> {
    if tcpx_sock::cuda::present() {
        return None;
    }
    // SAFETY: accept filled the handle; without CUDA its UNPACK handle is host memory.
    let u = unsafe { *((*d).handle as *const UnpackDevHandle) };
    Some(u.bounce_buf as usize)
}

/// Sends `srcs` on `s`, posted here in order, and tests them in that order from another
/// thread (a comm's requests are tested oldest first: two threads each waiting on one send of
/// the same comm would break that). The join gives each send's result and, only then, drops
/// the buffers: the plugin reads a send's buffer until its test says done.
fn send_async(s: Ptr, srcs: Vec<Vec<u8>>) -> std::thread::JoinHandle<Vec<Result<usize, i32>>> {
    let reqs: Vec<Ptr> = srcs.iter().map(|src| isend(s, src).unwrap()).collect();
    std::thread::spawn(move || {
        let done = reqs.into_iter().map(wait).collect();
        drop(srcs);
        done
    })
}

#[test]
fn recv_comms_share_one_base_and_never_share_a_page() {
    let _g = setup();
    let comms: Vec<_> = (0..3).map(|_| pair()).collect();
    let bases: Vec<_> = comms
        .iter()
        .map(|&(_, r, _)| view(r).bounce as usize)
        .collect();
    assert!(bases.iter().all(|&b| b == bases[0]), "bases {bases:x?}");
    for &(_, r, d) in &comms {
        assert_eq!(view(r).bounce_len, BOUNCE);
        if let Some(b) = published_base(d) {
            assert_eq!(b, bases[0], "the device handle publishes the pool's base");
        } else {
            println!("SKIP: base check of the device handle (device memory here)");
        }
    }
    // Every comm has two receives done and not consumed at once: 6 × 1 MiB + odd sizes.
    let sizes = [(1 << 20) + 3, (1 << 20) - 4097];
    let (mut reqs, mut senders) = (Vec::new(), Vec::new());
    for (c, &(s, r, _)) in comms.iter().enumerate() {
        let mut srcs = Vec::new();
        for (k, &len) in sizes.iter().enumerate() {
            srcs.push(pattern(len, (10 * c + k) as u64));
            let mut unused = vec![0u8; 1];
            let rr = irecv_n(r, unused.as_mut_ptr(), len, 1).unwrap();
            reqs.push((c, k, len, rr));
        }
        senders.push(send_async(s, srcs));
    }
    for &(_, _, _, rr) in &reqs {
        assert_eq!(wait(rr), Ok(UNTOUCHED));
    }
    for t in senders {
        assert_eq!(t.join().unwrap(), [Ok(UNTOUCHED); 2]);
    }
    // All six hold their pages: no byte of the pool belongs to two of them.
    let mut ranges = Vec::new();
    for &(c, k, len, _) in &reqs {
        let r = comms[c].1;
        let es = entries(r, k as u64);
        assert_eq!(es.iter().map(|e| e.len as usize).sum::<usize>(), len);
        for e in es {
            assert!(e.src_off as usize + e.len as usize <= BOUNCE);
            ranges.push((
                e.src_off as usize,
                e.src_off as usize + e.len as usize,
                c,
                k,
            ));
        }
    }
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "fragments of comm {} receive {} and comm {} receive {} overlap: {:?} {:?}",
            w[0].2,
            w[0].3,
            w[1].2,
            w[1].3,
            w[0],
            w[1]
        );
    }
    let held: usize = reqs
        .iter()
        .map(|&(_, _, len, _)| len.div_ceil(PAGE_SIZE))
        .sum();
    assert_eq!(view(comms[0].1).bounce_pages_free, PAGES - held);
    // Each receive's data, rebuilt from the one base.
    for &(c, k, len, _) in &reqs {
        assert!(
            unpack(comms[c].1, k as u64, len) == pattern(len, (10 * c + k) as u64),
            "comm {c} receive {k}"
        );
    }
    for &(c, _, _, rr) in &reqs {
        assert_eq!(consumed(comms[c].1, rr), tcpx_core::abi::result::SUCCESS);
    }
    assert_eq!(view(comms[0].1).bounce_pages_free, PAGES);
    for (s, r, _) in comms {
        close_send(s);
        close_recv(r);
    }
}

#[test]
fn a_receive_waits_for_pages_another_comm_holds() {
    let _g = setup();
    let (sa, ra, _) = pair();
    let (sb, rb, _) = pair();
    let len = 4 << 20;
    let (a0, a1, b0) = (pattern(len, 1), pattern(len, 2), pattern(5000, 3));
    let mut unused = vec![0u8; 1];
    // Comm A holds the whole pool in two done, unconsumed receives.
    let ra0 = irecv_n(ra, unused.as_mut_ptr(), len, 1).unwrap();
    let ra1 = irecv_n(ra, unused.as_mut_ptr(), len, 1).unwrap();
    let ta = send_async(sa, vec![a0.clone(), a1.clone()]);
    assert_eq!(wait(ra0), Ok(UNTOUCHED));
    assert_eq!(wait(ra1), Ok(UNTOUCHED));
    assert_eq!(view(rb).bounce_pages_free, 0);
    // Comm B's receive has its header but no pages: it stays pending, and writes nothing.
    let rb0 = irecv_n(rb, unused.as_mut_ptr(), b0.len(), 1).unwrap();
    let tb0 = send_async(sb, vec![b0.clone()]);
    for _ in 0..200 {
        assert_eq!(test_once(rb0), Ok(None));
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(
        unpack(ra, 0, len) == a0,
        "pages in use were not overwritten"
    );
    assert!(
        unpack(ra, 1, len) == a1,
        "pages in use were not overwritten"
    );
    // One receive of A consumed: B's gets pages, from those A gave back.
    assert_eq!(consumed(ra, ra0), tcpx_core::abi::result::SUCCESS);
    assert_eq!(wait(rb0), Ok(UNTOUCHED));
    assert!(unpack(rb, 0, b0.len()) == b0);
    assert!(unpack(ra, 1, len) == a1, "A's held receive is intact");
    assert_eq!(ta.join().unwrap(), [Ok(UNTOUCHED); 2]);
    assert_eq!(tb0.join().unwrap(), [Ok(UNTOUCHED)]);
    assert_eq!(consumed(ra, ra1), tcpx_core::abi::result::SUCCESS);
    assert_eq!(consumed(rb, rb0), tcpx_core::abi::result::SUCCESS);
    assert_eq!(view(rb).bounce_pages_free, PAGES);
    close_send(sa);
    close_recv(ra);
    close_send(sb);
    close_recv(rb);
}

#[test]
fn closing_a_comm_returns_its_pages_to_the_pool() {
    let _g = setup();
    let (sa, ra, _) = pair();
    let (sb, rb, _) = pair();
    let len = (3 << 20) + 1;
    let mut unused = vec![0u8; 1];
    let rr = irecv_n(ra, unused.as_mut_ptr(), len, 1).unwrap();
    let t = send_async(sa, vec![pattern(len, 9)]);
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert_eq!(t.join().unwrap(), [Ok(UNTOUCHED)]);
    assert_eq!(view(rb).bounce_pages_free, PAGES - len.div_ceil(PAGE_SIZE));
    // Closed with the receive done but never consumed.
    close_recv(ra);
    close_send(sa);
    assert_eq!(view(rb).bounce_pages_free, PAGES);
    // The pool still serves the other comm.
    round_trip_unpacked(sb, rb, 0, 4 << 20);
    close_send(sb);
    close_recv(rb);
}

/// One receive of `len` bytes on `r` (its `k`-th), checked through the pool, then consumed.
fn round_trip_unpacked(s: Ptr, r: Ptr, k: u64, len: usize) {
    let src = pattern(len, 77 + k);
    let mut unused = vec![0u8; 1];
    let rr = irecv_n(r, unused.as_mut_ptr(), len, 1).unwrap();
    let t = send_async(s, vec![src.clone()]);
    assert_eq!(wait(rr), Ok(UNTOUCHED));
    assert_eq!(t.join().unwrap(), [Ok(UNTOUCHED)]);
    assert!(unpack(r, k, len) == src);
    assert_eq!(consumed(r, rr), tcpx_core::abi::result::SUCCESS);
}
