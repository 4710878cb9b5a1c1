//! The staging kernel's lanes of a send comm.

use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys, CudaContext};
use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_kernels::mem::MappedHostBuffer;

use super::pinned::pinned;
use super::{cuda_err, kernels_err, with_this_ctx};
use crate::error::{Error, Result};

/// The staging kernel's lanes of one send comm ([`tcpx_kernels::stage`]): per data socket a
/// queue in pinned, device-mapped memory and a stream, per request slot and lane a progress
/// word (bytes of the share staged), and one abort word. Shares are queued under the comm's
/// lock; a lane's kernel is launched only when none is running, so a burst of requests costs
/// one launch per lane and none per request.
pub(crate) struct StageLanes {
    ctx: Arc<CudaContext>,
    kernels: Arc<tcpx_kernels::stage::StageKernels>,
    pub(super) lanes: usize,
    /// `lanes` [`tcpx_kernels::stage::Lane`]s.
    ctl: MappedHostBuffer,
    /// progress[slot][lane], then the abort word.
    words: MappedHostBuffer,
    streams: Vec<sys::CUstream>,
    piece: u64,
    idle_ns: u64,
    /// `kick` calls on running lanes (paces its fault checks).
    kicks: core::sync::atomic::AtomicU32,
}

// SAFETY: all members are owned by this value; the pinned words are shared with helpers and
// kernels through volatile accesses and fences only; driver objects are not tied to a thread.
unsafe impl Send for StageLanes {}
// SAFETY: see Send; shared access reads words and returns pointers, and queueing happens only
// under the comm's lock.
unsafe impl Sync for StageLanes {}

/// Shares queued for staging kernels by this process (see [`kernel_shares`]).
static KERNEL_SHARES: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// How many request shares this process has queued for staging kernels so far: tests use it
/// to tell kernel-staged sends from copy-engine ones (both deliver the same bytes).
pub fn kernel_shares() -> u64 {
    KERNEL_SHARES.load(core::sync::atomic::Ordering::Relaxed)
}

/// Bytes the staging kernel copies between two progress updates.
const STAGE_PIECE: u64 = 64 << 10;
/// Longest pause between two polls of an idle lane's queue.
const STAGE_POLL_NS: u32 = 8_000;

/// The staging kernel, loaded once per device (a module per comm would cost each comm time and
/// device memory) and kept for the process lifetime like the primary contexts.
fn stage_kernels(c: &Arc<CudaContext>) -> Result<Arc<tcpx_kernels::stage::StageKernels>> {
    static LOADED: Mutex<Vec<Option<Arc<tcpx_kernels::stage::StageKernels>>>> =
        Mutex::new(Vec::new());
    let mut g = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let i = c.ordinal();
    if let Some(Some(k)) = g.get(i) {
        return Ok(k.clone());
    }
    let k = Arc::new(
        tcpx_kernels::stage::StageKernels::load(c)
            .map_err(|e| kernels_err("loading the staging kernel", e))?,
    );
    if g.len() <= i {
        g.resize(i + 1, None);
    }
    g[i] = Some(k.clone());
    Ok(k)
}

impl StageLanes {
    /// Lanes for a comm of `lanes` data sockets on the GPU of `c` (current on this thread);
    /// a lane's kernel stops after `idle_ns` with nothing queued.
    pub(super) fn new(c: &Arc<CudaContext>, lanes: usize, idle_ns: u64) -> Result<Self> {
        let kernels = stage_kernels(c)?;
        let ctl = pinned(c, lanes * size_of::<tcpx_kernels::stage::Lane>())?;
        let words = pinned(c, (TCPX_REQUESTS * lanes + 1) * 8)?;
        let mut d = StageLanes {
            ctx: c.clone(),
            kernels,
            lanes,
            ctl,
            words,
            streams: Vec::with_capacity(lanes),
            piece: STAGE_PIECE,
            idle_ns,
            kicks: core::sync::atomic::AtomicU32::new(0),
        };
        for _ in 0..lanes {
            d.streams.push(
                result::stream::create(result::stream::StreamKind::NonBlocking)
                    .map_err(|e| cuda_err("cuStreamCreate", e))?,
            );
        }
        Ok(d)
    }

    fn word(&self, i: usize) -> *mut u64 {
        debug_assert!(i <= TCPX_REQUESTS * self.lanes);
        self.words.host_ptr().cast::<u64>().wrapping_add(i)
    }

    fn abort_index(&self) -> usize {
        TCPX_REQUESTS * self.lanes
    }

    fn ctl(&self, lane: usize) -> *mut tcpx_kernels::stage::Lane {
        self.ctl
            .host_ptr()
            .cast::<tcpx_kernels::stage::Lane>()
            .wrapping_add(lane)
    }

    /// Request slot `slot`'s progress word of lane `lane` (host address): bytes of the share
    /// in the ring, written by the kernel.
    pub(crate) fn progress_word(&self, slot: usize, lane: usize) -> *mut u64 {
        self.word(slot * self.lanes + lane)
    }

    /// Queues request slot `slot`'s share on `lane` (its progress word is reset and filled in
    /// here) and launches the lane's kernel if none is running. Call it before the helper gets
    /// its job.
    ///
    /// # Safety
    /// The share names live memory as [`tcpx_kernels::stage::Share`] documents until its
    /// request completes; the slot's previous request has completed; the comm's lock is held
    /// (one writer of the lane's queue).
    pub(crate) unsafe fn queue(
        &self,
        slot: usize,
        lane: usize,
        mut share: tcpx_kernels::stage::Share,
    ) -> Result<()> {
        if lane >= self.lanes || slot >= TCPX_REQUESTS {
            return Err(Error::Internal("staging share outside the comm"));
        }
        let pw = self.progress_word(slot, lane);
        share.progress =
            self.words.dev_ptr() + (pw as usize - self.words.host_ptr() as usize) as u64;
        let ctl = self.ctl(lane);
        // SAFETY: `ctl` is this lane's queue in the pinned allocation; the host is the only
        // writer of `tail`, `state` and queued shares; the ring entry at `tail` is finished (at
        // most one share per request slot is queued per lane, and 16 slots fit the ring).
        unsafe {
            pw.write_volatile(0);
            let tail = core::ptr::addr_of!((*ctl).tail).read_volatile();
            let at =
                core::ptr::addr_of_mut!((*ctl).ring[tail as usize % tcpx_kernels::stage::RING]);
            at.write_volatile(share);
            // The share and its word before the tail that announces it.
            core::sync::atomic::fence(core::sync::atomic::Ordering::Release);
            core::ptr::addr_of_mut!((*ctl).tail).write_volatile(tail + 1);
            KERNEL_SHARES.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            // Tail before reading state: the host's half of the exit protocol (stage.cu).
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            if core::ptr::addr_of!((*ctl).state).read_volatile() != 0 {
                return Ok(());
            }
            core::ptr::addr_of_mut!((*ctl).state).write_volatile(1);
        }
        self.launch(lane)
    }

    /// Launches `lane`'s kernel if it stopped with shares still queued (one queued just as the
    /// kernel went idle). Two reads of pinned memory when it does not; every 64th call on a
    /// running lane also asks the driver whether its kernel faulted, so a broken kernel fails
    /// the comm instead of leaving its helper waiting for bytes. Call it under the comm's lock
    /// while a request waits on the lane.
    pub(crate) fn kick(&self, lane: usize) -> Result<()> {
        if lane >= self.lanes {
            return Ok(());
        }
        let ctl = self.ctl(lane);
        // SAFETY: this lane's queue; `state` and `head` are written by the kernel over PCIe.
        unsafe {
            if core::ptr::addr_of!((*ctl).state).read_volatile() != 0 {
                let n = self
                    .kicks
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                if n % 64 == 63 {
                    // SAFETY: the lane's stream, owned by this value.
                    match sys::cuStreamQuery(self.streams[lane]) {
                        sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_NOT_READY => {}
                        e => return Err(Error::Cuda("staging kernel (cuStreamQuery)", e as i32)),
                    }
                }
                return Ok(());
            }
            if core::ptr::addr_of!((*ctl).head).read_volatile()
                >= core::ptr::addr_of!((*ctl).tail).read_volatile()
            {
                return Ok(());
            }
            core::ptr::addr_of_mut!((*ctl).state).write_volatile(1);
        }
        self.launch(lane)
    }

    fn launch(&self, lane: usize) -> Result<()> {
        let lane_dev = self.ctl.dev_ptr() + (lane * size_of::<tcpx_kernels::stage::Lane>()) as u64;
        let abort = self.words.dev_ptr() + 8 * self.abort_index() as u64;
        with_this_ctx(&self.ctx, |_| {
            // SAFETY: the lane's queue and words are pinned memory of this value; its shares
            // name live memory (`queue`'s contract); one stream per lane keeps one kernel per
            // lane running.
            unsafe {
                self.kernels.launch_lane(
                    self.streams[lane],
                    lane_dev,
                    abort,
                    self.piece,
                    self.idle_ns,
                    STAGE_POLL_NS,
                )
            }
            .map_err(|e| kernels_err("cuLaunchKernel(tcpx_stage_lane)", e))
        })
    }

    /// Stops every lane's kernel (close): it exits at its next look at the queue.
    fn abort(&self) {
        // SAFETY: inside the words allocation; read by kernels over PCIe.
        unsafe { self.word(self.abort_index()).write_volatile(1) };
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    }

    /// Stops every lane's kernel and waits until none runs.
    pub(super) fn stop(&self) {
        self.abort();
        let _ = with_this_ctx(&self.ctx, |_| {
            for s in &self.streams {
                // SAFETY: the lane's stream, owned by this value; the kernels exit on the
                // abort word, so it drains.
                let _ = unsafe { result::stream::synchronize(*s) };
            }
            Ok(())
        });
    }
}

impl Drop for StageLanes {
    fn drop(&mut self) {
        self.stop();
        // Errors cannot be returned from drop; a failed release leaks.
        let _ = with_this_ctx(&self.ctx, |_| {
            for s in &self.streams {
                // SAFETY: made by `new` and destroyed once; no kernel runs on it any more.
                let _ = unsafe { result::stream::destroy(*s) };
            }
            Ok(())
        });
        // `ctl` and `words` are freed after this, with no kernel left to use them.
    }
}
