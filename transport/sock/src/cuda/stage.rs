//! Per-send-comm staging of CUDA sources into pinned host memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use tcpx_kernels::mem::MappedHostBuffer;

use super::lanes::StageLanes;
use super::pinned::pinned;
use super::{cuda_err, with_ctx, with_this_ctx};
use crate::config::StageKernel;
use crate::error::{Error, Result};

/// Per-send-comm staging for CUDA sources: one ring of pinned, device-mapped host memory (not
/// write-combined: the sockets read it with the CPU), filled in request order by copies that
/// the comm's caller starts in `isend` (so they neither wait for nor hold up the user's work
/// on the legacy default stream).
///
/// Two ways of filling it ([`Staging`]): by default one copy-engine copy per request and an
/// event per request slot, which the helpers query once; with the staging kernel
/// (`TCPX_SOCK_STAGE_KERNEL=1`, where it loads) each lane's kernel stages its share of the
/// request piece by piece and publishes how much is in, so each helper sends as the bytes land,
/// and neither `isend` nor the helpers make a driver call per request (a source on another GPU
/// than the ring's, or not 16-byte aligned, still takes the copy engine). Which bytes of the
/// ring a request uses is [`crate::mem::StageRing`]'s business, under the comm's lock.
pub(crate) struct SendStage {
    ctx: Arc<CudaContext>,
    ring: MappedHostBuffer,
    len: usize,
    stream: sys::CUstream,
    /// Per request slot.
    done: [sys::CUevent; tcpx_core::ring::TCPX_REQUESTS],
    /// The staging kernel's lanes, when on and loadable.
    lanes: Option<StageLanes>,
}

/// How a request's staging copy reports that its bytes are in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staging {
    /// The request slot's event, once for the whole request.
    Event,
    /// Each lane's share: the slot's progress word of lane `l` is at `staged + l` and counts
    /// the share's bytes in the ring; `lanes` has bit `l` set for every lane with a share.
    Lanes { staged: *const u64, lanes: u32 },
}

// SAFETY: the ring, events, stream and lanes are owned by this value; copies are started under
// the comm's lock, and the driver objects are not tied to a thread.
unsafe impl Send for SendStage {}
// SAFETY: see Send; helpers only query events, read progress words and read ring bytes their
// request owns.
unsafe impl Sync for SendStage {}

/// Whether the GPU of `c` is in exclusive-process compute mode (no other process can have a
/// context on it). An unreadable attribute counts as shared.
pub fn exclusive_process(c: &Arc<CudaContext>) -> bool {
    c.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_MODE)
        .is_ok_and(|m| m == sys::CUcomputemode::CU_COMPUTEMODE_EXCLUSIVE_PROCESS as i32)
}

impl SendStage {
    /// A `len`-byte ring, its stream and events in the primary context of `ordinal`, and, when
    /// `kernel` asks for it on this GPU, the staging kernel's lanes for `lanes` data sockets
    /// whose kernels exit after `idle_ns` idle (used only if the kernel loads; else the copy
    /// engine stages every request).
    pub(crate) fn new(
        ordinal: usize,
        len: usize,
        lanes: usize,
        kernel: StageKernel,
        idle_ns: u64,
    ) -> Result<Self> {
        with_ctx(ordinal, |c| {
            let mut s = SendStage {
                ctx: c.clone(),
                ring: pinned(c, len)?,
                len,
                stream: core::ptr::null_mut(),
                done: [core::ptr::null_mut(); tcpx_core::ring::TCPX_REQUESTS],
                lanes: None,
            };
            // Each handle is stored as soon as it exists, so Drop frees whatever was made
            // before a failure.
            s.stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|e| cuda_err("cuStreamCreate", e))?;
            for i in 0..s.done.len() {
                s.done[i] = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
                    .map_err(|e| cuda_err("cuEventCreate", e))?;
            }
            let use_kernel = match kernel {
                StageKernel::On => true,
                StageKernel::Off => false,
                StageKernel::Auto => {
                    // Said once per process, not per comm.
                    static TOLD: AtomicBool = AtomicBool::new(false);
                    let excl = exclusive_process(c);
                    if excl && !TOLD.swap(true, Ordering::Relaxed) {
                        crate::log_info(&format!(
                            "tcpxsock: GPU {ordinal} is in exclusive-process compute mode: \
                             CUDA sends staged by the staging kernel"
                        ));
                    }
                    excl
                }
            };
            if use_kernel {
                s.lanes = match StageLanes::new(c, lanes, idle_ns) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        crate::log_warn(&format!(
                            "tcpxsock: CUDA sends staged by the copy engine: {e}"
                        ));
                        None
                    }
                };
            }
            Ok(s)
        })
    }

    /// Starts copying the `size`-byte request in slot `req` from device address `src` (memory of
    /// GPU `ordinal`) into the ring at `off`; it is spread over lanes as the helpers will send it (chunks of
    /// `chunk_bytes`, chunk `k` on lane `(chunk_base + k) % lanes`). Returns where the bytes
    /// will be and how the helpers learn they are there.
    ///
    /// # Safety
    /// `off..off+size` lies in the ring and belongs to request slot `req` until it completes;
    /// `src` is the caller's CUDA buffer of at least `size` bytes, unchanged until then; the
    /// comm's lock is held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn copy(
        &self,
        req: usize,
        off: usize,
        src: u64,
        ordinal: usize,
        size: usize,
        chunk_bytes: usize,
        chunk_base: u64,
    ) -> Result<(*const u8, Staging)> {
        if off.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(Error::Internal("staging copy outside the ring"));
        }
        let at = self.ring.host_ptr().wrapping_add(off).cast_const();
        // The kernel runs on the ring's GPU and moves 16-byte vectors; a source on another GPU
        // (the kernel would need peer access) or at another alignment goes to the copy engine.
        let kernel_ok = ordinal == self.ctx.ordinal() && (src as usize | off) % 16 == 0;
        if let Some(d) = self.lanes.as_ref().filter(|_| kernel_ok) {
            let n = d.lanes as u64;
            let used = (size.div_ceil(chunk_bytes) as u64).min(n);
            let mut mask = 0u32;
            for k in 0..used {
                let lane = ((chunk_base + k) % n) as usize;
                let share = tcpx_kernels::stage::Share {
                    src,
                    dst: self.ring.dev_ptr() + off as u64,
                    size: size as u64,
                    chunk_bytes: chunk_bytes as u64,
                    first: k,
                    lanes: n,
                    ..Default::default()
                };
                // SAFETY: per the contract; the slot's previous request completed before
                // its slot was reused.
                unsafe { d.queue(req, lane, share)? };
                mask |= 1 << lane;
            }
            let staged = d.progress_word(req, 0);
            return Ok((
                at,
                Staging::Lanes {
                    staged,
                    lanes: mask,
                },
            ));
        }
        with_this_ctx(&self.ctx, |_| {
            // SAFETY: per the contract.
            unsafe {
                let dst = core::slice::from_raw_parts_mut(self.ring.host_ptr().add(off), size);
                result::memcpy_dtoh_async(dst, src, self.stream)
                    .map_err(|e| cuda_err("cuMemcpyDtoHAsync", e))?;
                result::event::record(self.done[req], self.stream)
                    .map_err(|e| cuda_err("cuEventRecord", e))?;
            }
            Ok((at, Staging::Event))
        })
    }

    /// Stops the staging kernels and waits for them and for any copy in flight (close: nothing
    /// may read the caller's buffers once the comm is closed). Idempotent.
    pub(crate) fn stop(&self) {
        if let Some(l) = &self.lanes {
            l.stop();
        }
        let _ = with_this_ctx(&self.ctx, |_| {
            // SAFETY: the stream is owned by this value.
            let _ = unsafe { result::stream::synchronize(self.stream) };
            Ok(())
        });
    }

    /// Relaunches the stopped kernels of the lanes in `mask` that still have shares queued.
    pub(crate) fn kick(&self, mask: u32) -> Result<()> {
        if let Some(d) = &self.lanes {
            for lane in (0..32).filter(|l| mask & (1 << l) != 0) {
                d.kick(lane)?;
            }
        }
        Ok(())
    }

    /// Waits until request slot `req`'s copy-engine copy is done (polling, not sleeping: it
    /// is nearly always done already, and when not, it is a copy's length away).
    pub(crate) fn wait(&self, req: usize) -> Result<()> {
        loop {
            // SAFETY: the event belongs to this value; a query needs no current context.
            match unsafe { sys::cuEventQuery(self.done[req]) } {
                sys::CUresult::CUDA_SUCCESS => return Ok(()),
                sys::CUresult::CUDA_ERROR_NOT_READY => std::thread::yield_now(),
                e => return Err(Error::Cuda("cuEventQuery", e as i32)),
            }
        }
    }
}

impl Drop for SendStage {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a failed free leaks. May run on the caller's
        // thread (close), so its context is restored.
        let _ = with_ctx(self.ctx.ordinal(), |_| {
            // The lanes' kernels stop and drain before the ring goes.
            self.lanes = None;
            // SAFETY: created by this value and freed once; copies still in flight finish
            // before the stream goes, and the helpers have exited.
            unsafe {
                if !self.stream.is_null() {
                    let _ = result::stream::synchronize(self.stream);
                    let _ = result::stream::destroy(self.stream);
                }
                for ev in self.done.iter().filter(|e| !e.is_null()) {
                    let _ = result::event::destroy(*ev);
                }
            }
            Ok(())
        });
        // `ring` is freed after this (field drop), with a context restored; PORTABLE memory
        // does not need one.
    }
}
