//! Agents on different GPUs of one host (one agent per GPU, as NIXL's users run them): VRAM of
//! one GPU written to and read from VRAM of the other through the engine, data verified; and
//! an agent refusing VRAM of a second GPU at `registerMem`, by name, instead of failing its
//! transfers later.
//!
//! Prints `SKIP` with fewer than two GPUs; `REQUIRE_GPU=1` fails without any GPU and
//! `REQUIRE_GPUS=2` without a second one.

use plugin_TCPX::backend::MEM_VRAM;
use plugin_TCPX::testing::{backend_pair, run_xfer};
use plugin_TCPX::xfer::{Desc, Op};
use plugin_TCPX::Status;
use tcpx_kernels::mem::DeviceBuffer;

#[path = "../../../ffi/tests/common/engine.rs"]
#[allow(dead_code)]
mod engine;

use engine::{gpu, second_gpu};

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
    let (a, b) = backend_pair("a", "b", 10_000);
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
fn an_agent_refuses_vram_of_a_second_gpu() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    let (a, _b) = backend_pair("a", "b", 10_000);
    let first = DeviceBuffer::new(&zero, 4096).unwrap();
    let other = DeviceBuffer::new(&one, 4096).unwrap();
    let md = a
        .register_mem(&desc(first.ptr(), 4096, 0, 0), MEM_VRAM)
        .unwrap();
    let e = a
        .register_mem(&desc(other.ptr(), 4096, 1, 0), MEM_VRAM)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("one GPU per agent") && e.contains("device 1"),
        "{e}"
    );
    // The agent's GPU stays its first one, even with nothing registered on it any more.
    a.deregister_mem(md).unwrap();
    let e = a
        .register_mem(&desc(other.ptr(), 4096, 1, 0), MEM_VRAM)
        .unwrap_err()
        .to_string();
    assert!(e.contains("device 0"), "{e}");
    a.register_mem(&desc(first.ptr(), 4096, 0, 0), MEM_VRAM)
        .unwrap();
}
