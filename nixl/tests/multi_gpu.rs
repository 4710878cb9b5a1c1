//! Agents on different GPUs of one host (one agent per GPU, as NIXL's users run them, each
//! named by its `gpu` parameter): VRAM of one GPU written to and read from VRAM of the other
//! through the engine, data verified; an agent's GPU is known at creation (the parameter, else
//! the device current on the creating thread), and VRAM of another GPU is refused at
//! `registerMem`, by name, instead of failing its transfers later; an agent on GPU 0 created
//! and driven while device 1 is current moves its VRAM (the engine makes its GPU current
//! around the handshake and registrations, and puts the caller's context back).
//!
//! Prints `SKIP` with fewer than two GPUs; `REQUIRE_GPU=1` fails without any GPU and
//! `REQUIRE_GPUS=2` without a second one.

use plugin_TCPX::registry::{MEM_DRAM, MEM_VRAM};
use plugin_TCPX::testing::{backend_with, run_xfer, share_mem};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::Status;
use tcpx_kernels::mem::DeviceBuffer;

#[path = "../../engine/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

use engine::{current_context, gpu, second_gpu};

/// Over the inline limits, so the engine (unpack kernels, staging) carries it.
const N: usize = (3 << 20) + 4097;

fn desc(addr: u64, len: u64, dev: u64, md: usize) -> Desc {
    Desc {
        addr,
        len,
        dev_id: dev,
        md,
    }
}

fn read_all(b: &DeviceBuffer) -> Vec<u8> {
    let mut v = vec![0u8; b.len()];
    b.read(0, &mut v).unwrap();
    v
}

#[test]
fn agents_on_two_gpus_move_vram_between_them() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    let b = backend_with("b", 10_000, &[("gpu", "1")]);
    let a = backend_with("a", 10_000, &[("gpu", "0")]);
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    let src: Vec<u8> = (0..N).map(|i| (i * 13 % 241) as u8 ^ 0x3C).collect();
    // a's buffer on GPU 0, b's on GPU 1.
    let mut mine = DeviceBuffer::new(&zero, N).unwrap();
    let mut theirs = DeviceBuffer::new(&one, N).unwrap();
    let md = a
        .register_mem(&desc(mine.ptr(), N as u64, 0, 0), MEM_VRAM)
        .unwrap();
    let bd = b
        .register_mem(&desc(theirs.ptr(), N as u64, 1, 0), MEM_VRAM)
        .unwrap();
    let rd = a
        .load_remote_md(
            &desc(theirs.ptr(), N as u64, 1, 0),
            &b.public_data(bd).unwrap(),
            MEM_VRAM,
            "b",
        )
        .unwrap();
    // Two pieces at odd offsets; the bytes around them must stay untouched.
    let pieces = [
        (5u64, 11u64, (2 << 20) + 3),
        (3 << 20, (2 << 20) + 100, 4097),
    ];
    let (a_addr, b_addr) = (mine.ptr(), theirs.ptr());
    for op in [Op::Write, Op::Read] {
        // A WRITE moves a's bytes to b, a READ b's bytes to a.
        let (from, to) = match op {
            Op::Write => (&mut mine, &mut theirs),
            Op::Read => (&mut theirs, &mut mine),
        };
        from.write(0, &src).unwrap();
        to.fill(0).unwrap();
        // (source offset, destination offset) in local/remote terms.
        let ends = |p: &(u64, u64, u64)| match op {
            Op::Write => (p.0, p.1),
            Op::Read => (p.1, p.0),
        };
        let l: Vec<_> = pieces
            .iter()
            .map(|p| desc(a_addr + ends(p).0, p.2, 0, md))
            .collect();
        let r: Vec<_> = pieces
            .iter()
            .map(|p| desc(b_addr + ends(p).1, p.2, 1, rd))
            .collect();
        let status = run_xfer(&a, op, (&l, MEM_VRAM), (&r, MEM_VRAM), "b");
        assert_eq!(status, Status::Success, "{op:?}");
        let mut want = vec![0u8; N];
        for &(s, t, n) in &pieces {
            let (s, t, n) = (s as usize, t as usize, n as usize);
            want[t..t + n].copy_from_slice(&src[s..s + n]);
        }
        assert!(read_all(to) == want, "{op:?}: destination differs");
    }
}

#[test]
fn an_agents_gpu_is_the_current_device_at_creation_unless_named() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    let on_zero = DeviceBuffer::new(&zero, 4096).unwrap();
    let on_one = DeviceBuffer::new(&one, 4096).unwrap();
    // Created while device 1 is current: its GPU is 1.
    one.bind_to_thread().unwrap();
    let a = backend_with("a", 10_000, &[]);
    assert_eq!(a.config().gpu, Some(1));
    let e = a
        .register_mem(&desc(on_zero.ptr(), 4096, 0, 0), MEM_VRAM)
        .unwrap_err();
    assert_eq!(e.status(), Status::InvalidParam);
    let e = e.to_string();
    assert!(
        e.contains("one GPU per agent") && e.contains("device 0") && e.contains("device 1"),
        "{e}"
    );
    assert!(e.contains("gpu"), "names the parameter: {e}");
    a.register_mem(&desc(on_one.ptr(), 4096, 1, 0), MEM_VRAM)
        .unwrap();
    // Named: the parameter wins over the current device.
    let b = backend_with("b", 10_000, &[("gpu", "0")]);
    assert_eq!(b.config().gpu, Some(0));
    let e = b
        .register_mem(&desc(on_one.ptr(), 4096, 1, 0), MEM_VRAM)
        .unwrap_err()
        .to_string();
    assert!(e.contains("device 1") && e.contains("device 0"), "{e}");
    b.register_mem(&desc(on_zero.ptr(), 4096, 0, 0), MEM_VRAM)
        .unwrap();
}

/// The session on GPU 0 while device 1 is current on every calling thread: the engine binds
/// the handshake and the registrations to GPU 0 (TCPX binds comms and CUDA registrations to
/// the device current at those calls) and leaves the caller's context as it found it.
#[test]
fn an_agent_on_gpu_0_moves_its_vram_while_device_1_is_current() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    let src: Vec<u8> = (0..N).map(|i| (i * 7 % 251) as u8 ^ 0x5A).collect();
    let mut dst = vec![0u8; N];
    let mut mine = DeviceBuffer::new(&zero, N).unwrap();
    mine.write(0, &src).unwrap();
    // (Buffer calls bind their own context: device 1 is made current after each.)
    one.bind_to_thread().unwrap();
    let caller = current_context();
    let b = backend_with("b", 10_000, &[("gpu", "0")]);
    let a = backend_with("a", 10_000, &[("gpu", "0")]);
    a.load_remote_conn_info("b", b.conn_info()).unwrap();
    let md = a
        .register_mem(&desc(mine.ptr(), N as u64, 0, 0), MEM_VRAM)
        .unwrap();
    let (_, rd) = share_mem(&b, "b", &a, dst.as_mut_ptr() as u64, N as u64, MEM_DRAM);
    a.connect("b").unwrap();
    assert_eq!(
        current_context(),
        caller,
        "connect left the caller's context"
    );
    let l = [desc(mine.ptr(), N as u64, 0, md)];
    let r = [desc(dst.as_mut_ptr() as u64, N as u64, 0, rd)];
    let status = run_xfer(&a, Op::Write, (&l, MEM_VRAM), (&r, MEM_DRAM), "b");
    assert_eq!(status, Status::Success);
    assert!(dst == src, "destination differs");
    assert_eq!(
        current_context(),
        caller,
        "the WRITE left the caller's context"
    );
    mine.fill(0).unwrap();
    one.bind_to_thread().unwrap();
    let status = run_xfer(&a, Op::Read, (&l, MEM_VRAM), (&r, MEM_DRAM), "b");
    assert_eq!(status, Status::Success);
    assert_eq!(
        current_context(),
        caller,
        "the READ left the caller's context"
    );
    assert!(read_all(&mine) == src, "READ back differs");
}
