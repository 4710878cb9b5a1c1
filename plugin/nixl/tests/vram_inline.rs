//! Small READs and WRITEs with device memory at either end travel inline: the side that owns
//! device memory copies it into or out of the control frame (`ReadData`, or a `WriteAnnounce`
//! carrying its data); larger ones still go through the engine. Every combination of host and
//! device memory, pieces of odd sizes at odd offsets, data and untouched bytes verified.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use std::sync::Arc;

use cudarc::driver::CudaContext;
use plugin_TCPX::backend::{XferArgs, MEM_DRAM, MEM_VRAM};
use plugin_TCPX::testing::{backend_pair, desc as d, poll_done, share_mem};
use plugin_TCPX::xfer::Op;
use plugin_TCPX::Status;
use tcpx_kernels::mem::DeviceBuffer;

const N: usize = 64 * 1024;

fn gpu() -> Option<Arc<CudaContext>> {
    match tcpx_kernels::gpu_available() {
        Ok(()) => Some(CudaContext::new(0).expect("CUDA context")),
        Err(why) => {
            assert!(
                std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
                "REQUIRE_GPU=1 but no GPU: {why}"
            );
            eprintln!("SKIP: {why}");
            None
        }
    }
}

/// `N` bytes of host or device memory.
enum Buf {
    Host(Vec<u8>),
    Dev(DeviceBuffer),
}

impl Buf {
    fn new(ctx: &Arc<CudaContext>, mem: i32, content: &[u8]) -> Buf {
        if mem == MEM_VRAM {
            let mut b = DeviceBuffer::new(ctx, content.len()).unwrap();
            b.write(0, content).unwrap();
            Buf::Dev(b)
        } else {
            Buf::Host(content.to_vec())
        }
    }

    fn addr(&self) -> u64 {
        match self {
            Buf::Host(v) => v.as_ptr() as u64,
            Buf::Dev(b) => b.ptr(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Buf::Host(v) => v.clone(),
            Buf::Dev(b) => {
                let mut v = vec![0u8; b.len()];
                b.read(0, &mut v).unwrap();
                v
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Buf::Host(v) => v.fill(0),
            Buf::Dev(b) => b.fill(0).unwrap(),
        }
    }
}

#[test]
fn small_reads_with_device_memory_travel_inline() {
    let Some(ctx) = gpu() else { return };
    let src: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8 ^ 0x5A).collect();
    let kinds = [
        (MEM_DRAM, MEM_VRAM),
        (MEM_VRAM, MEM_VRAM),
        (MEM_VRAM, MEM_DRAM),
    ];
    for (local_mem, remote_mem) in kinds {
        let case = format!("local {local_mem} remote {remote_mem}");
        // a reads from b: a's `dst` is local, b's `src` remote.
        let (a, b) = backend_pair("a", "b", 10_000);
        let mut dst = Buf::new(&ctx, local_mem, &vec![0u8; N]);
        let far = Buf::new(&ctx, remote_mem, &src);
        let (t, s) = (dst.addr(), far.addr());
        let md = a.register_mem(&d(t, N as u64, 0), local_mem).unwrap();
        let (_, rs) = share_mem(&b, "b", &a, s, N as u64, remote_mem);
        let read = |pieces: &[(u64, u64, u64)]| {
            let l: Vec<_> = pieces.iter().map(|&(lo, _, n)| d(t + lo, n, md)).collect();
            let r: Vec<_> = pieces.iter().map(|&(_, ro, n)| d(s + ro, n, rs)).collect();
            let x = XferArgs {
                op: Op::Read,
                local: &l,
                local_mem,
                remote: &r,
                remote_mem,
                agent: "b",
                notif: None,
            };
            let mut h = 0;
            a.post_xfer(&x, &mut h).unwrap();
            let st = poll_done(&a, h);
            a.release_req(h).unwrap();
            st
        };
        let check = |dst: &Buf, pieces: &[(u64, u64, u64)], what: &str| {
            let got = dst.bytes();
            let mut want = vec![0u8; N];
            for &(lo, ro, n) in pieces {
                let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
                want[lo..lo + n].copy_from_slice(&src[ro..ro + n]);
            }
            assert!(got == want, "{case}, {what}: destination differs");
        };
        // Three pieces, 8 KiB + 1 in all (default limit 16 KiB): one inline answer.
        let small = [(0, 100, 1), (64, 4097, 4095), (8001, 20_003, 4096)];
        assert_eq!(read(&small), Status::Success, "{case}");
        assert_eq!(b.inline_answers(), 1, "{case}: small READ answered inline");
        check(&dst, &small, "small");
        // Reposts keep working.
        for i in 0..20u64 {
            dst.clear();
            let p = [(i * 3, i * 1000 + 1, 4096)];
            assert_eq!(read(&p), Status::Success, "{case} repost {i}");
            check(&dst, &p, "repost");
        }
        assert_eq!(b.inline_answers(), 21, "{case}");
        // Over the limit: the engine path, same data.
        dst.clear();
        let big = [(5, 7, 16 * 1024 + 1)];
        assert_eq!(read(&big), Status::Success, "{case}");
        assert_eq!(
            b.inline_answers(),
            21,
            "{case}: 16 KiB + 1 went through the engine"
        );
        check(&dst, &big, "big");
        drop((a, b));
        drop((dst, far));
    }
}

#[test]
fn small_writes_with_device_memory_travel_inline() {
    let Some(ctx) = gpu() else { return };
    let src: Vec<u8> = (0..N).map(|i| (i * 11 % 253) as u8 ^ 0x3C).collect();
    let kinds = [
        (MEM_DRAM, MEM_VRAM),
        (MEM_VRAM, MEM_VRAM),
        (MEM_VRAM, MEM_DRAM),
    ];
    for (local_mem, remote_mem) in kinds {
        let case = format!("local {local_mem} remote {remote_mem}");
        // a writes to b: a's `mine` is local, b's `dst` remote.
        let (a, b) = backend_pair("a", "b", 10_000);
        let mine = Buf::new(&ctx, local_mem, &src);
        let mut dst = Buf::new(&ctx, remote_mem, &vec![0u8; N]);
        let (s, t) = (mine.addr(), dst.addr());
        let md = a.register_mem(&d(s, N as u64, 0), local_mem).unwrap();
        let (_, rt) = share_mem(&b, "b", &a, t, N as u64, remote_mem);
        let write = |pieces: &[(u64, u64, u64)]| {
            let l: Vec<_> = pieces.iter().map(|&(lo, _, n)| d(s + lo, n, md)).collect();
            let r: Vec<_> = pieces.iter().map(|&(_, ro, n)| d(t + ro, n, rt)).collect();
            let x = XferArgs {
                op: Op::Write,
                local: &l,
                local_mem,
                remote: &r,
                remote_mem,
                agent: "b",
                notif: Some(b"w"),
            };
            let mut h = 0;
            a.post_xfer(&x, &mut h).unwrap();
            let st = poll_done(&a, h);
            a.release_req(h).unwrap();
            st
        };
        // (local offset, remote offset, length): the remote side is what gets checked.
        let check = |dst: &Buf, pieces: &[(u64, u64, u64)], what: &str| {
            let got = dst.bytes();
            let mut want = vec![0u8; N];
            for &(lo, ro, n) in pieces {
                let (lo, ro, n) = (lo as usize, ro as usize, n as usize);
                want[ro..ro + n].copy_from_slice(&src[lo..lo + n]);
            }
            assert!(got == want, "{case}, {what}: destination differs");
        };
        let small = [(100, 0, 1), (4097, 64, 4095), (20_003, 8001, 4096)];
        assert_eq!(write(&small), Status::Success, "{case}");
        assert_eq!(b.inline_writes(), 1, "{case}: small WRITE taken inline");
        check(&dst, &small, "small");
        for i in 0..20u64 {
            dst.clear();
            let p = [(i * 1000 + 1, i * 3, 4096)];
            assert_eq!(write(&p), Status::Success, "{case} repost {i}");
            check(&dst, &p, "repost");
        }
        assert_eq!(b.inline_writes(), 21, "{case}");
        dst.clear();
        let big = [(7, 5, 16 * 1024 + 1)];
        assert_eq!(write(&big), Status::Success, "{case}");
        assert_eq!(
            b.inline_writes(),
            21,
            "{case}: 16 KiB + 1 went through the engine"
        );
        check(&dst, &big, "big");
        drop((a, b));
        drop((mine, dst));
    }
}

#[test]
fn transfers_to_ourselves_with_device_memory() {
    let Some(ctx) = gpu() else { return };
    let (a, _b) = backend_pair("a", "b", 10_000);
    let src: Vec<u8> = (0..N).map(|i| (i * 7 % 249) as u8 ^ 0x77).collect();
    for (from_mem, to_mem) in [
        (MEM_VRAM, MEM_VRAM),
        (MEM_DRAM, MEM_VRAM),
        (MEM_VRAM, MEM_DRAM),
    ] {
        let case = format!("{from_mem} -> {to_mem}");
        let from = Buf::new(&ctx, from_mem, &src);
        let mut to = Buf::new(&ctx, to_mem, &vec![0u8; N]);
        let mf = a
            .register_mem(&d(from.addr(), N as u64, 0), from_mem)
            .unwrap();
        let mt = a.register_mem(&d(to.addr(), N as u64, 0), to_mem).unwrap();
        let (af, at) = (a.load_local_md(mf).unwrap(), a.load_local_md(mt).unwrap());
        // WRITE moves local -> far, READ far -> local: each both ways round.
        for (op, local, lm, lmem, far, fm, fmem) in [
            (Op::Write, from.addr(), mf, from_mem, to.addr(), at, to_mem),
            (Op::Read, to.addr(), mt, to_mem, from.addr(), af, from_mem),
        ] {
            to.clear();
            let pieces = [
                (3u64, 5u64, 4093u64),
                (9000, 20_001, 16_384),
                (40_000, 60_000, 1),
            ];
            // (from offset, to offset, length): the local end is `from` for a WRITE.
            let ends = |p: &(u64, u64, u64)| match op {
                Op::Write => (p.0, p.1),
                Op::Read => (p.1, p.0),
            };
            let l: Vec<_> = pieces
                .iter()
                .map(|p| d(local + ends(p).0, p.2, lm))
                .collect();
            let r: Vec<_> = pieces.iter().map(|p| d(far + ends(p).1, p.2, fm)).collect();
            let x = XferArgs {
                op,
                local: &l,
                local_mem: lmem,
                remote: &r,
                remote_mem: fmem,
                agent: "a",
                notif: None,
            };
            let mut h = 0;
            assert_eq!(
                a.post_xfer(&x, &mut h).unwrap(),
                Status::Success,
                "{case} {op:?}"
            );
            a.release_req(h).unwrap();
            let mut want = vec![0u8; N];
            for &(s, t, n) in &pieces {
                want[t as usize..(t + n) as usize]
                    .copy_from_slice(&src[s as usize..(s + n) as usize]);
            }
            assert!(to.bytes() == want, "{case} {op:?}: destination differs");
        }
        // Overlapping ranges of one device region: refused, nothing moved.
        if from_mem == MEM_VRAM {
            let before = from.bytes();
            let l = [d(from.addr(), 8192, mf)];
            let r = [d(from.addr() + 4096, 8192, af)];
            let x = XferArgs {
                op: Op::Write,
                local: &l,
                local_mem: MEM_VRAM,
                remote: &r,
                remote_mem: MEM_VRAM,
                agent: "a",
                notif: None,
            };
            let mut h = 0;
            let err = a.post_xfer(&x, &mut h).unwrap_err().to_string();
            assert!(err.contains("overlapping"), "{err}");
            assert!(from.bytes() == before, "a refused copy changed the region");
        }
        a.unload_md(af).unwrap();
        a.unload_md(at).unwrap();
        a.deregister_mem(mf).unwrap();
        a.deregister_mem(mt).unwrap();
    }
}
