//! Zero allocation on the Rust side of NIXL's hot path: reposting a prepared request
//! (`post_xfer`) and polling it (`check_xfer`) until DONE performs no heap allocation on the
//! calling thread, for WRITE and READ between two in-process backends (tcpxsock on loopback),
//! of a few descriptors and of thousands (several parts), and for transfers an agent makes to
//! itself.
//!
//! The counter is per thread ([`tcpx_tests::CountingAlloc`]): what each agent's backend
//! thread does (reading the announce, posting the target side, sending the Ack) runs on
//! another thread and is not counted here. `prep_xfer` and the first posts (which open the
//! conn and size its buffers) may allocate; they run before the counter is reset.

use plugin_TCPX::backend::XferArgs;
use plugin_TCPX::registry::MEM_DRAM;
use plugin_TCPX::testing::{backend_pair, desc as d, poll_done, share};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::{Backend, Status};
use tcpx_tests::{allocs, reset_allocs};

tcpx_tests::install_counting_alloc!();

const WARMUP: usize = 50;
const REPOSTS: usize = 1_000;
/// 8 descriptors of odd sizes, laid out back to back (with a gap) in one registration.
const LENS: [u64; 8] = [1, 4095, 4097, 65_536, 70_001, 100, 131_072, 9_999];
/// 4 descriptors, 8 KiB in all: a READ this small travels inline.
const SMALL: [u64; 4] = [1, 4095, 4000, 96];
const GAP: u64 = 64;

/// Bytes one registration needs for descriptors of `lens`.
fn span(lens: &[u64]) -> usize {
    lens.iter().map(|l| (l + GAP) as usize).sum()
}

/// Descriptors of `lens` inside the registration at `base`, handle `md`.
fn descs(lens: &[u64], base: u64, md: usize) -> Vec<Desc> {
    let mut off = 0;
    lens.iter()
        .map(|&len| {
            let x = d(base + off, len, md);
            off += len + GAP;
            x
        })
        .collect()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every described byte of `src` is in `dst`; the gaps after them in `dst` were never touched.
fn assert_landed(lens: &[u64], src: &[u8], dst: &[u8], what: &str) {
    let mut off = 0;
    for &len in lens {
        let (o, e) = (off as usize, (off + len) as usize);
        assert_eq!(src[o..e], dst[o..e], "{what}: descriptor at {off}");
        assert!(
            dst[e..e + GAP as usize].iter().all(|&x| x == 0),
            "{what}: gap after {off}"
        );
        off += len + GAP;
    }
}

/// Posts the prepared request and polls it until DONE (bounded), without allocating itself.
fn repost(b: &Backend, a: &XferArgs<'_>, h: &mut usize) {
    assert_eq!(b.post_xfer(a, h).unwrap(), Status::InProgress);
    assert_eq!(poll_done(b, *h), Status::Success);
}

/// `a` moves descriptors of `lens` to (WRITE) or from (READ) `b`; `a`'s side is `near`,
/// `b`'s `far`. Returns how many of the READs `b` answered inline.
fn remote(op: Op, lens: &[u64]) -> u64 {
    remote_n(op, lens, REPOSTS)
}

/// [`remote`] with `reposts` counted reposts.
fn remote_n(op: Op, lens: &[u64], reposts: usize) -> u64 {
    let (a, b) = backend_pair("a", "b", 10_000);
    let n = span(lens);
    let (mut near, mut far) = match op {
        Op::Write => (pattern(n, 1), vec![0u8; n]),
        Op::Read => (vec![0u8; n], pattern(n, 2)),
    };
    let (pn, pf) = (near.as_mut_ptr() as u64, far.as_mut_ptr() as u64);
    let mn = a.register_mem(&d(pn, n as u64, 0), MEM_DRAM).unwrap();
    let (mf, rf) = share(&b, "b", &a, pf, n as u64);
    a.connect("b").unwrap();
    let (l, r) = (descs(lens, pn, mn), descs(lens, pf, rf));
    let args = XferArgs {
        op,
        local: &l,
        local_mem: MEM_DRAM,
        remote: &r,
        remote_mem: MEM_DRAM,
        agent: "b",
        notif: None,
    };
    // The byte each transfer tags: the source side's first byte, so every repost is seen to
    // land (the check reads one byte and allocates nothing).
    let (src, dst) = match op {
        Op::Write => (pn as *mut u8, pf as *const u8),
        Op::Read => (pf as *mut u8, pn as *const u8),
    };
    let mut h = a.prep_xfer(&args).unwrap();
    let mut round = |i: usize| {
        let tag = (i % 251) as u8;
        // SAFETY: the buffers outlive the backends' use of them; no transfer is in flight
        // between `repost` calls, so nothing else touches these bytes now.
        unsafe { src.write_volatile(tag) };
        repost(&a, &args, &mut h);
        // SAFETY: as above; the transfer is DONE.
        assert_eq!(unsafe { dst.read_volatile() }, tag, "{op:?} {i}");
    };
    for i in 0..WARMUP {
        round(i);
    }
    reset_allocs();
    for i in WARMUP..WARMUP + reposts {
        round(i);
    }
    let seen = allocs();
    assert_eq!(
        seen, 0,
        "{op:?}: {reposts} reposts + polls allocated {seen} times"
    );
    a.release_req(h).unwrap();
    match op {
        Op::Write => assert_landed(lens, &near, &far, "remote WRITE"),
        Op::Read => assert_landed(lens, &far, &near, "remote READ"),
    }
    a.unload_md(rf).unwrap();
    a.deregister_mem(mn).unwrap();
    b.deregister_mem(mf).unwrap();
    assert_eq!(a.live_requests(), 0);
    b.inline_answers()
}

#[test]
fn remote_write_reposts_allocate_nothing() {
    remote(Op::Write, &LENS);
}

#[test]
fn remote_read_reposts_allocate_nothing() {
    assert_eq!(
        remote(Op::Read, &LENS),
        0,
        "a 285 KiB READ goes through the engine"
    );
}

/// 2,500 descriptors none of which are neighbours: three parts (engine transfers and
/// announces of at most 1,024 segments), one request. Each descriptor is a chunk of its own
/// on the network, so fewer reposts are counted.
fn many() -> Vec<u64> {
    (0..2500u64).map(|i| 100 + i % 7).collect()
}

#[test]
fn many_descriptor_write_reposts_allocate_nothing() {
    remote_n(Op::Write, &many(), 100);
}

#[test]
fn many_descriptor_read_reposts_allocate_nothing() {
    assert_eq!(remote_n(Op::Read, &many(), 100), 0, "through the engine");
}

/// An 8 KiB READ is answered inline (`ReadData` on the control stream; this thread or the
/// backend's reads it).
#[test]
fn inline_read_reposts_allocate_nothing() {
    let inline = remote(Op::Read, &SMALL);
    assert_eq!(
        inline,
        (WARMUP + REPOSTS) as u64,
        "every READ answered inline"
    );
}

/// Transfers to ourselves are revalidated and copied by `post_xfer` itself.
#[test]
fn self_reposts_allocate_nothing() {
    let b = Backend::new("a", [("listen_addr", "127.0.0.1:0")]).unwrap();
    let n = span(&LENS);
    let mut src = pattern(n, 3);
    let mut dst = vec![0u8; n];
    let (ps, pd) = (src.as_mut_ptr() as u64, dst.as_mut_ptr() as u64);
    let ms = b.register_mem(&d(ps, n as u64, 0), MEM_DRAM).unwrap();
    let md = b.register_mem(&d(pd, n as u64, 0), MEM_DRAM).unwrap();
    let ad = b.load_local_md(md).unwrap();
    let (l, r) = (descs(&LENS, ps, ms), descs(&LENS, pd, ad));
    for op in [Op::Write, Op::Read] {
        let args = XferArgs {
            op,
            local: &l,
            local_mem: MEM_DRAM,
            remote: &r,
            remote_mem: MEM_DRAM,
            agent: "a",
            notif: None,
        };
        let mut h = b.prep_xfer(&args).unwrap();
        for _ in 0..WARMUP {
            assert_eq!(b.post_xfer(&args, &mut h).unwrap(), Status::Success);
        }
        reset_allocs();
        for _ in 0..REPOSTS {
            assert_eq!(b.post_xfer(&args, &mut h).unwrap(), Status::Success);
            assert_eq!(b.check_xfer(h).unwrap(), Status::Success);
        }
        let seen = allocs();
        assert_eq!(seen, 0, "self {op:?}: allocated {seen} times");
        b.release_req(h).unwrap();
    }
    assert_eq!(src, pattern(n, 3), "READ copied the same bytes back");
    assert_landed(&LENS, &src, &dst, "self");
    b.unload_md(ad).unwrap();
    b.deregister_mem(ms).unwrap();
    b.deregister_mem(md).unwrap();
}
