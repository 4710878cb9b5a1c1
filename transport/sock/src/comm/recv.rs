//! The recv comm: posting receives, reading the control stream, bounce pages and fragment
//! entries, testing and `irecvConsumed`.

use core::ffi::c_void;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use tcpx_core::abi::{DevHandle, NET_DEVICE_UNPACK, NET_UNPACK_VERSION};
use tcpx_core::ring::{Release, Req, RequestRing, TCPX_REQUESTS};
use tcpx_core::unpack::{
    LoadMeta, NetUnpackMeta, UnpackDevHandle, ENTRIES_PER_SLOT, MAX_RECV_BYTES, PAGE_SIZE,
};
use tcpx_core::wire::sock::{SockHello, SockRequestHeader, HEADER_LEN};

use super::direct::Direct;
use super::sockets::Core;
use super::unpack::{Unpack, UnpackView};
use super::{lock, unpack_device, ReqKind, Request, NOT_OLDEST, TOO_MANY};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::frag::{Layout, MAX_PAGES_PER_REQ};
use crate::sys::{self, Sock};
use crate::trace;
use crate::worker::{self, FragJob, Job, JobKind};

/// Control-socket read-ahead buffer: coalesces headers and small payloads into one recv.
const STAGE_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxPhase {
    /// Waiting for the next request's header.
    Header,
    /// Header read; waiting for bounce pages (TCPX mode) before dispatch.
    Pages,
    /// Reading an inline payload; `off` bytes landed.
    Inline { off: usize },
}

struct RecvSlot {
    ptr: *mut u8,
    cap: usize,
    size: usize,
    inline: bool,
    /// This request lands in bounce pages + LoadMeta (a CUDA buffer, or any buffer with
    /// `Config::host_bounce`); otherwise straight into `ptr`.
    bounce: bool,
    /// `ptr` is CUDA memory.
    cuda: bool,
    /// Bounce pages of this request (TCPX mode), returned at `irecvConsumed`.
    pages: Box<[u32]>,
    npages: usize,
    /// Its fragment entries: the comm's own copy of what it publishes, which the helpers follow
    /// (never the published table, which the consumer can write).
    frags: Box<[LoadMeta]>,
    nfrags: usize,
    /// Where its bytes go (bounce receives, once their pages are reserved).
    dest: Option<FragJob>,
}

struct RecvState {
    /// Posted, header read and payload landed inline or handed on (control passed), tested,
    /// consumed (TCPX mode; host receives free their slot when tested).
    requests: RequestRing,
    /// Where the control stream is in the next request's (`requests.next_ctrl()`).
    rx: RxPhase,
    stage: Box<[u8]>,
    st_lo: usize,
    st_hi: usize,
    chunk_ctr: u64,
    slots: [RecvSlot; TCPX_REQUESTS],
    /// The request the calling thread is receiving itself, if any.
    direct: Option<Direct>,
    err: Option<Error>,
}

// SAFETY: see SendState; raw pointers are user buffers handed to helpers under the protocol.
unsafe impl Send for RecvState {}

/// A connected receiving endpoint.
pub struct RecvComm {
    pub(super) core: Core,
    /// Present in TCPX mode (an UNPACK device).
    unpack: Option<Unpack>,
    /// `Config::host_bounce`: host receives go through bounce pages too (CPU-oracle testing).
    host_bounce: bool,
    st: Mutex<RecvState>,
    reqs: [Request; TCPX_REQUESTS],
}

// SAFETY: the raw pointers in `unpack` are owned allocations of this comm.
unsafe impl Send for RecvComm {}
// SAFETY: all mutable state is behind `st`; the unpack regions are written under it too.
unsafe impl Sync for RecvComm {}

impl RecvComm {
    pub(super) fn new(
        socks: Vec<TcpStream>,
        hello: &SockHello,
        cfg: &Config,
        gpu: Option<usize>,
    ) -> Result<Box<Self>> {
        let core = Core::new(socks, hello.chunk_bytes as usize, cfg)?;
        let unpack = if unpack_device(cfg) {
            Some(Unpack::new(cfg, gpu, hello.conn_id)?)
        } else {
            None
        };
        let (npages, nfrags, release) = if unpack.is_some() {
            (MAX_PAGES_PER_REQ, ENTRIES_PER_SLOT, Release::AtConsume)
        } else {
            (0, 0, Release::AtTest)
        };
        let mut c = Box::new(RecvComm {
            core,
            unpack,
            host_bounce: cfg.host_bounce,
            st: Mutex::new(RecvState {
                requests: RequestRing::new(release),
                rx: RxPhase::Header,
                stage: vec![0u8; STAGE_BYTES].into_boxed_slice(),
                st_lo: 0,
                st_hi: 0,
                chunk_ctr: 0,
                slots: core::array::from_fn(|_| RecvSlot {
                    ptr: core::ptr::null_mut(),
                    cap: 0,
                    size: 0,
                    inline: false,
                    bounce: false,
                    cuda: false,
                    pages: vec![0u32; npages].into_boxed_slice(),
                    npages: 0,
                    frags: vec![LoadMeta::default(); nfrags].into_boxed_slice(),
                    nfrags: 0,
                    dest: None,
                }),
                direct: None,
                err: None,
            }),
            reqs: core::array::from_fn(|i| Request::new(ReqKind::Recv, i)),
        });
        let me = &*c as *const RecvComm as *const c_void;
        for r in &mut c.reqs {
            r.owner = me;
        }
        Ok(c)
    }

    /// Fills the caller's device handle in place, as TCPX's `accept` does (TCPX mode only;
    /// false in host mode, which has none).
    pub(crate) fn fill_dev_handle(&self, d: &mut DevHandle) -> bool {
        let Some(u) = self.unpack.as_ref() else {
            return false;
        };
        *d = DevHandle {
            net_device_type: NET_DEVICE_UNPACK,
            net_device_version: NET_UNPACK_VERSION,
            handle: u.handle_ptr(),
            size: core::mem::size_of::<UnpackDevHandle>(),
            needs_proxy_progress: 1,
        };
        true
    }

    /// Makes what this comm's CUDA receives will need now, at a CUDA registration (setup): the
    /// helpers' landings when those receives need device copies (bounce pages in device
    /// memory, or linear bytes written into the CUDA buffer). Made at the first such receive
    /// instead, their driver calls can wait behind a kernel that waits for that receive.
    pub(crate) fn prepare_cuda(&self) -> Result<()> {
        let Some(u) = self.unpack.as_ref() else {
            return Ok(());
        };
        if !(u.bounce.is_device() || u.shape.linear_bytes > 0) {
            return Ok(());
        }
        self.core.shared.prepare_landings(u.gpu.unwrap_or(0))
    }

    /// How many helpers have their landing on device `gpu` (tests).
    pub(crate) fn landings_on(&self, gpu: usize) -> usize {
        self.core.shared.landings_on(gpu)
    }

    /// Whether the comm is in TCPX mode.
    pub(crate) fn tcpx(&self) -> bool {
        self.core.tcpx
    }

    /// Host views of the meta table and bounce region (TCPX mode only).
    pub fn unpack_view(&self) -> Option<UnpackView> {
        self.unpack.as_ref().map(|u| UnpackView {
            meta: u.meta.region.host.cast(),
            bounce: u.bounce.base(),
            bounce_len: u.bounce.len(),
            bounce_device: u.bounce.is_device(),
            bounce_pages_free: u.bounce.available(),
        })
    }

    /// Posts a receive of up to `cap` bytes into `data`; `cuda` = `data` is a CUDA buffer.
    /// CUDA receives (and, with `Config::host_bounce`, all receives) land in bounce pages and
    /// touch `data` only for linear bytes; host receives land in `data` directly.
    pub(crate) fn irecv(&self, data: *mut u8, cap: usize, cuda: bool) -> Result<*const Request> {
        trace::mark("sock.irecv");
        let mut st = lock(&self.st);
        if let Some(e) = st.err.or_else(|| self.core.shared.error()) {
            return Err(e);
        }
        // Done-but-unconsumed receives count in TCPX mode ("unable to allocate requests").
        let idx = st.requests.next_post().map_err(|_| TOO_MANY)?.slot;
        let (bounce, linear) = match self.unpack.as_ref() {
            None if cuda => return Err(Error::InvalidArgument("CUDA receive on a host-only comm")),
            None => (false, false),
            Some(u) => {
                let bounce = cuda || self.host_bounce;
                (bounce, bounce && u.shape.linear_bytes > 0)
            }
        };
        if bounce && cap > MAX_RECV_BYTES {
            return Err(Error::Internal("TCPX receives are limited to 4 MiB"));
        }
        // The buffer is written for host receives, and for the linear bytes of bounce ones.
        if (!bounce || linear) && cap > 0 && data.is_null() {
            return Err(Error::InvalidArgument("NULL receive buffer"));
        }
        let s = &mut st.slots[idx];
        s.ptr = data;
        s.cap = cap;
        s.size = 0;
        s.inline = false;
        s.bounce = bounce;
        s.cuda = cuda;
        s.npages = 0;
        s.nfrags = 0;
        s.dest = None;
        st.requests.post().map_err(|_| TOO_MANY)?;
        self.progress(&mut st);
        Ok(&self.reqs[idx])
    }

    /// Makes sure `need` bytes sit in the stage; false if the socket has no more yet.
    fn fill(&self, st: &mut RecvState, need: usize) -> Result<bool> {
        while st.st_hi - st.st_lo < need {
            if st.st_lo > 0 {
                let (lo, hi) = (st.st_lo, st.st_hi);
                st.stage.copy_within(lo..hi, 0);
                st.st_hi -= lo;
                st.st_lo = 0;
            }
            let hi = st.st_hi;
            match sys::recv_nb(
                self.core.ctrl.as_raw_fd(),
                &mut st.stage[hi..],
                Sock::Control,
            )? {
                Some(n) => st.st_hi += n,
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Advances the control stream as far as it goes without blocking.
    fn progress(&self, st: &mut RecvState) {
        if st.err.is_none() {
            // A direct receive is read a piece at a time, with the control socket checked in
            // between: a header arriving behind it hands the rest to the helper at once.
            let r = loop {
                match self
                    .progress_inner(st)
                    .and_then(|()| self.core.advance_direct(&mut st.direct))
                {
                    Ok(true) => continue,
                    Ok(false) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = r {
                st.err = Some(e);
            }
        }
    }

    fn progress_inner(&self, st: &mut RecvState) -> Result<()> {
        while let Some(r) = st.requests.next_ctrl() {
            let idx = r.slot;
            match st.rx {
                RxPhase::Header => {
                    if !self.fill(st, HEADER_LEN)? {
                        return Ok(());
                    }
                    let lo = st.st_lo;
                    let h = SockRequestHeader::parse(&st.stage[lo..lo + HEADER_LEN])
                        .map_err(|_| Error::Internal("request header"))?;
                    st.st_lo += HEADER_LEN;
                    if !h.is_for(r.seq) {
                        return Err(Error::Remote("control stream out of sequence"));
                    }
                    let s = &mut st.slots[idx];
                    if h.size as usize > s.cap {
                        return Err(Error::Internal("peer sent more bytes than posted"));
                    }
                    s.size = h.size as usize;
                    s.inline = h.inline;
                    st.rx = RxPhase::Pages;
                    trace::mark_key(
                        "sock.recv.header",
                        trace::request_key(Arc::as_ptr(&self.core.shared), idx),
                    );
                }
                RxPhase::Pages => {
                    if !self.reserve_pages(st, r) {
                        // Pool exhausted: the request waits for irecvConsumed.
                        return Ok(());
                    }
                    if st.slots[idx].inline {
                        self.core.shared.remaining[idx].store(0, Ordering::Relaxed);
                        st.rx = RxPhase::Inline { off: 0 };
                    } else {
                        let s = &st.slots[idx];
                        // Every earlier request tested: no helper has work, and no direct
                        // receive is in progress (its request would be untested).
                        let idle = st.requests.tested() == r.seq;
                        if !s.bounce && self.core.direct_ok(s.size, idle) {
                            let (ptr, size, chunk) = (s.ptr, s.size, st.chunk_ctr);
                            st.direct = Some(self.core.start_direct(idx, ptr, size, chunk));
                            st.chunk_ctr += 1;
                            trace::mark_key(
                                "sock.recv.direct",
                                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
                            );
                        } else {
                            // Marked before the hand-over: a helper may pick the job up at once.
                            trace::mark_key(
                                "sock.recv.dispatch",
                                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
                            );
                            self.dispatch(st, idx)?;
                        }
                        st.requests.pass_ctrl();
                        st.rx = RxPhase::Header;
                    }
                }
                RxPhase::Inline { off } => {
                    let off = self.read_inline(st, idx, off)?;
                    if off < st.slots[idx].size {
                        st.rx = RxPhase::Inline { off };
                        return Ok(());
                    }
                    st.requests.pass_ctrl();
                    st.rx = RxPhase::Header;
                    trace::mark_key(
                        "sock.recv.inline",
                        trace::request_key(Arc::as_ptr(&self.core.shared), idx),
                    );
                }
            }
        }
        Ok(())
    }

    /// TCPX mode: takes a bounce receive's pages and writes its fragment entries into its slot
    /// (and the slot's private copy); false while the pool has too few pages.
    fn reserve_pages(&self, st: &mut RecvState, r: Req) -> bool {
        let Some(u) = self.unpack.as_ref() else {
            return true;
        };
        let s = &mut st.slots[r.slot];
        if !s.bounce {
            // Lands in the user buffer; its slot still gets cnt = 0 at test.
            return true;
        }
        let layout = Layout::new(s.size, u.shape, u.seed.wrapping_add(r.seq));
        let n = layout.pages();
        // Pages come from the GPU's pool, which other comms draw from too; the receive waits
        // (this comm's next call retries) until all its pages are free at once.
        if !u.bounce.take(&mut s.pages[..n]) {
            return false;
        }
        s.npages = n;
        let slot = r.slot;
        let meta = u.meta.region.host.cast::<NetUnpackMeta>();
        let mut k = 0;
        for f in layout.frags() {
            // Offsets from the pool's base, which every comm of the GPU publishes; the pool is
            // at most 4 GiB, so every offset fits in 32 bits.
            let e = LoadMeta {
                src_off: s.pages[f.page] * PAGE_SIZE as u32 + f.off as u32,
                len: f.len as u32,
                dst_off: f.dst_off as u64,
            };
            s.frags[k] = e;
            // SAFETY: `meta` is this comm's table; slot < 16 and k < 2048 entries (the layout's
            // bound, checked in `frag`).
            unsafe { core::ptr::addr_of_mut!((*meta).mem[slot][k]).write_volatile(e) };
            k += 1;
        }
        s.nfrags = k;
        s.dest = Some(FragJob {
            list: s.frags.as_ptr(),
            n: k,
            bounce: u.bounce.base(),
            device_bounce: u.bounce.is_device(),
            cuda_buf: s.cuda,
            linear: layout.linear().1 > 0,
            gpu: u.gpu.unwrap_or(0),
        });
        true
    }

    /// Gives request `idx` to the helpers; a direct receive in progress hands its rest to its
    /// helper first, so each socket's bytes stay in request order.
    fn dispatch(&self, st: &mut RecvState, idx: usize) -> Result<()> {
        if let Some(d) = st.direct.take() {
            self.core.hand_off_direct(d, JobKind::RecvHost)?;
        }
        let s = &st.slots[idx];
        let kind = match s.dest.filter(|_| s.bounce) {
            Some(f) => JobKind::RecvFrags(f),
            None => JobKind::RecvHost,
        };
        let used = self.core.shared.dispatch(Job {
            kind,
            req: idx,
            base: s.ptr,
            size: s.size,
            chunk_base: st.chunk_ctr,
        })?;
        st.chunk_ctr += used;
        Ok(())
    }

    /// Moves inline payload bytes from the stage (and, in host mode, straight from the
    /// socket) into the request; returns the new offset.
    fn read_inline(&self, st: &mut RecvState, idx: usize, mut off: usize) -> Result<usize> {
        let size = st.slots[idx].size;
        while off < size {
            let avail = st.st_hi - st.st_lo;
            if avail == 0 {
                if !st.slots[idx].bounce && size - off >= STAGE_BYTES / 2 {
                    // Large remainder: straight into the user buffer, no staging copy.
                    // SAFETY: `ptr..ptr+cap` is the posted buffer and off < size <= cap.
                    let dst = unsafe {
                        core::slice::from_raw_parts_mut(st.slots[idx].ptr.add(off), size - off)
                    };
                    match sys::recv_nb(self.core.ctrl.as_raw_fd(), dst, Sock::Control)? {
                        Some(n) => off += n,
                        None => return Ok(off),
                    }
                    continue;
                }
                if !self.fill(st, 1)? {
                    return Ok(off);
                }
                continue;
            }
            let n = avail.min(size - off);
            let lo = st.st_lo;
            self.place(st, idx, off, lo, n)?;
            st.st_lo += n;
            off += n;
        }
        Ok(off)
    }

    /// Copies `n` staged bytes at `lo` to request position `off`.
    fn place(&self, st: &RecvState, idx: usize, off: usize, lo: usize, n: usize) -> Result<()> {
        let s = &st.slots[idx];
        let src = &st.stage[lo..lo + n];
        match s.dest.filter(|_| s.bounce) {
            None => {
                // SAFETY: off + n <= size <= cap of the posted buffer.
                unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), s.ptr.add(off), n) };
                Ok(())
            }
            Some(f) => {
                let writer = self.unpack.as_ref().and_then(|u| u.writer.as_ref());
                // SAFETY: the request's buffer and entries live until it is consumed; its
                // bytes `off..off+n` are placed by this thread alone (inline payload).
                unsafe {
                    worker::deliver(
                        &f,
                        s.ptr,
                        off,
                        src,
                        self.core.shared.stream_bounce,
                        writer.filter(|_| f.device()),
                    )
                }
            }
        }
    }

    pub(super) fn test(&self, idx: usize) -> Result<Option<usize>> {
        let mut st = lock(&self.st);
        let r = st.requests.testable(idx).map_err(|_| NOT_OLDEST)?;
        self.progress(&mut st);
        let s = &st.slots[idx];
        let done = st.requests.ctrl_passed(r)
            && self.core.shared.remaining[idx].load(Ordering::Acquire) == 0;
        if done {
            trace::mark_key(
                "sock.recv.done",
                trace::request_key(Arc::as_ptr(&self.core.shared), idx),
            );
            let size = s.size;
            if let Some(u) = &self.unpack {
                let meta = u.meta.region.host.cast::<NetUnpackMeta>();
                // Entries and bytes (ours and the helpers', via the Acquire above; device copies
                // were waited for) before the count.
                fence(Ordering::Release);
                // SAFETY: `meta` is this comm's table; the slot index is < 16.
                unsafe {
                    core::ptr::addr_of_mut!((*meta).cnt[r.slot]).write_volatile(s.nfrags as u64)
                };
            }
            // Host mode (`Release::AtTest`): nothing is held once tested.
            st.requests.complete(r).map_err(|_| NOT_OLDEST)?;
            return Ok(Some(size));
        }
        match st.err.or_else(|| self.core.shared.error()) {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Releases the oldest completed receive, its slot and pages (TCPX's in-order
    /// `irecvConsumed`; in TCPX mode the only way a receive leaves the queue, host ones too).
    pub(crate) fn consumed(&self, idx: usize) -> Result<()> {
        let mut st = lock(&self.st);
        if self.unpack.is_none() {
            // Host mode frees requests at test; nothing is held.
            return Ok(());
        }
        st.requests.consume(idx).map_err(|_| {
            Error::Internal("irecvConsumed out of order or before test reported done")
        })?;
        let u = self.unpack.as_ref().expect("TCPX mode checked above");
        let s = &mut st.slots[idx];
        u.bounce.give(&s.pages[..s.npages]);
        s.npages = 0;
        s.nfrags = 0;
        s.dest = None;
        // Pages freed: a request waiting for the pool may go on.
        self.progress(&mut st);
        Ok(())
    }

    /// Closes the comm; requests in flight are abandoned and their pages go back to the GPU's
    /// pool (the pool itself goes with the last comm holding it).
    pub(crate) fn close(mut self: Box<Self>) {
        if !self.core.shutdown() {
            // A helper may still write pages: leak rather than let another comm reuse them.
            core::mem::forget(self);
            return;
        }
        // Every helper has exited: nothing writes this comm's pages any more.
        if let Some(u) = self.unpack.as_ref() {
            let mut st = lock(&self.st);
            for s in st.slots.iter_mut() {
                u.bounce.give(&s.pages[..s.npages]);
                s.npages = 0;
            }
        }
    }
}
