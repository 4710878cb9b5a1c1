//! CUDA buffers through the plugin, over 127.0.0.1 in this process. GPU tests print
//! `SKIP: <reason>` and return without a GPU; `REQUIRE_GPU=1` turns a skip into a failure.
//! CUDA receives are rebuilt on the CPU from the published LoadMeta and the bounce region's
//! host view (`unpack_cpu`), as the GPU kernel would.

mod common;

use core::ffi::{c_int, c_void};
use std::sync::Arc;

use common::*;
use cudarc::driver::{result as cu, sys, CudaContext};
use tcpx_core::abi::{result, NET_DEVICE_HOST, NET_DEVICE_UNPACK, PTR_CUDA, PTR_HOST};
use tcpx_core::unpack::{slot_of, unpack_cpu, UnpackDevHandle};

const BOUNCE: usize = 8 << 20;

/// The plugin's mode is per process: host device on CPU-only boxes, UNPACK with CUDA. CUDA
/// sends are staged by the staging kernel here (`TCPX_SOCK_STAGE_KERNEL=1`), and by the copy
/// engine where a source is not 16-byte aligned (every third send of
/// `device_to_device_lands_in_bounce_pages`); the engine's GPU tests run the default (the copy
/// engine for all).
/// The kernels' idle time is short here, so they stop and are relaunched all the time (the
/// hand-off between a kernel going idle and a share being queued is what this exercises).
fn setup() {
    init_with(tcpx_sock::Config {
        shuffle: true,
        bounce_bytes: BOUNCE,
        stage_kernel: tcpx_sock::StageKernel::On,
        stage_idle_us: 20,
        ..tcpx_sock::Config::default()
    });
}

/// Shares a kernel-staged send of `len` bytes queues: one per data socket it spreads over.
fn shares_of(len: usize) -> u64 {
    let cfg = tcpx_sock::Config::default();
    (len.div_ceil(cfg.chunk_bytes) as u64).min(cfg.nsocks as u64)
}

/// Device 0's primary context, bound to this thread; `None` (after printing SKIP) without one.
fn gpu(test: &str) -> Option<Arc<CudaContext>> {
    if tcpx_sock::cuda::present() {
        if let Ok(c) = CudaContext::new(0) {
            return Some(c);
        }
    }
    assert!(
        std::env::var("REQUIRE_GPU").as_deref() != Ok("1"),
        "REQUIRE_GPU=1 but no CUDA device ({test})"
    );
    println!("SKIP: {test}: no CUDA driver or device");
    None
}

/// Device memory freed on drop.
struct Dev(u64, usize);

impl Dev {
    fn zeroed(len: usize) -> Dev {
        // SAFETY: plain allocation in the bound context.
        let p = unsafe { cu::malloc_sync(len.max(1)) }.unwrap();
        // SAFETY: the range is this allocation.
        unsafe { cu::memset_d8_sync(p, 0, len.max(1)) }.unwrap();
        Dev(p, len)
    }
    fn from(data: &[u8]) -> Dev {
        Dev::from_at(data, 0)
    }
    /// `data` at byte `at` of a fresh allocation (an unaligned source when `at` is odd).
    fn from_at(data: &[u8], at: usize) -> Dev {
        let d = Dev::zeroed(data.len() + at);
        if !data.is_empty() {
            // SAFETY: the destination holds at + data.len() bytes.
            unsafe { cu::memcpy_htod_sync(d.0 + at as u64, data) }.unwrap();
        }
        d
    }
    /// Device address `at` bytes into the allocation.
    fn ptr_at(&self, at: usize) -> *mut c_void {
        (self.0 + at as u64) as usize as *mut c_void
    }
    fn read(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.1];
        if self.1 > 0 {
            // SAFETY: the source holds self.1 bytes.
            unsafe { cu::memcpy_dtoh_sync(&mut v, self.0) }.unwrap();
        }
        v
    }
    fn ptr(&self) -> *mut c_void {
        self.0 as usize as *mut c_void
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync and freed once.
        let _ = unsafe { cu::free_sync(self.0) };
    }
}

fn reg(comm: Ptr, p: *mut c_void, len: usize, kind: c_int) -> Result<*mut c_void, i32> {
    let mut mh = core::ptr::null_mut();
    // SAFETY: a live comm and a valid out-pointer.
    let rc = unsafe { net().reg_mr.unwrap()(comm.0, p, len as c_int, kind, &mut mh) };
    if rc != result::SUCCESS {
        return Err(rc);
    }
    Ok(mh)
}

fn dereg(comm: Ptr, mh: *mut c_void) {
    // SAFETY: an mhandle from reg on this comm.
    assert_eq!(
        unsafe { net().dereg_mr.unwrap()(comm.0, mh) },
        result::SUCCESS
    );
}

fn isend_mh(s: Ptr, p: *mut c_void, len: usize, mh: *mut c_void) -> Ptr {
    let (rc, req) = try_isend(s, p, len, mh);
    assert_eq!(rc, result::SUCCESS);
    assert!(!req.0.is_null(), "isend gave no request");
    req
}

/// isend's result code and request (NULL = not now, try again).
fn try_isend(s: Ptr, p: *mut c_void, len: usize, mh: *mut c_void) -> (c_int, Ptr) {
    let mut req = core::ptr::null_mut();
    // SAFETY: the buffer outlives the request in every caller.
    let rc = unsafe { net().isend.unwrap()(s.0, p, len as c_int, 0, mh, &mut req) };
    (rc, Ptr(req))
}

fn irecv_mh(r: Ptr, p: *mut c_void, len: usize, mh: *mut c_void) -> Ptr {
    let mut req = core::ptr::null_mut();
    let mut data = [p];
    let mut sizes = [len as c_int];
    let mut tags = [0 as c_int];
    let mut mhs = [mh];
    // SAFETY: one-entry arrays for n = 1; the buffer outlives the request.
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
    assert_eq!(rc, result::SUCCESS);
    Ptr(req)
}

/// Posts a receive of `len` bytes into device buffer `dst` and a send of them from `src` (host
/// or device, as `smh` says), and waits for both; returns the receive for the caller to check
/// and consume.
fn send_to_device(
    s: Ptr,
    src: *mut c_void,
    smh: *mut c_void,
    r: Ptr,
    dst: &Dev,
    rmh: *mut c_void,
    len: usize,
) -> Ptr {
    let rr = irecv_mh(r, dst.ptr(), len, rmh);
    let sr = isend_mh(s, src, len, smh);
    assert_eq!(wait(rr), Ok(len));
    assert_eq!(wait(sr), Ok(len));
    rr
}

/// Rebuilds the k-th receive from its published slot through the host view.
fn unpack_host(r: Ptr, k: u64, len: usize) -> Vec<u8> {
    // SAFETY: `r` is a live recv comm of this plugin.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.expect("UNPACK comm");
    // SAFETY: the view's regions live as long as the comm.
    let meta = unsafe { &*v.meta };
    // SAFETY: as above; bounce_len bytes.
    let bounce = unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) };
    let entries = meta.slot_entries(slot_of(k)).unwrap();
    let mut out = vec![0u8; len];
    assert_eq!(unpack_cpu(entries, bounce, &mut out), Ok(len as u64));
    out
}

fn cnt(r: Ptr, k: u64) -> u64 {
    // SAFETY: as in unpack_host.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    // SAFETY: the meta table is live; a volatile read of a count the plugin published.
    unsafe { core::ptr::addr_of!((*v.meta).cnt[slot_of(k)]).read_volatile() }
}

/// The CPU-only half of the contract (on a CUDA box the GPU tests below cover it).
#[test]
fn without_cuda_ptr_support_is_host_and_reg_cuda_fails() {
    setup();
    if tcpx_sock::cuda::present() {
        return;
    }
    let p = props();
    assert_eq!(p.ptr_support, PTR_HOST);
    assert_eq!(p.net_device_type, NET_DEVICE_HOST);
    let (s, r, d) = pair();
    assert!(d.is_null(), "host device: no UNPACK handle");
    let mut b = [0u8; 16];
    assert_eq!(
        reg(s, b.as_mut_ptr().cast(), 16, PTR_CUDA).err(),
        Some(result::INVALID_ARGUMENT)
    );
    let mh = reg(s, b.as_mut_ptr().cast(), 16, PTR_HOST).unwrap();
    dereg(s, mh);
    close_send(s);
    close_recv(r);
}

#[test]
fn properties_advertise_cuda_and_unpack() {
    setup();
    let Some(_c) = gpu("properties_advertise_cuda_and_unpack") else {
        return;
    };
    let p = props();
    assert_eq!(p.ptr_support, PTR_HOST | PTR_CUDA);
    assert_eq!(p.net_device_type, NET_DEVICE_UNPACK);
    let (s, r, d) = pair();
    assert!(!d.is_null(), "UNPACK device: accept returns a handle");
    // SAFETY: accept returned a live device handle.
    let u = unsafe { *((*d).handle as *const UnpackDevHandle) };
    // SAFETY: `r` is live.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    // The published pointers are the device aliases of the pinned regions.
    let mut dev: sys::CUdeviceptr = 0;
    // SAFETY: the meta table is a live DEVICEMAP allocation.
    unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, v.meta as *mut c_void, 0) }
        .result()
        .unwrap();
    assert_eq!(u.meta as u64, dev);
    // SAFETY: as above, for the bounce region.
    unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, v.bounce as *mut c_void, 0) }
        .result()
        .unwrap();
    assert_eq!(u.bounce_buf as u64, dev);
    assert_eq!(v.bounce_len, BOUNCE);
    let buf = Dev::zeroed(4096);
    let mh = reg(s, buf.ptr(), 4096, PTR_CUDA).unwrap();
    dereg(s, mh);
    close_send(s);
    close_recv(r);
}

#[test]
fn device_to_device_lands_in_bounce_pages() {
    setup();
    let Some(_c) = gpu("device_to_device_lands_in_bounce_pages") else {
        return;
    };
    let (s, r, _) = pair();
    let mut sizes = SIZES.to_vec();
    sizes.extend(rand_sizes(12, 4 << 20, 77));
    let max = *sizes.iter().max().unwrap();
    let dst = Dev::zeroed(max);
    let rmh = reg(r, dst.ptr(), max, PTR_CUDA).unwrap();
    let shares_before = tcpx_sock::cuda::kernel_shares();
    let mut kernel_shares = 0;
    for (k, &len) in sizes.iter().enumerate() {
        let data = pattern(len, 3000 + k as u64);
        // Every third source is not 16-byte aligned: the copy engine stages it instead of the
        // staging kernel, in the same comm and ring.
        let at = if k % 3 == 2 { 1 + k % 15 } else { 0 };
        if at == 0 {
            kernel_shares += shares_of(len);
        }
        let src = Dev::from_at(&data, at);
        let smh = reg(s, src.ptr_at(at), len, PTR_CUDA).unwrap();
        let rr = send_to_device(s, src.ptr_at(at), smh, r, &dst, rmh, len);
        assert_eq!(cnt(r, k as u64), len.div_ceil(4096) as u64);
        assert!(unpack_host(r, k as u64, len) == data, "size {len}");
        assert_eq!(consumed(r, rr), result::SUCCESS);
        dereg(s, smh);
    }
    assert!(
        dst.read().iter().all(|b| *b == 0),
        "CUDA receives never write the posted buffer (the unpack kernel does)"
    );
    // Exact under --test-threads 1 (scripts/gpu-check.sh); other tests only add to it.
    assert!(
        tcpx_sock::cuda::kernel_shares() - shares_before >= kernel_shares,
        "the aligned sends were staged by the staging kernel"
    );
    dereg(r, rmh);
    close_send(s);
    close_recv(r);
}

/// CUDA sends are staged in a per-comm ring at `isend`: a send that does not fit while older
/// ones are live gets no request (NCCL tries again), one larger than the ring is refused, and
/// space comes back as sends complete, oldest first.
#[test]
fn cuda_sends_wait_for_staging_room_and_refuse_oversize() {
    setup();
    let Some(_c) = gpu("cuda_sends_wait_for_staging_room_and_refuse_oversize") else {
        return;
    };
    let (s, r, _) = pair();
    let ring = tcpx_sock::Config::default().stage_bytes;
    let len = 4 << 20;
    let n = ring / len;
    assert!(n >= 2 && ring % len == 0, "the test fills the ring exactly");
    let data: Vec<Vec<u8>> = (0..=n).map(|k| pattern(len, 600 + k as u64)).collect();
    let srcs: Vec<Dev> = data.iter().map(|d| Dev::from(d)).collect();
    let smhs: Vec<_> = srcs
        .iter()
        .map(|d| reg(s, d.ptr(), len, PTR_CUDA).unwrap())
        .collect();

    let big = Dev::zeroed(ring + 4096);
    let bmh = reg(s, big.ptr(), ring + 4096, PTR_CUDA).unwrap();
    let (rc, req) = try_isend(s, big.ptr(), ring + 4096, bmh);
    assert_eq!(rc, result::INVALID_ARGUMENT, "larger than the staging ring");
    assert!(req.0.is_null());

    let mut sends: Vec<Ptr> = (0..n)
        .map(|k| isend_mh(s, srcs[k].ptr(), len, smhs[k]))
        .collect();
    // Nothing was tested yet, so no range came back: the ring is full.
    let (rc, req) = try_isend(s, srcs[n].ptr(), len, smhs[n]);
    assert_eq!(rc, result::SUCCESS, "a full ring is not an error");
    assert!(req.0.is_null(), "no request while the ring is full");

    let dst = Dev::zeroed(len);
    let rmh = reg(r, dst.ptr(), len, PTR_CUDA).unwrap();
    for k in 0..=n {
        let rr = irecv_mh(r, dst.ptr(), len, rmh);
        if k == 0 {
            assert_eq!(wait(rr), Ok(len));
            // The oldest send completes and gives its range back; the waiting one fits now.
            assert_eq!(wait(sends[0]), Ok(len));
            sends.push(isend_mh(s, srcs[n].ptr(), len, smhs[n]));
        } else {
            assert_eq!(wait(rr), Ok(len));
            assert_eq!(wait(sends[k]), Ok(len));
        }
        assert!(unpack_host(r, k as u64, len) == data[k], "send {k}");
        assert_eq!(consumed(r, rr), result::SUCCESS);
    }
    dereg(r, rmh);
    dereg(s, bmh);
    for mh in smhs {
        dereg(s, mh);
    }
    close_send(s);
    close_recv(r);
}

/// The staging kernels stop when idle and start again with the next send; a context-wide
/// synchronize returns while comms are open and idle, and after they close (a kernel that never
/// stopped would hang it).
#[test]
fn staging_kernels_stop_when_idle_and_restart() {
    setup();
    let Some(_c) = gpu("staging_kernels_stop_when_idle_and_restart") else {
        return;
    };
    let (s, r, _) = pair();
    // Longer than the default idle time, so it holds whatever `setup` configured.
    let idle = std::time::Duration::from_micros(tcpx_sock::Config::default().stage_idle_us as u64);
    let len = 3 << 20; // six chunks: every lane has a share, two of them two
    let dst = Dev::zeroed(len);
    let rmh = reg(r, dst.ptr(), len, PTR_CUDA).unwrap();
    let shares_before = tcpx_sock::cuda::kernel_shares();
    for round in 0..4u64 {
        let data = pattern(len, 700 + round);
        let src = Dev::from(&data);
        let smh = reg(s, src.ptr(), len, PTR_CUDA).unwrap();
        let rr = send_to_device(s, src.ptr(), smh, r, &dst, rmh, len);
        assert!(unpack_host(r, round, len) == data, "round {round}");
        assert_eq!(consumed(r, rr), result::SUCCESS);
        dereg(s, smh);
        // Long enough for every lane's kernel to stop; the next round launches them again.
        std::thread::sleep(idle * 3);
        cu::ctx::synchronize().unwrap();
    }
    assert!(
        tcpx_sock::cuda::kernel_shares() - shares_before >= 4 * shares_of(len),
        "every round was staged by the staging kernel"
    );
    dereg(r, rmh);
    close_send(s);
    close_recv(r);
    cu::ctx::synchronize().unwrap();
}

#[test]
fn host_to_device_and_device_to_host() {
    setup();
    let Some(_c) = gpu("host_to_device_and_device_to_host") else {
        return;
    };
    let (s, r, _) = pair();
    let mut k = 0u64;
    for &len in &[0usize, 1, 4097, 100_000, 1 << 20, 4 << 20] {
        // host -> device: lands in bounce pages.
        let data = pattern(len, 40 + k);
        let dst = Dev::zeroed(len);
        let rmh = reg(r, dst.ptr(), len, PTR_CUDA).unwrap();
        let host = data.as_ptr() as *mut c_void;
        let rr = send_to_device(s, host, core::ptr::null_mut(), r, &dst, rmh, len);
        assert!(unpack_host(r, k, len) == data, "h2d size {len}");
        assert_eq!(consumed(r, rr), result::SUCCESS);
        dereg(r, rmh);
        k += 1;

        // device -> host: staged on the send side, straight into the buffer on the receive side.
        let data = pattern(len, 90 + k);
        let src = Dev::from(&data);
        let smh = reg(s, src.ptr(), len, PTR_CUDA).unwrap();
        let mut out = vec![0u8; len];
        let hmh = reg(r, out.as_mut_ptr().cast(), len, PTR_HOST).unwrap();
        let rr = irecv_mh(r, out.as_mut_ptr().cast(), len, hmh);
        let sr = isend_mh(s, src.ptr(), len, smh);
        assert_eq!(wait(rr), Ok(len));
        assert_eq!(wait(sr), Ok(len));
        assert!(out == data, "d2h size {len}");
        assert_eq!(cnt(r, k), 0, "host receive: empty slot");
        // Optional for host receives, accepted when made.
        assert_eq!(consumed(r, rr), result::SUCCESS);
        dereg(r, hmh);
        dereg(s, smh);
        k += 1;
    }
    close_send(s);
    close_recv(r);
}

#[test]
fn host_receive_on_cuda_box_bypasses_bounce_and_keeps_slots_aligned() {
    setup();
    let Some(_c) = gpu("host_receive_on_cuda_box_bypasses_bounce_and_keeps_slots_aligned") else {
        return;
    };
    let (s, r, _) = pair();
    let len = 10_000;
    let dst = Dev::zeroed(len);
    let dmh = reg(r, dst.ptr(), len, PTR_CUDA).unwrap();
    // 40 receives alternating device / host (NULL mhandle = host), so slots wrap twice; host
    // receives are never irecvConsumed'd and still do not block the 16-request window.
    let mut pending_dev: Option<Ptr> = None;
    for k in 0..40u64 {
        let data = pattern(len, 7000 + k);
        let mut out = vec![0u8; len];
        let rr = if k % 2 == 0 {
            irecv_mh(r, dst.ptr(), len, dmh)
        } else {
            irecv_mh(r, out.as_mut_ptr().cast(), len, core::ptr::null_mut())
        };
        let sr = isend_mh(s, data.as_ptr() as *mut c_void, len, core::ptr::null_mut());
        assert_eq!(wait(rr), Ok(len));
        assert_eq!(wait(sr), Ok(len));
        if k % 2 == 0 {
            assert_eq!(cnt(r, k), 3);
            assert!(unpack_host(r, k, len) == data, "device receive {k}");
            if let Some(p) = pending_dev.take() {
                assert_eq!(consumed(r, p), result::SUCCESS);
            }
            pending_dev = Some(rr);
        } else {
            assert_eq!(cnt(r, k), 0, "host receive {k}: cnt 0");
            assert!(out == data, "host receive {k} landed directly");
        }
    }
    if let Some(p) = pending_dev {
        assert_eq!(consumed(r, p), result::SUCCESS);
    }
    dereg(r, dmh);
    close_send(s);
    close_recv(r);
}

#[test]
fn pinned_regions_are_page_aligned_and_device_mapped() {
    use tcpx_sock::MappedAllocator;
    let Some(_c) = gpu("pinned_regions_are_page_aligned_and_device_mapped") else {
        return;
    };
    // Odd and meta-table sizes, several live at once (the H100 run caught unaligned ones).
    let sizes = [1usize, 4096, 524_416, 524_416, 4 << 20, 12_345];
    let a = tcpx_sock::CudaMappedAllocator;
    let regs: Vec<_> = sizes.iter().map(|&n| a.alloc(n).unwrap()).collect();
    for r in &regs {
        assert_eq!(r.host as usize % 4096, 0);
        assert!(!r.device.is_null());
        // SAFETY: the region is r.len zeroed bytes.
        assert!(unsafe { core::slice::from_raw_parts(r.host, r.len) }
            .iter()
            .all(|b| *b == 0));
    }
    for r in regs {
        // SAFETY: allocated above, freed once.
        unsafe { a.free(r) };
    }
}
