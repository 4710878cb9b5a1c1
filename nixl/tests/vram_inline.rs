//! Small READs and WRITEs with device memory at either end travel inline: the side that owns
//! device memory copies it into or out of the control frame (`ReadData`, or a `WriteAnnounce`
//! carrying its data); larger ones still go through the engine. Every combination of host and
//! device memory, pieces of odd sizes at odd offsets, data and untouched bytes verified.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use std::sync::Arc;

use cudarc::driver::CudaContext;
use plugin_TCPX::backend::XferArgs;
use plugin_TCPX::registry::{MEM_DRAM, MEM_VRAM};
use plugin_TCPX::testing::{backend_pair, desc as d, poll_done, share_mem};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::Status;
use tcpx_kernels::mem::DeviceBuffer;

#[path = "../../engine/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

use engine::{current_context, gpu, unbind_context};

const N: usize = 64 * 1024;

/// A transfer's arguments: `local` of memory kind `lm`, `remote` of `rm` at `agent`.
fn xfer<'a>(
    op: Op,
    local: &'a [Desc],
    lm: i32,
    remote: &'a [Desc],
    rm: i32,
    agent: &'a str,
    notif: Option<&'a [u8]>,
) -> XferArgs<'a> {
    XferArgs {
        op,
        local,
        local_mem: lm,
        remote,
        remote_mem: rm,
        agent,
        notif,
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

/// `op`s of 1 B .. 16 KiB between agents `a` and `b` with device memory at one end or both:
/// inline (counted by `b`), reposts included; 16 KiB + 1 through the engine. Pieces are
/// (source offset, destination offset, length); the destination is checked whole.
fn small_transfers_with_device_memory(op: Op) {
    let Some(ctx) = gpu() else { return };
    let src: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8 ^ 0x5A).collect();
    let kinds = [
        (MEM_DRAM, MEM_VRAM),
        (MEM_VRAM, MEM_VRAM),
        (MEM_VRAM, MEM_DRAM),
    ];
    for (local_mem, remote_mem) in kinds {
        let case = format!("{op:?} local {local_mem} remote {remote_mem}");
        let (a, b) = backend_pair("a", "b", 10_000);
        let inline = || match op {
            Op::Read => b.inline_answers(),
            Op::Write => b.inline_writes(),
        };
        // A WRITE goes from a's buffer to b's, a READ from b's to a's.
        let (src_mem, dst_mem) = match op {
            Op::Write => (local_mem, remote_mem),
            Op::Read => (remote_mem, local_mem),
        };
        let from = Buf::new(&ctx, src_mem, &src);
        let mut to = Buf::new(&ctx, dst_mem, &vec![0u8; N]);
        let (mine, theirs) = match op {
            Op::Write => (from.addr(), to.addr()),
            Op::Read => (to.addr(), from.addr()),
        };
        let md = a.register_mem(&d(mine, N as u64, 0), local_mem).unwrap();
        let (_, rd) = share_mem(&b, "b", &a, theirs, N as u64, remote_mem);
        let run = |pieces: &[(u64, u64, u64)]| {
            // (local offset, remote offset) of each piece.
            let ends = |p: &(u64, u64, u64)| match op {
                Op::Write => (p.0, p.1),
                Op::Read => (p.1, p.0),
            };
            let l: Vec<_> = pieces
                .iter()
                .map(|p| d(mine + ends(p).0, p.2, md))
                .collect();
            let r: Vec<_> = pieces
                .iter()
                .map(|p| d(theirs + ends(p).1, p.2, rd))
                .collect();
            let x = xfer(op, &l, local_mem, &r, remote_mem, "b", Some(b"n"));
            let mut h = 0;
            a.post_xfer(&x, &mut h).unwrap();
            let st = poll_done(&a, h);
            a.release_req(h).unwrap();
            st
        };
        let check = |to: &Buf, pieces: &[(u64, u64, u64)], what: &str| {
            let mut want = vec![0u8; N];
            for &(s, t, n) in pieces {
                let (s, t, n) = (s as usize, t as usize, n as usize);
                want[t..t + n].copy_from_slice(&src[s..s + n]);
            }
            assert!(to.bytes() == want, "{case}, {what}: destination differs");
        };
        // Three pieces, 8 KiB + 1 in all (default limits 16 KiB): one inline frame.
        let small = [(100, 0, 1), (4097, 64, 4095), (20_003, 8001, 4096)];
        assert_eq!(run(&small), Status::Success, "{case}");
        assert_eq!(inline(), 1, "{case}: small transfer inline");
        check(&to, &small, "small");
        for i in 0..20u64 {
            to.clear();
            let p = [(i * 1000 + 1, i * 3, 4096)];
            assert_eq!(run(&p), Status::Success, "{case} repost {i}");
            check(&to, &p, "repost");
        }
        assert_eq!(inline(), 21, "{case}");
        // Over the limit: the engine path, same data.
        to.clear();
        let big = [(7, 5, 16 * 1024 + 1)];
        assert_eq!(run(&big), Status::Success, "{case}");
        assert_eq!(inline(), 21, "{case}: 16 KiB + 1 went through the engine");
        check(&to, &big, "big");
        drop((a, b));
        drop((from, to));
    }
}

#[test]
fn small_reads_with_device_memory_travel_inline() {
    small_transfers_with_device_memory(Op::Read);
}

#[test]
fn small_writes_with_device_memory_travel_inline() {
    small_transfers_with_device_memory(Op::Write);
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
            let x = xfer(op, &l, lmem, &r, fmem, "a", None);
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
        // A good piece, then overlapping ranges of one device region: refused before
        // anything moved.
        if from_mem == MEM_VRAM {
            let before = from.bytes();
            let l = [d(from.addr() + 32768, 100, mf), d(from.addr(), 8192, mf)];
            let r = [
                d(from.addr() + 50000, 100, af),
                d(from.addr() + 4096, 8192, af),
            ];
            let x = xfer(Op::Write, &l, MEM_VRAM, &r, MEM_VRAM, "a", None);
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

/// The calling thread's current CUDA context (its CUDA runtime device) is what it was after
/// registrations, inline and engine transfers with device memory, and copies to ourselves.
#[test]
fn the_callers_current_context_is_left_alone() {
    let Some(ctx) = gpu() else { return };
    let (a, b) = backend_pair("a", "b", 10_000);
    const BIG: usize = 2 << 20;
    let src: Vec<u8> = (0..BIG).map(|i| (i * 3 % 241) as u8).collect();
    let mine = Buf::new(&ctx, MEM_VRAM, &src);
    let theirs = Buf::new(&ctx, MEM_VRAM, &vec![0u8; BIG]);
    // From here on this thread has no current context.
    unbind_context();
    let md = a
        .register_mem(&d(mine.addr(), BIG as u64, 0), MEM_VRAM)
        .unwrap();
    let (_, rt) = share_mem(&b, "b", &a, theirs.addr(), BIG as u64, MEM_VRAM);
    assert!(
        current_context().is_null(),
        "registration changed the current context"
    );
    for (len, what) in [(4096u64, "inline WRITE"), (BIG as u64, "engine WRITE")] {
        let (l, r) = ([d(mine.addr(), len, md)], [d(theirs.addr(), len, rt)]);
        let x = xfer(Op::Write, &l, MEM_VRAM, &r, MEM_VRAM, "b", None);
        let mut h = 0;
        a.post_xfer(&x, &mut h).unwrap();
        assert_eq!(poll_done(&a, h), Status::Success, "{what}");
        a.release_req(h).unwrap();
        assert!(
            current_context().is_null(),
            "{what} changed the current context"
        );
    }
    let alias = a.load_local_md(md).unwrap();
    let (l, r) = (
        [d(mine.addr(), 4096, md)],
        [d(mine.addr() + 8192, 4096, alias)],
    );
    let x = xfer(Op::Write, &l, MEM_VRAM, &r, MEM_VRAM, "a", None);
    let mut h = 0;
    assert_eq!(a.post_xfer(&x, &mut h).unwrap(), Status::Success);
    a.release_req(h).unwrap();
    assert!(
        current_context().is_null(),
        "a copy to ourselves changed the current context"
    );
    assert!(theirs.bytes() == src, "engine WRITE data");
}
