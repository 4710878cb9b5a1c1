//! CUDA buffers through the plugin, over 127.0.0.1 in this process. GPU tests print
//! `SKIP: <reason>` and return without a GPU; `REQUIRE_GPU=1` turns a skip into a failure.
//! CUDA receives are rebuilt on the CPU from the published LoadMeta and the bounce region
//! (`unpack_cpu`), as the GPU kernel would. A CUDA machine is in TCPX mode: `test` reports no
//! sizes, every receive is consumed in order, every request names a memory handle, and CUDA
//! registrations start on a 4 KiB boundary.

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
    /// Zeroes it, done before the plugin's own copies into it start (those run on the plugin's
    /// stream, which the memset's legacy stream does not order).
    fn zero(&self) {
        // SAFETY: the range is this allocation.
        unsafe { cu::memset_d8_sync(self.0, 0, self.1.max(1)) }.unwrap();
        cu::ctx::synchronize().unwrap();
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

/// Registers a CUDA buffer from the 4 KiB boundary below it, as TCPX requires (the range widens
/// by the difference; the buffer keeps its own address). An empty buffer widens to nothing.
fn reg_cuda(comm: Ptr, p: *mut c_void, len: usize) -> Result<*mut c_void, i32> {
    let skew = p as usize % 4096;
    let widened = if len == 0 { 0 } else { len + skew };
    reg(comm, (p as usize - skew) as *mut c_void, widened, PTR_CUDA)
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
    assert_eq!(
        // SAFETY: `mh` came from `reg` on this comm, which is still open, and is deregistered
        // once (each test calls `dereg` once per registration).
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
    assert_eq!(wait(rr), Ok(UNTOUCHED), "TCPX mode reports no size");
    assert_eq!(wait(sr), Ok(UNTOUCHED), "TCPX mode reports no size");
    rr
}

/// Rebuilds the k-th receive from its published slot through the host view (the bounce
/// region copied out first when it is device memory), into `out`, which holds whatever the
/// plugin wrote into the posted buffer itself (linear bytes); returns the bytes the entries
/// gave.
fn unpack_into(r: Ptr, k: u64, out: &mut [u8]) -> u64 {
    // SAFETY: `r` is a live recv comm of this plugin.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.expect("UNPACK comm");
    // SAFETY: the view's meta table lives as long as the comm.
    let meta = unsafe { &*v.meta };
    let copy;
    let bounce = if v.bounce_device {
        let mut b = vec![0u8; v.bounce_len];
        // SAFETY: the bounce region is bounce_len bytes of device memory.
        unsafe { cu::memcpy_dtoh_sync(&mut b, v.bounce as u64) }.unwrap();
        copy = b;
        &copy[..]
    } else {
        // SAFETY: host memory of bounce_len bytes, alive with the comm.
        unsafe { core::slice::from_raw_parts(v.bounce, v.bounce_len) }
    };
    let entries = meta.slot_entries(slot_of(k)).unwrap();
    unpack_cpu(entries, bounce, out).unwrap()
}

/// Rebuilds the k-th receive (no linear bytes) from its published slot.
fn unpack_host(r: Ptr, k: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    assert_eq!(unpack_into(r, k, &mut out), len as u64);
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
    assert!(!d.is_null(), "UNPACK device: accept fills a handle");
    // SAFETY: accept filled the handle we passed.
    let dh = unsafe { *d };
    assert_eq!(dh.size, core::mem::size_of::<UnpackDevHandle>());
    // The UNPACK handle is device memory, as TCPX's: read with a device-to-host copy.
    assert_eq!(
        memory_type(dh.handle as u64),
        Some(sys::CUmemorytype::CU_MEMORYTYPE_DEVICE)
    );
    let mut raw = [0u8; core::mem::size_of::<UnpackDevHandle>()];
    // SAFETY: the handle is that many bytes of device memory.
    unsafe { cu::memcpy_dtoh_sync(&mut raw, dh.handle as u64) }.unwrap();
    // SAFETY: the bytes of an UnpackDevHandle, copied out.
    let u: UnpackDevHandle = unsafe { core::ptr::read_unaligned(raw.as_ptr().cast()) };
    assert_eq!(u.head, u64::MAX);
    // SAFETY: `r` is live.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    assert!(!v.bounce_device, "mapped host memory by default");
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
    let mh = reg_cuda(s, buf.ptr(), 4096).unwrap();
    dereg(s, mh);
    close_send(s);
    close_recv(r);
}

/// The driver's memory type of `p`, if it knows the address.
fn memory_type(p: u64) -> Option<sys::CUmemorytype> {
    let mut t: u32 = 0;
    // SAFETY: the attribute is an unsigned int; the out pointer is valid.
    let r = unsafe {
        sys::cuPointerGetAttribute(
            (&mut t as *mut u32).cast(),
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            p,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return None;
    }
    [
        sys::CUmemorytype::CU_MEMORYTYPE_HOST,
        sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        sys::CUmemorytype::CU_MEMORYTYPE_ARRAY,
        sys::CUmemorytype::CU_MEMORYTYPE_UNIFIED,
    ]
    .into_iter()
    .find(|m| *m as u32 == t)
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
    let rmh = reg_cuda(r, dst.ptr(), max).unwrap();
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
        let smh = reg_cuda(s, src.ptr_at(at), len).unwrap();
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
        .map(|d| reg_cuda(s, d.ptr(), len).unwrap())
        .collect();

    let big = Dev::zeroed(ring + 4096);
    let bmh = reg_cuda(s, big.ptr(), ring + 4096).unwrap();
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
    let rmh = reg_cuda(r, dst.ptr(), len).unwrap();
    for k in 0..=n {
        let rr = irecv_mh(r, dst.ptr(), len, rmh);
        if k == 0 {
            assert_eq!(wait(rr), Ok(UNTOUCHED));
            // The oldest send completes and gives its range back; the waiting one fits now.
            assert_eq!(wait(sends[0]), Ok(UNTOUCHED));
            sends.push(isend_mh(s, srcs[n].ptr(), len, smhs[n]));
        } else {
            assert_eq!(wait(rr), Ok(UNTOUCHED));
            assert_eq!(wait(sends[k]), Ok(UNTOUCHED));
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
    let rmh = reg_cuda(r, dst.ptr(), len).unwrap();
    let shares_before = tcpx_sock::cuda::kernel_shares();
    for round in 0..4u64 {
        let data = pattern(len, 700 + round);
        let src = Dev::from(&data);
        let smh = reg_cuda(s, src.ptr(), len).unwrap();
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
        let rmh = reg_cuda(r, dst.ptr(), len).unwrap();
        let host = data.as_ptr() as *mut c_void;
        let rr = send_to_device(s, host, host_mh(s), r, &dst, rmh, len);
        assert!(unpack_host(r, k, len) == data, "h2d size {len}");
        assert_eq!(consumed(r, rr), result::SUCCESS);
        dereg(r, rmh);
        k += 1;

        // device -> host: staged on the send side, straight into the buffer on the receive side.
        let data = pattern(len, 90 + k);
        let src = Dev::from(&data);
        let smh = reg_cuda(s, src.ptr(), len).unwrap();
        let mut out = vec![0u8; len];
        let hmh = reg(r, out.as_mut_ptr().cast(), len, PTR_HOST).unwrap();
        let rr = irecv_mh(r, out.as_mut_ptr().cast(), len, hmh);
        let sr = isend_mh(s, src.ptr(), len, smh);
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        assert_eq!(wait(sr), Ok(UNTOUCHED));
        assert!(out == data, "d2h size {len}");
        assert_eq!(cnt(r, k), 0, "host receive: empty slot");
        // Every receive leaves at irecvConsumed, host ones too.
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
    let dmh = reg_cuda(r, dst.ptr(), len).unwrap();
    // 40 receives alternating device / host, so slots wrap twice: host receives land in their
    // buffer, publish cnt = 0 in their own slot and, like device ones, leave at irecvConsumed.
    for k in 0..40u64 {
        let data = pattern(len, 7000 + k);
        let mut out = vec![0u8; len];
        let rr = if k % 2 == 0 {
            irecv_mh(r, dst.ptr(), len, dmh)
        } else {
            irecv_mh(r, out.as_mut_ptr().cast(), len, host_mh(r))
        };
        let sr = isend_mh(s, data.as_ptr() as *mut c_void, len, host_mh(s));
        assert_eq!(wait(rr), Ok(UNTOUCHED));
        assert_eq!(wait(sr), Ok(UNTOUCHED));
        if k % 2 == 0 {
            assert_eq!(cnt(r, k), 3);
            assert!(unpack_host(r, k, len) == data, "device receive {k}");
        } else {
            assert_eq!(cnt(r, k), 0, "host receive {k}: cnt 0");
            assert!(out == data, "host receive {k} landed directly");
        }
        assert_eq!(consumed(r, rr), result::SUCCESS);
    }
    dereg(r, dmh);
    close_send(s);
    close_recv(r);
}

/// TCPX registers CUDA memory in whole pages, bound to the calling thread's current GPU.
#[test]
fn cuda_registration_must_be_page_aligned() {
    setup();
    let Some(_c) = gpu("cuda_registration_must_be_page_aligned") else {
        return;
    };
    let (s, r, _) = pair();
    let buf = Dev::zeroed(3 * 4096);
    let base = buf.ptr() as usize;
    let aligned = base.next_multiple_of(4096);
    // A PyTorch-style tensor 512 bytes into its allocation.
    assert_eq!(
        reg(s, (aligned + 512) as *mut c_void, 4096, PTR_CUDA).err(),
        Some(result::INTERNAL_ERROR)
    );
    let mh = reg(s, aligned as *mut c_void, 4096, PTR_CUDA).unwrap();
    dereg(s, mh);
    let mut mh = core::ptr::null_mut();
    // SAFETY: a live comm and a valid out-pointer.
    let rc = unsafe { net().reg_mr.unwrap()(s.0, aligned as *mut c_void, -1, PTR_CUDA, &mut mh) };
    assert_eq!(
        rc,
        result::INVALID_ARGUMENT,
        "v7 sizes are int: a negative one is refused"
    );
    assert!(mh.is_null());
    close_send(s);
    close_recv(r);
}

/// A registration binds to the calling thread's current GPU: memory of another GPU is refused
/// (two GPUs needed).
#[test]
fn cuda_registration_of_another_gpu_is_refused() {
    setup();
    let Some(c0) = gpu("cuda_registration_of_another_gpu_is_refused") else {
        return;
    };
    if CudaContext::device_count().unwrap_or(0) < 2 {
        println!("SKIP: cuda_registration_of_another_gpu_is_refused: one GPU");
        return;
    }
    let (s, r, _) = pair();
    // CudaContext::new binds GPU 1's primary context to this thread: the buffer is GPU 1's.
    let other = CudaContext::new(1).unwrap();
    let buf1 = Dev::zeroed(8192);
    let p1 = (buf1.ptr() as usize).next_multiple_of(4096) as *mut c_void;
    let mh = reg(s, p1, 4096, PTR_CUDA).unwrap();
    dereg(s, mh);
    // GPU 0 current, GPU 1's memory: refused.
    c0.bind_to_thread().unwrap();
    assert_eq!(
        reg(s, p1, 4096, PTR_CUDA).err(),
        Some(result::INTERNAL_ERROR)
    );
    // Freed with its own context current.
    other.bind_to_thread().unwrap();
    drop(buf1);
    c0.bind_to_thread().unwrap();
    close_send(s);
    close_recv(r);
}

/// `Config::bounce_device`: the bounce region is device memory; received bytes are copied in
/// before a slot is published. Exercised with odd fragments, linear bytes (copied into CUDA
/// buffers by the plugin, and into host buffers with host bounce) and inline payloads.
#[test]
fn device_bounce_region_with_odd_fragments_and_linear_bytes() {
    setup();
    let Some(_c) = gpu("device_bounce_region_with_odd_fragments_and_linear_bytes") else {
        return;
    };
    let (h, l) = listen_with(tcpx_sock::Config {
        bounce_device: true,
        odd_fragments: true,
        linear_bytes: 5000,
        host_bounce: true,
        ..tcpx_sock::config::current()
    });
    let (s, r, _) = connect_accept(h, l);
    // SAFETY: `r` is a live recv comm.
    let v = unsafe { tcpx_sock::recv_unpack_view(r.0) }.unwrap();
    assert!(v.bounce_device);
    assert_eq!(
        memory_type(v.bounce as u64),
        Some(sys::CUmemorytype::CU_MEMORYTYPE_DEVICE)
    );
    let max = 4 << 20;
    let dst = Dev::zeroed(max);
    let rmh = reg_cuda(r, dst.ptr(), max).unwrap();
    let mut k = 0u64;
    for &len in &[1usize, 1000, 4097, 70_000, 1 << 20, max] {
        for (device_src, device_dst) in [(true, true), (false, true), (false, false)] {
            let data = pattern(len, 9000 + k);
            let src = Dev::from(&data);
            let smh = reg_cuda(s, src.ptr(), len).unwrap();
            let (sp, smh2) = if device_src {
                (src.ptr(), smh)
            } else {
                (data.as_ptr() as *mut c_void, host_mh(s))
            };
            let mut host_out = vec![0u8; len];
            let rr = if device_dst {
                dst.zero();
                irecv_mh(r, dst.ptr(), len, rmh)
            } else {
                irecv_mh(r, host_out.as_mut_ptr().cast(), len, host_mh(r))
            };
            let sr = isend_mh(s, sp, len, smh2);
            assert_eq!(wait(rr), Ok(UNTOUCHED));
            assert_eq!(wait(sr), Ok(UNTOUCHED));
            // The plugin wrote the linear bytes into the posted buffer; the entries give the rest.
            let mut out = if device_dst {
                dst.read()[..len].to_vec()
            } else {
                host_out.clone()
            };
            let lin = 5000.min(len) as u64;
            assert_eq!(unpack_into(r, k, &mut out), len as u64 - lin, "size {len}");
            assert!(
                out == data,
                "size {len}, device source {device_src}, device buffer {device_dst}"
            );
            assert_eq!(consumed(r, rr), result::SUCCESS);
            dereg(s, smh);
            k += 1;
        }
    }
    dereg(r, rmh);
    close_send(s);
    close_recv(r);
}

/// What CUDA transfers need is made at the CUDA registration, not at the first transfer:
/// NCCL's kernels wait for receives while tcpxsock moves them, and a driver call made then
/// (a stream, pinned memory) can wait behind such a kernel of the same context for good (four
/// NCCL ranks on one H100 hung at their first all_to_all in `Landing::new`'s cuStreamCreate).
/// A send comm gets its staging ring; a recv comm whose CUDA receives need device copies
/// (linear bytes into the CUDA buffer here) gets every helper's landing; the transfer then
/// makes none.
#[test]
fn cuda_transfer_resources_are_made_at_registration() {
    setup();
    let Some(_c) = gpu("cuda_transfer_resources_are_made_at_registration") else {
        return;
    };
    let nsocks = tcpx_sock::config::current().nsocks;
    let (h, l) = listen_with(tcpx_sock::Config {
        linear_bytes: 3000,
        ..tcpx_sock::config::current()
    });
    let (s, r, _) = connect_accept(h, l);
    // SAFETY: `s` and `r` are live comms of this plugin (here and below).
    let prepared = |c: Ptr, send: bool| unsafe { tcpx_sock::cuda_prepared(c.0, send, 0) };
    assert_eq!((prepared(s, true), prepared(r, false)), (0, 0));
    let len = 3 << 20;
    let data = pattern(len, 4242);
    // Host registrations make nothing.
    let mut host = data.clone();
    let hs = reg(s, host.as_mut_ptr().cast(), len, PTR_HOST).unwrap();
    let hr = reg(r, host.as_mut_ptr().cast(), len, PTR_HOST).unwrap();
    assert_eq!((prepared(s, true), prepared(r, false)), (0, 0));
    dereg(s, hs);
    dereg(r, hr);
    let src = Dev::from(&data);
    let dst = Dev::zeroed(len);
    let smh = reg_cuda(s, src.ptr(), len).unwrap();
    assert_eq!(
        prepared(s, true),
        1,
        "the staging ring is made at the send comm's CUDA regMr"
    );
    let rmh = reg_cuda(r, dst.ptr(), len).unwrap();
    assert_eq!(
        prepared(r, false),
        nsocks,
        "every helper's landing is made at the CUDA regMr"
    );
    let rr = send_to_device(s, src.ptr(), smh, r, &dst, rmh, len);
    let mut out = dst.read();
    let lin = 3000.min(len) as u64;
    assert_eq!(unpack_into(r, 0, &mut out), len as u64 - lin);
    assert!(
        out == data,
        "linear bytes written by the helpers, the rest unpacked"
    );
    assert_eq!(consumed(r, rr), result::SUCCESS);
    assert_eq!((prepared(s, true), prepared(r, false)), (1, nsocks));
    dereg(s, smh);
    dereg(r, rmh);
    close_send(s);
    close_recv(r);

    // Receives that need no device copies (host bounce pages, no linear bytes) get no landing.
    let (s, r, _) = pair();
    let dst = Dev::zeroed(4096);
    let rmh = reg_cuda(r, dst.ptr(), 4096).unwrap();
    assert_eq!(prepared(r, false), 0);
    dereg(r, rmh);
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
