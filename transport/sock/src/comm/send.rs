//! The send comm: posting sends, CUDA staging, writing control messages, testing.

use core::ffi::c_void;
use std::io::IoSlice;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tcpx_core::ring::{Release, Req, RequestRing, TCPX_REQUESTS};
use tcpx_core::wire::sock::{SockRequestHeader, HEADER_LEN};

use super::sockets::Core;
use super::{lock, ReqKind, Request, NOT_OLDEST, TOO_MANY};
use crate::config::{Config, StageKernel};
use crate::cuda::{SendStage, Staging};
use crate::error::{Error, Result};
use crate::mem::StageRing;
use crate::sys::{self, Sock};
use crate::trace;
use crate::worker::{Job, JobKind};

#[derive(Clone, Copy)]
struct SendSlot {
    ptr: *const u8,
    size: usize,
    hdr: [u8; HEADER_LEN],
    inline: bool,
    /// How the request is being staged, while it holds a range of the CUDA staging ring
    /// (until it completes).
    staging: Option<Staging>,
}

struct SendState {
    /// Posted, control bytes written, tested (a send's slot is free once tested).
    requests: RequestRing,
    /// Bytes of the next request's control message (`requests.next_ctrl()`) already written.
    ctrl_off: usize,
    chunk_ctr: u64,
    slots: [SendSlot; TCPX_REQUESTS],
    /// Which bytes of the CUDA staging ring live requests hold.
    ring: StageRing,
    err: Option<Error>,
}

// SAFETY: the raw pointers are the caller's buffers, only dereferenced by helpers while
// the request is in flight; the state itself moves between threads under the mutex.
unsafe impl Send for SendState {}

/// A connected sending endpoint.
pub struct SendComm {
    pub(super) core: Core,
    inline_bytes: usize,
    stage_bytes: usize,
    stage_kernel: StageKernel,
    /// The staging kernel's idle time in ns.
    stage_idle_ns: u64,
    /// The GPU current at `connect` (CUDA machines in TCPX mode): its staging ring's device.
    gpu: Option<usize>,
    st: Mutex<SendState>,
    reqs: [Request; TCPX_REQUESTS],
}

impl SendComm {
    pub(super) fn new(
        socks: Vec<TcpStream>,
        cfg: &Config,
        gpu: Option<usize>,
    ) -> Result<Box<Self>> {
        let core = Core::new(socks, cfg.chunk_bytes, cfg)?;
        let mut c = Box::new(SendComm {
            core,
            inline_bytes: cfg.inline_bytes,
            stage_bytes: cfg.stage_bytes,
            stage_kernel: cfg.stage_kernel,
            stage_idle_ns: cfg.stage_idle_us as u64 * 1000,
            gpu,
            st: Mutex::new(SendState {
                requests: RequestRing::new(Release::AtTest),
                ctrl_off: 0,
                chunk_ctr: 0,
                slots: [SendSlot {
                    ptr: core::ptr::null(),
                    size: 0,
                    hdr: [0; HEADER_LEN],
                    inline: false,
                    staging: None,
                }; TCPX_REQUESTS],
                ring: StageRing::new(cfg.stage_bytes),
                err: None,
            }),
            reqs: core::array::from_fn(|i| Request::new(ReqKind::Send, i)),
        });
        let me = &*c as *const SendComm as *const c_void;
        for r in &mut c.reqs {
            r.owner = me;
        }
        Ok(c)
    }

    /// Posts a send of `size` bytes at `data`; `cuda` = the device ordinal when `data` is a
    /// CUDA buffer, whose bytes are copied into the comm's staging ring here and sent from
    /// there. `None` (no request) when the ring has no room until older CUDA sends complete:
    /// the caller tries again later, as NCCL does.
    pub(crate) fn isend(
        &self,
        data: *const u8,
        size: usize,
        cuda: Option<usize>,
    ) -> Result<Option<*const Request>> {
        trace::mark("sock.isend");
        let mut st = lock(&self.st);
        if let Some(e) = st.err.or_else(|| self.core.shared.error()) {
            return Err(e);
        }
        let Req { seq, slot: idx } = st.requests.next_post().map_err(|_| TOO_MANY)?;
        if size > 0 && data.is_null() {
            return Err(Error::InvalidArgument("NULL send buffer"));
        }
        // CUDA payloads never go inline: the control path reads the buffer with the CPU. The
        // header's INLINE flag tells the receiver, so nothing else changes on the wire.
        let inline = size <= self.inline_bytes && (cuda.is_none() || size == 0);
        let hdr = SockRequestHeader::new(size, inline, seq)
            .and_then(|h| h.to_bytes())
            .map_err(|_| Error::InvalidArgument("send of 2 GiB or more"))?;
        let mut base = data.cast_mut();
        let staged = match (cuda, inline) {
            (Some(ord), false) => {
                if size > st.ring.capacity() {
                    return Err(Error::InvalidArgument(
                        "CUDA send larger than the staging ring (TCPX_SOCK_STAGE_BYTES)",
                    ));
                }
                // The ring exists before a range of it is taken, so a failure here leaves
                // nothing taken.
                if !self.staging_ready() {
                    static TOLD: AtomicBool = AtomicBool::new(false);
                    crate::log_warn_once(
                        &TOLD,
                        "tcpxsock: a CUDA send on a comm without a CUDA registration made its \
                         staging ring at the send (register CUDA memory on the comm first: a \
                         driver call at a send can wait behind a running kernel)",
                    );
                }
                let stage = self.stage(ord)?;
                // Ranges start 64-byte aligned, so the staging kernel can move vectors.
                let take = size.next_multiple_of(64).min(st.ring.capacity());
                let Some(off) = st.ring.take(take) else {
                    return Ok(None);
                };
                let chunk_bytes = self.core.shared.chunk_bytes;
                // SAFETY: the ring range is this request's until `test` reports it done, and
                // by NCCL's contract the buffer is unchanged until then; the lock is held, and
                // the request is dispatched from `chunk_ctr` below.
                match unsafe {
                    stage.copy(idx, off, data as u64, ord, size, chunk_bytes, st.chunk_ctr)
                } {
                    Ok((p, how)) => {
                        base = p.cast_mut();
                        Some(how)
                    }
                    Err(e) => {
                        st.err = Some(e);
                        return Err(e);
                    }
                }
            }
            _ => None,
        };
        st.slots[idx] = SendSlot {
            ptr: data,
            size,
            hdr,
            inline,
            staging: staged,
        };
        if inline {
            self.core.shared.remaining[idx].store(0, Ordering::Relaxed);
        } else if staged.is_none() && self.core.direct_ok(size, st.requests.all_tested()) {
            let chunk = st.chunk_ctr;
            st.chunk_ctr += 1;
            if let Err(e) = self.core.send_direct(idx, base, size, chunk) {
                st.err = Some(e);
                return Err(e);
            }
            trace::mark_key(
                "sock.send.direct",
                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
            );
        } else {
            // Marked before the hand-over: a helper may pick the job up at once.
            trace::mark_key(
                "sock.send.dispatch",
                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
            );
            let used = self.core.shared.dispatch(Job {
                kind: match staged {
                    Some(how) => JobKind::SendStaged(how),
                    None => JobKind::Send,
                },
                req: idx,
                base,
                size,
                chunk_base: st.chunk_ctr,
            })?;
            st.chunk_ctr += used;
        }
        st.requests.post().map_err(|_| TOO_MANY)?;
        self.progress(&mut st);
        Ok(Some(&self.reqs[idx]))
    }

    /// Whether the staging ring exists.
    pub(crate) fn staging_ready(&self) -> bool {
        self.core.shared.cuda_stage.get().is_some()
    }

    /// Makes the staging ring now, at a CUDA registration on device `ordinal` (setup), so the
    /// comm's first CUDA send makes no driver call that could wait behind the caller's kernels.
    pub(crate) fn prepare_cuda(&self, ordinal: usize) -> Result<()> {
        let _st = lock(&self.st);
        self.stage(ordinal).map(|_| ())
    }

    /// The comm's staging ring, made at its first CUDA registration (`prepare_cuda`) or, for
    /// a CUDA send without one, at that send (under the state lock, so once) on the comm's
    /// GPU, else on the GPU of the registration's (or send's) buffer.
    fn stage(&self, ordinal: usize) -> Result<&SendStage> {
        let sh = &self.core.shared;
        if sh.cuda_stage.get().is_none() {
            let _ = sh.cuda_stage.set(SendStage::new(
                self.gpu.unwrap_or(ordinal),
                self.stage_bytes,
                sh.lanes.len(),
                self.stage_kernel,
                self.stage_idle_ns,
            )?);
        }
        sh.cuda_stage
            .get()
            .ok_or(Error::Internal("staging ring missing"))
    }

    /// Writes pending control bytes without blocking; errors stick to the comm.
    fn progress(&self, st: &mut SendState) {
        if st.err.is_some() {
            return;
        }
        let fd = self.core.ctrl.as_raw_fd();
        while let Some(r) = st.requests.next_ctrl() {
            let s = st.slots[r.slot];
            let plen = if s.inline { s.size } else { 0 };
            let payload: &[u8] = if plen == 0 {
                &[]
            } else {
                // SAFETY: the caller keeps the send buffer alive until `test` says done.
                unsafe { core::slice::from_raw_parts(s.ptr, plen) }
            };
            let off = st.ctrl_off;
            let sent = if off < HEADER_LEN {
                sys::send_nb(
                    fd,
                    &[IoSlice::new(&s.hdr[off..]), IoSlice::new(payload)],
                    Sock::Control,
                )
            } else {
                sys::send_nb(
                    fd,
                    &[IoSlice::new(&payload[off - HEADER_LEN..])],
                    Sock::Control,
                )
            };
            match sent {
                Ok(Some(n)) => {
                    st.ctrl_off += n;
                    if st.ctrl_off == HEADER_LEN + plen {
                        st.requests.pass_ctrl();
                        st.ctrl_off = 0;
                        trace::mark_key(
                            "sock.send.ctrl",
                            trace::request_key(Arc::as_ptr(&self.core.shared), r.slot),
                        );
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    st.err = Some(e);
                    return;
                }
            }
        }
    }

    pub(super) fn test(&self, idx: usize) -> Result<Option<usize>> {
        let mut st = lock(&self.st);
        let r = st.requests.testable(idx).map_err(|_| NOT_OLDEST)?;
        self.progress(&mut st);
        let done = st.requests.ctrl_passed(r)
            && self.core.shared.remaining[idx].load(Ordering::Acquire) == 0;
        let kernel_lanes = match st.slots[idx].staging {
            Some(Staging::Lanes { lanes, .. }) => lanes,
            _ => 0,
        };
        if !done && kernel_lanes != 0 && st.err.is_none() {
            // A lane whose kernel stopped just as this request was queued gets a new one.
            if let Some(stage) = self.core.shared.cuda_stage.get() {
                if let Err(e) = stage.kick(kernel_lanes) {
                    st.err = Some(e);
                }
            }
        }
        if done {
            trace::mark_key(
                "sock.send.done",
                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
            );
            st.requests.complete(r).map_err(|_| NOT_OLDEST)?;
            if st.slots[idx].staging.is_some() {
                st.ring.give_oldest();
            }
            return Ok(Some(st.slots[idx].size));
        }
        match st.err.or_else(|| self.core.shared.error()) {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Whether the comm is in TCPX mode.
    pub(crate) fn tcpx(&self) -> bool {
        self.core.tcpx
    }

    /// Closes the comm; requests in flight are abandoned.
    pub(crate) fn close(mut self: Box<Self>) {
        if !self.core.shutdown() {
            // A helper may still read the comm: leak rather than free under it.
            core::mem::forget(self);
        }
    }
}
