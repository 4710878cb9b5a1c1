//! The engine's GPU path end to end over the embedded `tcpxsock` (TCPX receive path:
//! device receives land in bounce pages, the unpack kernel moves them, `irecvConsumed`
//! follows the kernel's event): VRAM→VRAM, DRAM→VRAM, VRAM→DRAM, data verified.
//!
//! Prints `SKIP` without a CUDA driver; `REQUIRE_GPU=1` turns the skip into a failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use cudarc::driver::CudaContext;
use tcpx::engine::{Config, Direction, Memory, Progress, Segment, Session};
use tcpx_kernels::mem::DeviceBuffer;

use common::engine::{current_context, gpu, second_gpu, unbind_context};

fn pair() -> (Session, Session) {
    pair_on(Default::default(), 0, 0)
}

/// Two sessions whose GPUs are `gpu_a` and `gpu_b`, over tcpxsock with shuffled bounce pages
/// and `sock`'s other settings.
fn pair_on(sock: tcpx_sock::config::Config, gpu_a: i32, gpu_b: i32) -> (Session, Session) {
    let sock = tcpx_sock::config::Config {
        shuffle: true,
        ..sock
    };
    let cfg = |gpu| Config {
        channels: 2,
        timeout: Duration::from_secs(20),
        gpu: Some(gpu),
        ..Config::default()
    };
    common::engine::loopback_pair_with(sock, cfg(gpu_a), cfg(gpu_b))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 11) as u8 ^ seed)
        .collect()
}

const LENS: [u64; 6] = [1, 4095, 4097, 524_288, 524_289 + 13, 3 << 20];

fn segments(mem: tcpx::MemId) -> Vec<Segment> {
    common::engine::segments(mem, &LENS, 5)
}

fn total() -> usize {
    LENS.iter().map(|&l| l as usize + 5).sum()
}

enum Buf {
    Host(Vec<u8>),
    /// Device memory and the device it is on.
    Dev(DeviceBuffer, i32),
}

impl Buf {
    fn new(ctx: &Arc<CudaContext>, dev: bool, content: &[u8]) -> Buf {
        if dev {
            let mut d = DeviceBuffer::new(ctx, content.len()).unwrap();
            d.write(0, content).unwrap();
            Buf::Dev(d, ctx.ordinal() as i32)
        } else {
            Buf::Host(content.to_vec())
        }
    }

    fn register(&mut self, s: &mut Session) -> tcpx::MemId {
        // SAFETY: the buffers outlive the sessions' use of them.
        unsafe {
            match self {
                Buf::Host(v) => s.register(v.as_mut_ptr().cast(), v.len(), Memory::Host),
                Buf::Dev(d, device) => {
                    let device = *device;
                    s.register(d.ptr() as *mut _, d.len(), Memory::Cuda { device })
                }
            }
        }
        .unwrap()
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Buf::Host(v) => v.clone(),
            Buf::Dev(d, _) => {
                let mut v = vec![0u8; d.len()];
                d.read(0, &mut v).unwrap();
                v
            }
        }
    }
}

/// Polls both sides until both transfers are done (bounded).
fn finish(a: &mut Session, ax: tcpx::XferId, b: &mut Session, bx: tcpx::XferId) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut ad, mut bd) = (false, false);
    while !(ad && bd) {
        assert!(Instant::now() < deadline, "transfer timed out");
        ad = ad || matches!(a.poll(ax).unwrap(), Progress::Done { .. });
        bd = bd || matches!(b.poll(bx).unwrap(), Progress::Done { .. });
    }
}

/// Moves the test's segments of `sm` on `a` into `dm` on `b`, waits, releases both, and
/// checks every segment of the destination's bytes (as `read` returns them) against `data`.
fn send_and_check(
    a: &mut Session,
    sm: tcpx::MemId,
    b: &mut Session,
    dm: tcpx::MemId,
    data: &[u8],
    read: impl FnOnce() -> Vec<u8>,
) {
    let ax = a.post(Direction::Send, &segments(sm)).unwrap();
    let bx = b.post(Direction::Recv, &segments(dm)).unwrap();
    finish(a, ax, b, bx);
    a.release(ax).unwrap();
    b.release(bx).unwrap();
    let got = read();
    for s in segments(dm) {
        let r = s.offset as usize..(s.offset + s.len) as usize;
        assert!(got[r.clone()] == data[r], "segment at {} differs", s.offset);
    }
}

fn transfer(ctx: &Arc<CudaContext>, src_dev: bool, dst_dev: bool) {
    transfer_between(ctx, ctx, src_dev, dst_dev);
}

/// As `transfer`, the sender's device buffer made on `src_ctx`'s device and the receiver's
/// on `dst_ctx`'s.
fn transfer_between(
    src_ctx: &Arc<CudaContext>,
    dst_ctx: &Arc<CudaContext>,
    src_dev: bool,
    dst_dev: bool,
) {
    let (mut a, mut b) = pair_on(
        Default::default(),
        src_ctx.ordinal() as i32,
        dst_ctx.ordinal() as i32,
    );
    let n = total();
    let data = pattern(n, 7);
    let mut src = Buf::new(src_ctx, src_dev, &data);
    let mut dst = Buf::new(dst_ctx, dst_dev, &vec![0u8; n]);
    let (sm, dm) = (src.register(&mut a), dst.register(&mut b));
    for round in 0..3 {
        let ax = a.post(Direction::Send, &segments(sm)).unwrap();
        let bx = b.post(Direction::Recv, &segments(dm)).unwrap();
        finish(&mut a, ax, &mut b, bx);
        a.release(ax).unwrap();
        b.release(bx).unwrap();
        let got = dst.bytes();
        for s in segments(dm) {
            let r = s.offset as usize..(s.offset + s.len) as usize;
            assert!(
                got[r.clone()] == data[r],
                "round {round}: segment at {} differs",
                s.offset
            );
            let gap = (s.offset + s.len) as usize..(s.offset + s.len + 5) as usize;
            assert!(
                got[gap].iter().all(|&x| x == 0),
                "bytes between segments were written"
            );
        }
    }
}

#[test]
fn vram_to_vram() {
    if let Some(ctx) = gpu() {
        transfer(&ctx, true, true);
    }
}

#[test]
fn dram_to_vram() {
    if let Some(ctx) = gpu() {
        transfer(&ctx, false, true);
    }
}

#[test]
fn vram_to_dram() {
    if let Some(ctx) = gpu() {
        transfer(&ctx, true, false);
    }
}

/// The sender's memory on one GPU and the receiver's on another, in one process (as a host
/// of several GPUs runs one session per GPU): each session's unpack kernels and staging
/// copies run on its own device, both reading the plugin's bounce pages mapped into every
/// device.
#[test]
fn vram_between_two_gpus() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    transfer_between(&zero, &one, true, true);
    transfer_between(&one, &zero, true, true);
    transfer_between(&zero, &one, false, true);
    transfer_between(&one, &zero, true, false);
}

/// A session drives one GPU: registering memory of a second one is refused by name, and the
/// session keeps working with the first.
#[test]
fn a_session_refuses_a_second_gpu() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    let (mut a, mut b) = pair();
    let n = total();
    let data = pattern(n, 3);
    let mut first = Buf::new(&zero, true, &data);
    let other = DeviceBuffer::new(&one, 4096).unwrap();
    let sm = first.register(&mut a);
    // SAFETY: `other` outlives the (refused) registration.
    let e = unsafe {
        a.register(
            other.ptr() as *mut _,
            other.len(),
            Memory::Cuda { device: 1 },
        )
    }
    .unwrap_err();
    assert!(e.to_string().contains("one GPU"), "{e}");
    let mut dst = Buf::new(&zero, false, &vec![0u8; n]);
    let dm = dst.register(&mut b);
    send_and_check(&mut a, sm, &mut b, dm, &data, || dst.bytes());
}

/// Registrations the CUDA driver contradicts are refused by name before anything is opened
/// for them: host memory (pageable or pinned) as device memory, device memory as host memory,
/// a length past the end of the allocation, a GPU the machine does not have. The session then
/// takes good registrations on GPU 0 and moves data with them.
#[test]
fn registrations_the_driver_contradicts_are_refused() {
    let Some(ctx) = gpu() else { return };
    ctx.bind_to_thread().unwrap();
    let (mut a, mut b) = pair();
    let dev = DeviceBuffer::new(&ctx, 64 << 10).unwrap();
    let mut pageable = vec![0u8; 64 << 10];
    let pinned = tcpx_kernels::mem::MappedHostBuffer::new(&ctx, 64 << 10).unwrap();
    let gpus = CudaContext::device_count().unwrap();
    let cuda0 = Memory::Cuda { device: 0 };
    let dptr = dev.ptr() as *mut std::ffi::c_void;
    // Pageable memory is unknown to the driver, or host memory where it tracks it (HMM).
    let pageable_why: &[&str] = &["not memory the CUDA driver knows", "is host memory"];
    let cases: [(*mut std::ffi::c_void, usize, Memory, &[&str]); 5] = [
        (pageable.as_mut_ptr().cast(), 4096, cuda0, pageable_why),
        (pinned.host_ptr().cast(), 4096, cuda0, &["is host memory"]),
        (dptr, (64 << 10) + 1, cuda0, &["past the end"]),
        (dptr, 4096, Memory::Host, &["is device memory of GPU 0"]),
        (dptr, 4096, Memory::Cuda { device: gpus }, &["GPU(s)"]),
    ];
    // With a second GPU: GPU 0's memory named as GPU 1's is refused before GPU 1 is opened
    // for the session (else GPU 0's registrations below would be refused as another GPU's).
    let wrong_gpu: &[(*mut std::ffi::c_void, usize, Memory, &[&str])] = if gpus >= 2 {
        &[(
            dptr,
            4096,
            Memory::Cuda { device: 1 },
            &["is memory of GPU 0"],
        )]
    } else {
        &[]
    };
    for &(ptr, len, memory, why) in cases.iter().chain(wrong_gpu) {
        // SAFETY: every range is refused before the session touches it.
        let e = unsafe { a.register(ptr, len, memory) }.unwrap_err();
        assert!(matches!(e, tcpx::Error::BadMemory(_)), "{memory:?}: {e}");
        let text = e.to_string();
        assert!(why.iter().any(|w| text.contains(w)), "{memory:?}: {e}");
    }
    // Nothing was opened for the refused ones: GPU 0 is still free to be this session's.
    let n = total();
    let data = pattern(n, 11);
    let mut src = Buf::new(&ctx, true, &data);
    let mut dst = Buf::new(&ctx, true, &vec![0u8; n]);
    let (sm, dm) = (src.register(&mut a), dst.register(&mut b));
    send_and_check(&mut a, sm, &mut b, dm, &data, || dst.bytes());
    drop((dev, pinned));
}

/// Device memory mapped in pieces back to back (`cuMemCreate` + `cuMemMap`, as PyTorch's
/// expandable segments allocate it) registers as one region, and data lands in it across the
/// seams; a length past the last mapped piece is refused.
#[test]
fn device_memory_mapped_in_pieces_registers_whole() {
    use cudarc::driver::{result as cu, sys};
    let Some(ctx) = gpu() else { return };
    ctx.bind_to_thread().unwrap();
    // SAFETY: plain-data driver structs; zero is a valid start for every field.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    let mut gran = 0usize;
    let ok = sys::CUresult::CUDA_SUCCESS;
    // SAFETY: `gran` is a local out-pointer and `prop` a filled-in allocation description;
    // the context is bound to this thread.
    unsafe {
        assert_eq!(
            sys::cuMemGetAllocationGranularity(
                &mut gran,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM
            ),
            ok
        );
    }
    let n = total();
    let pieces = n.div_ceil(gran);
    // One piece more reserved than mapped: the address space after the last piece is
    // reserved but holds no memory.
    let mut va: sys::CUdeviceptr = 0;
    // SAFETY: `va` is a local out-pointer; the size is a multiple of the granularity the
    // driver reported, as `cuMemAddressReserve` requires; freed at the end of the test.
    unsafe {
        assert_eq!(
            sys::cuMemAddressReserve(&mut va, (pieces + 1) * gran, gran, 0, 0),
            ok
        );
    }
    let mut handles = Vec::new();
    for i in 0..pieces {
        let mut h: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: `h` is a local out-pointer; piece `i` (one granule) lies inside the range
        // reserved above (`pieces + 1` granules), which nothing else maps.
        unsafe {
            assert_eq!(sys::cuMemCreate(&mut h, gran, &prop, 0), ok);
            assert_eq!(sys::cuMemMap(va + (i * gran) as u64, gran, 0, h, 0), ok);
        }
        handles.push(h);
    }
    // SAFETY: a plain C struct of integers and enums whose zero value is a valid variant.
    let mut access: sys::CUmemAccessDesc = unsafe { std::mem::zeroed() };
    access.location = prop.location;
    access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    // SAFETY: `va..va + pieces * gran` is exactly the range mapped above; `access` is one
    // descriptor, as the count says.
    unsafe { assert_eq!(sys::cuMemSetAccess(va, pieces * gran, &access, 1), ok) };
    let mapped = (pieces * gran) as u64;
    let cuda0 = Memory::Cuda { device: 0 };
    assert!(pieces >= 2, "the region spans several pieces");
    tcpx::engine::check_registration(va, mapped, cuda0).unwrap();
    tcpx::engine::check_registration(va + 100, mapped - 100, cuda0).unwrap();
    let e = tcpx::engine::check_registration(va, mapped + 1, cuda0).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");

    let (mut a, mut b) = pair();
    let data = pattern(n, 23);
    let mut src = Buf::new(&ctx, false, &data);
    let sm = src.register(&mut a);
    // SAFETY: the mapping outlives the session's use of it.
    let dm = unsafe { b.register(va as usize as *mut _, n, cuda0) }.unwrap();
    send_and_check(&mut a, sm, &mut b, dm, &data, || {
        let mut got = vec![0u8; n];
        // SAFETY: the mapping holds n bytes; the transfer into it has finished.
        unsafe { cu::memcpy_dtoh_sync(&mut got, va) }.unwrap();
        got
    });
    b.deregister(dm).unwrap();
    drop((a, b));
    // SAFETY: both sessions are dropped, so nothing uses the mapping any more; each handle
    // and the reservation were made above and are released exactly once.
    unsafe {
        assert_eq!(sys::cuMemUnmap(va, pieces * gran), ok);
        for h in handles {
            assert_eq!(sys::cuMemRelease(h), ok);
        }
        assert_eq!(sys::cuMemAddressFree(va, (pieces + 1) * gran), ok);
    }
}

/// A session's GPU work runs on the caller's thread; the caller's current CUDA context (its
/// runtime device) is what it was afterwards: after registering device memory, transfers,
/// and dropping the sessions.
#[test]
fn the_callers_current_context_is_put_back() {
    let Some(ctx) = gpu() else { return };
    let (mut a, mut b) = pair();
    let n = total();
    let data = pattern(n, 9);
    let mut src = Buf::new(&ctx, true, &data);
    let mut dst = Buf::new(&ctx, true, &vec![0u8; n]);
    unbind_context();
    let (sm, dm) = (src.register(&mut a), dst.register(&mut b));
    assert!(
        current_context().is_null(),
        "registration left a context current"
    );
    let ax = a.post(Direction::Send, &segments(sm)).unwrap();
    let bx = b.post(Direction::Recv, &segments(dm)).unwrap();
    finish(&mut a, ax, &mut b, bx);
    assert!(
        current_context().is_null(),
        "a transfer left a context current"
    );
    drop((a, b));
    assert!(
        current_context().is_null(),
        "dropping the sessions left a context current"
    );
    let got = dst.bytes();
    for s in segments(dm) {
        let r = s.offset as usize..(s.offset + s.len) as usize;
        assert!(got[r.clone()] == data[r], "segment at {} differs", s.offset);
    }
}

/// Registers `len` bytes at `offset` into a device allocation (PyTorch's tensors rarely start
/// on a 4 KiB boundary; TCPX registers CUDA memory only from one).
fn register_at(s: &mut Session, d: &DeviceBuffer, offset: usize, len: usize) -> tcpx::MemId {
    // SAFETY: the buffer outlives the session's use of it; the range lies inside it.
    unsafe {
        s.register(
            (d.ptr() as usize + offset) as *mut _,
            len,
            Memory::Cuda { device: 0 },
        )
    }
    .unwrap()
}

/// VRAM→VRAM through regions 512 bytes into their allocations: the engine registers them from
/// the aligned address below (tcpxsock, like TCPX, refuses unaligned CUDA registrations) and
/// every byte lands where the caller's offsets say.
#[test]
fn unaligned_device_regions_move_data() {
    let Some(ctx) = gpu() else { return };
    let (mut a, mut b) = pair();
    let n = total();
    let data = pattern(n, 11);
    let mut src = DeviceBuffer::new(&ctx, n + 512).unwrap();
    src.write(512, &data).unwrap();
    let dst = {
        let mut d = DeviceBuffer::new(&ctx, n + 512).unwrap();
        d.write(0, &vec![0u8; n + 512]).unwrap();
        d
    };
    let sm = register_at(&mut a, &src, 512, n);
    let dm = register_at(&mut b, &dst, 512, n);
    send_and_check(&mut a, sm, &mut b, dm, &data, || {
        let mut v = vec![0u8; n + 512];
        dst.read(0, &mut v).unwrap();
        assert!(
            v[..512].iter().all(|&x| x == 0),
            "bytes before the region written"
        );
        v.split_off(512)
    });
}

/// TCPX's bounce pages are GPU memory: with tcpxsock placing them in device memory, and with
/// fragments of odd lengths at odd offsets plus bytes the plugin writes straight into the
/// buffer with no entry (gaps in the list), every transfer direction still arrives intact.
#[test]
fn device_bounce_pages_and_odd_fragments_with_gaps() {
    let Some(ctx) = gpu() else { return };
    for sock in [
        tcpx_sock::config::Config {
            bounce_device: true,
            ..Default::default()
        },
        tcpx_sock::config::Config {
            odd_fragments: true,
            linear_bytes: 3000,
            ..Default::default()
        },
        tcpx_sock::config::Config {
            bounce_device: true,
            odd_fragments: true,
            linear_bytes: 777,
            ..Default::default()
        },
    ] {
        for (src_dev, dst_dev) in [(true, true), (false, true), (true, false)] {
            let (mut a, mut b) = pair_on(sock.clone(), 0, 0);
            let n = total();
            let data = pattern(n, 5);
            let mut src = Buf::new(&ctx, src_dev, &data);
            let mut dst = Buf::new(&ctx, dst_dev, &vec![0u8; n]);
            let (sm, dm) = (src.register(&mut a), dst.register(&mut b));
            send_and_check(&mut a, sm, &mut b, dm, &data, || dst.bytes());
        }
    }
    tcpx_sock::config::configure(Default::default());
}

/// A session on GPU 0 created, driven and dropped while GPU 1 is current on the calling
/// thread (TCPX binds comms and registrations to the current GPU, so the session makes its
/// own current around those calls): data arrives, and GPU 1 is current again afterwards.
#[test]
fn the_sessions_gpu_is_used_whatever_the_thread_has_current() {
    let (Some(zero), Some(one)) = (gpu(), second_gpu()) else {
        return;
    };
    one.bind_to_thread().unwrap();
    let before = current_context();
    let (mut a, mut b) = pair_on(
        tcpx_sock::config::Config {
            bounce_device: true,
            ..Default::default()
        },
        0,
        0,
    );
    assert_eq!(
        current_context(),
        before,
        "the handshake changed the current context"
    );
    let n = total();
    let data = pattern(n, 13);
    let mut src = Buf::new(&zero, true, &data);
    let mut dst = Buf::new(&zero, true, &vec![0u8; n]);
    one.bind_to_thread().unwrap();
    let (sm, dm) = (src.register(&mut a), dst.register(&mut b));
    assert_eq!(
        current_context(),
        before,
        "registration changed the current context"
    );
    send_and_check(&mut a, sm, &mut b, dm, &data, || dst.bytes());
    one.bind_to_thread().unwrap();
    drop((a, b));
    assert_eq!(current_context(), before);
    tcpx_sock::config::configure(Default::default());
}
