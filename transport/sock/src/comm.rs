//! Comms: listen/connect/accept state machines and the send/recv request paths.
//!
//! Each comm has one non-blocking control socket, driven on the caller's thread inside
//! `isend`/`irecv`/`test` (headers and small inline payloads), plus `nsocks` blocking data
//! sockets served by helper threads (see [`crate::worker`]).

use core::ffi::c_void;
use std::io::IoSlice;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpx_core::abi::{DevHandle, NET_DEVICE_UNPACK, NET_UNPACK_VERSION};
use tcpx_core::ring::{Release, Req, RequestRing, TCPX_REQUESTS};
use tcpx_core::unpack::{
    LoadMeta, NetUnpackMeta, UnpackDevHandle, ENTRIES_PER_SLOT, MAX_RECV_BYTES, PAGE_SIZE,
};
use tcpx_core::wire::sock::{SockHandle, SockHello, SockRequestHeader, HEADER_LEN, HELLO_LEN};

use crate::config::{Config, StageKernel};
use crate::cuda::{self, DeviceMem, DeviceWriter, SendStage, Staging};
use crate::dev;
use crate::error::{Error, Result};
use crate::frag::{Layout, Shape, MAX_PAGES_PER_REQ};
use crate::mem::{OwnedRegion, StageRing};
use crate::pool::BouncePool;
use crate::sys::{self, Sock};
use crate::trace;
use crate::worker::{self, FragJob, Job, JobKind, Shared};

/// How long `close` waits for helper threads before giving up on them.
const CLOSE_JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Control-socket read-ahead buffer: coalesces headers and small payloads into one recv.
const STAGE_BYTES: usize = 64 << 10;
/// Tags `Request`s so a stray pointer is caught before it is used.
const REQ_MAGIC: u32 = 0x5251_5854;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sys_err(ctx: &'static str, e: std::io::Error) -> Error {
    Error::from_errno(ctx, e.raw_os_error().unwrap_or(0))
}

/// A 17th outstanding request (TCPX refuses it too).
const TOO_MANY: Error = Error::Internal("more than 16 outstanding requests");
/// A `test` on any request but the oldest untested one.
const NOT_OLDEST: Error = Error::Internal("test on a request that is not the oldest");

/// Which comm a [`Request`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ReqKind {
    Send = 1,
    Recv = 2,
}

/// The object behind a `request` pointer: one of the 16 preallocated slots of a comm.
#[repr(C)]
pub struct Request {
    magic: u32,
    kind: ReqKind,
    idx: u8,
    owner: *const c_void,
}

impl Request {
    fn new(kind: ReqKind, idx: usize) -> Self {
        Request {
            magic: REQ_MAGIC,
            kind,
            idx: idx as u8,
            owner: core::ptr::null(),
        }
    }

    /// Tests this request (the body of the v7 `test`): `Some` once done, holding the size to
    /// report, which is `None` in TCPX mode: TCPX's `test` never writes it.
    ///
    /// # Safety
    /// `self` was handed out by `isend`/`irecv` of a comm that is still open.
    pub(crate) unsafe fn test(&self) -> Result<Option<Option<usize>>> {
        if self.magic != REQ_MAGIC || self.owner.is_null() {
            return Err(Error::InvalidArgument("not a tcpxsock request"));
        }
        let (done, tcpx) = match self.kind {
            ReqKind::Send => {
                // SAFETY: the owner of a send request is the live SendComm that issued it.
                let c = unsafe { &*(self.owner as *const SendComm) };
                (c.test(self.idx as usize)?, c.core.tcpx)
            }
            ReqKind::Recv => {
                // SAFETY: as above, for a RecvComm.
                let c = unsafe { &*(self.owner as *const RecvComm) };
                (c.test(self.idx as usize)?, c.core.tcpx)
            }
        };
        Ok(done.map(|size| (!tcpx).then_some(size)))
    }

    /// The owning recv comm, if this is a receive request.
    pub(crate) fn recv_owner(&self) -> Option<*const RecvComm> {
        (self.magic == REQ_MAGIC && self.kind == ReqKind::Recv).then_some(self.owner.cast())
    }

    pub(crate) fn index(&self) -> usize {
        self.idx as usize
    }
}

/* ---------------------------------- listen / accept ---------------------------------- */

struct Pending {
    sock: TcpStream,
    buf: [u8; HELLO_LEN],
    got: usize,
}

struct Group {
    conn_id: u64,
    hello: SockHello,
    socks: Vec<Option<TcpStream>>,
    /// When its last socket arrived (`Config::accept_delay_ms` counts from there).
    complete_at: Option<Instant>,
}

/// A listening endpoint; accepts connections non-blockingly and groups them into comms.
pub struct ListenComm {
    listener: TcpListener,
    nonce: u64,
    cfg: Config,
    pending: Vec<Pending>,
    groups: Vec<Group>,
    /// The GPU current at `listen` (CUDA machines): TCPX steers the comms' flows to its RX pool.
    listen_gpu: Option<usize>,
    /// The GPU current at the first `accept` call since the last comm was returned: TCPX binds
    /// the next recv comm (its unpack queue and device handle) to it.
    accept_gpu: Option<usize>,
}

impl ListenComm {
    /// Binds to device `dev`'s address on an ephemeral port and fills `handle`.
    pub(crate) fn new(dev: i32, handle: &mut [u8]) -> Result<Box<Self>> {
        let d = dev::get(dev)?;
        let listener =
            TcpListener::bind(SocketAddr::new(d.addr, 0)).map_err(|e| sys_err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| sys_err("listen nonblocking", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| sys_err("getsockname", e))?;
        let nonce = sys::random_u64();
        SockHandle { addr, nonce }
            .emit(handle)
            .map_err(|_| Error::InvalidArgument("listen handle too short"))?;
        let cfg = crate::config::current();
        Ok(Box::new(ListenComm {
            listener,
            nonce,
            listen_gpu: current_gpu(&cfg),
            cfg,
            pending: Vec::new(),
            groups: Vec::new(),
            accept_gpu: None,
        }))
    }

    /// Whether its comms are in TCPX mode (an UNPACK device).
    pub(crate) fn tcpx(&self) -> bool {
        unpack_device(&self.cfg)
    }

    /// One non-blocking accept step; `Some` once every socket of a peer comm arrived and
    /// `Config::accept_delay_ms` passed since.
    pub(crate) fn accept(&mut self) -> Result<Option<Box<RecvComm>>> {
        if self.accept_gpu.is_none() {
            self.accept_gpu = current_gpu(&self.cfg);
        }
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)
                        .map_err(|e| sys_err("accept nonblocking", e))?;
                    self.pending.push(Pending {
                        sock: s,
                        buf: [0; HELLO_LEN],
                        got: 0,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sys_err("accept", e)),
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            let step = sys::recv_nb(p.sock.as_raw_fd(), &mut p.buf[p.got..], Sock::Control);
            match step {
                Ok(Some(n)) => p.got += n,
                Ok(None) => {}
                // A stray or vanished connection is dropped; it is no error of ours.
                Err(_) => {
                    self.pending.swap_remove(i);
                    continue;
                }
            }
            if self.pending[i].got < HELLO_LEN {
                i += 1;
                continue;
            }
            let p = self.pending.swap_remove(i);
            let hello = SockHello::parse(&p.buf).ok();
            let Some(h) = hello.filter(|h| h.nonce == self.nonce) else {
                crate::log_warn("tcpxsock: rejected a connection with a bad hello");
                continue;
            };
            let gi = match self.groups.iter().position(|g| g.conn_id == h.conn_id) {
                Some(gi) => gi,
                None => {
                    self.groups.push(Group {
                        conn_id: h.conn_id,
                        hello: h,
                        socks: (0..=h.nsocks).map(|_| None).collect(),
                        complete_at: None,
                    });
                    self.groups.len() - 1
                }
            };
            let g = &mut self.groups[gi];
            if h.nsocks != g.hello.nsocks
                || h.chunk_bytes != g.hello.chunk_bytes
                || g.socks[h.index as usize].is_some()
            {
                crate::log_warn("tcpxsock: rejected an inconsistent hello");
                continue;
            }
            g.socks[h.index as usize] = Some(p.sock);
        }
        let delay = Duration::from_millis(self.cfg.accept_delay_ms as u64);
        let now = Instant::now();
        for g in &mut self.groups {
            if g.complete_at.is_none() && g.socks.iter().all(Option::is_some) {
                g.complete_at = Some(now);
            }
        }
        if let Some(gi) = self.groups.iter().position(|g| {
            g.complete_at
                .is_some_and(|t| now.duration_since(t) >= delay)
        }) {
            let g = self.groups.swap_remove(gi);
            let socks: Vec<TcpStream> = g.socks.into_iter().flatten().collect();
            let gpu = self.accept_gpu.take();
            if let (Some(l), Some(a)) = (self.listen_gpu, gpu) {
                if l != a {
                    crate::log_info(&format!(
                        "tcpxsock: recv comm on GPU {a}, listen comm on GPU {l}: TCPX would \
                         steer its flows to GPU {l}'s RX pool and put its unpack queue on GPU {a}"
                    ));
                }
            }
            return RecvComm::new(socks, &g.hello, &self.cfg, gpu).map(Some);
        }
        Ok(None)
    }
}

/* -------------------------------------- connect -------------------------------------- */

/// A connect in progress; lives in the caller's handle between `connect` calls.
pub(crate) struct Connecting {
    socks: Vec<TcpStream>,
    connected: Vec<bool>,
    sent: Vec<usize>,
    hellos: Vec<[u8; HELLO_LEN]>,
    cfg: Config,
    /// The GPU current at the first `connect` call (TCPX binds the send comm to it).
    gpu: Option<usize>,
}

impl Connecting {
    /// Starts every socket's non-blocking connect.
    pub(crate) fn start(handle: &SockHandle) -> Result<Box<Self>> {
        let cfg = crate::config::current();
        let conn_id = sys::random_u64();
        let n = cfg.nsocks;
        let mut socks = Vec::with_capacity(n + 1);
        let mut hellos = Vec::with_capacity(n + 1);
        for i in 0..=n {
            socks.push(sys::connect_start(handle.addr)?);
            let hello = SockHello {
                index: i as u8,
                nsocks: n as u8,
                nonce: handle.nonce,
                conn_id,
                chunk_bytes: cfg.chunk_bytes as u32,
            };
            hellos.push(
                hello
                    .to_bytes()
                    .map_err(|_| Error::InvalidArgument("socket count or chunk size"))?,
            );
        }
        Ok(Box::new(Connecting {
            connected: vec![false; n + 1],
            sent: vec![0; n + 1],
            socks,
            hellos,
            gpu: current_gpu(&cfg),
            cfg,
        }))
    }

    /// One step; true once every socket is connected and has sent its hello.
    pub(crate) fn step(&mut self) -> Result<bool> {
        let mut all = true;
        for i in 0..self.socks.len() {
            if !self.connected[i] {
                self.connected[i] = sys::connect_done(&self.socks[i])?;
            }
            if self.connected[i] && self.sent[i] < HELLO_LEN {
                let b = &self.hellos[i][self.sent[i]..];
                if let Some(n) =
                    sys::send_nb(self.socks[i].as_raw_fd(), &[IoSlice::new(b)], Sock::Control)?
                {
                    self.sent[i] += n;
                }
            }
            all &= self.sent[i] == HELLO_LEN;
        }
        Ok(all)
    }

    /// Turns a finished connect into a send comm.
    pub(crate) fn finish(self) -> Result<Box<SendComm>> {
        SendComm::new(self.socks, &self.cfg, self.gpu)
    }

    /// Whether the comm it makes is in TCPX mode (an UNPACK device).
    pub(crate) fn tcpx(&self) -> bool {
        unpack_device(&self.cfg)
    }
}

/// The GPU current on the calling thread (device 0 if none, as `cudaGetDevice` says), on a CUDA
/// machine in TCPX mode: what TCPX binds comms to.
fn current_gpu(cfg: &Config) -> Option<usize> {
    (unpack_device(cfg) && cuda::present()).then(cuda::home_ordinal)
}

/* ------------------------------------- comm core ------------------------------------- */

/// Sockets and helper threads common to both directions.
struct Core {
    shared: Arc<Shared>,
    ctrl: TcpStream,
    /// Duplicates of the data sockets, kept to wake blocked helpers at close, and used by the
    /// calling thread for a [`Direct`] request.
    data: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
    /// `Config::direct_bytes`.
    direct_bytes: usize,
    /// TCPX mode (an UNPACK device): `test` never reports sizes, receives leave only at
    /// `irecvConsumed`, `isend`/`irecv` need a memory handle, `iflush` is an error.
    pub(crate) tcpx: bool,
}

/// Most bytes a direct request moves per call: a direct send's first piece (the helper sends
/// the rest), a direct receive's read per `irecv`/`test`.
const DIRECT_PIECE: usize = 64 << 10;

/// Requests (sends and receives) this process has started on the calling thread
/// (`Config::direct_bytes`) instead of handing them to a helper, and how many of those were
/// handed to a helper part way.
static DIRECT_REQUESTS: AtomicU64 = AtomicU64::new(0);
static DIRECT_HANDOFFS: AtomicU64 = AtomicU64::new(0);

/// How many requests went direct, sends and receives together, and how many of them a later
/// request made the calling thread hand to a helper part way: tests use it to tell the paths
/// apart (all deliver the same bytes).
pub fn direct_requests() -> (u64, u64) {
    (
        DIRECT_REQUESTS.load(Ordering::Relaxed),
        DIRECT_HANDOFFS.load(Ordering::Relaxed),
    )
}

/// A one-chunk host request whose data-socket bytes the calling thread moves itself: a receive
/// in progress (its slot's `remaining` stays 1 until it is done), or the rest of a send or
/// receive being handed to the helper.
#[derive(Clone, Copy, Debug)]
struct Direct {
    /// Request slot.
    idx: usize,
    /// Its buffer and size.
    base: *mut u8,
    size: usize,
    /// Bytes moved so far.
    off: usize,
    /// Its chunk's comm-lifetime index (the data socket is `chunk % nsocks`).
    chunk: u64,
}

impl Core {
    fn new(mut socks: Vec<TcpStream>, chunk_bytes: usize, cfg: &Config) -> Result<Self> {
        let ctrl = socks.remove(0);
        sys::tune(&ctrl, cfg.sock_buf_bytes)?;
        ctrl.set_nonblocking(true)
            .map_err(|e| sys_err("ctrl nonblocking", e))?;
        let shared = Shared::new(socks.len(), chunk_bytes, cfg.stream_bounce);
        let mut core = Core {
            shared: shared.clone(),
            ctrl,
            data: Vec::with_capacity(socks.len()),
            threads: Vec::with_capacity(socks.len()),
            direct_bytes: cfg.direct_bytes,
            tcpx: unpack_device(cfg),
        };
        for (i, s) in socks.into_iter().enumerate() {
            sys::tune(&s, cfg.sock_buf_bytes)?;
            s.set_nonblocking(false)
                .map_err(|e| sys_err("data blocking", e))?;
            core.data
                .push(s.try_clone().map_err(|e| sys_err("dup data socket", e))?);
            core.threads.push(worker::spawn(shared.clone(), i, s)?);
        }
        Ok(core)
    }

    /// Whether a host request of `size` bytes may be moved by the calling thread now
    /// (`Config::direct_bytes`): small enough, and `idle`: every earlier request of the comm
    /// tested (not in the middle of a stream, where the helpers keep the sockets busier than
    /// the calling thread could). A tested request's helpers are done with their sockets, so
    /// none touches a data socket until a job is queued, which hands a direct receive over
    /// first.
    fn direct_ok(&self, size: usize, idle: bool) -> bool {
        debug_assert!(
            !idle
                || self
                    .shared
                    .remaining
                    .iter()
                    .all(|r| r.load(Ordering::Acquire) == 0),
            "an idle comm has no helper work"
        );
        size > 0
            && size <= self.direct_bytes
            // One chunk of the comm's (the sender's) chunk size, which a receiver's own
            // `direct_bytes` does not bound: one socket carries all of it.
            && size <= self.shared.chunk_bytes
            && idle
    }

    /// Starts receive `idx` direct on its chunk's data socket.
    fn start_direct(&self, idx: usize, base: *mut u8, size: usize, chunk: u64) -> Direct {
        self.shared.remaining[idx].store(1, Ordering::Relaxed);
        DIRECT_REQUESTS.fetch_add(1, Ordering::Relaxed);
        Direct {
            idx,
            base,
            size,
            off: 0,
            chunk,
        }
    }

    fn data_fd(&self, chunk: u64) -> i32 {
        self.data[(chunk % self.data.len() as u64) as usize].as_raw_fd()
    }

    /// Sends request `idx` direct: writes up to [`DIRECT_PIECE`] bytes that its chunk's data
    /// socket takes now, without blocking, and gives any rest to the socket's helper at once,
    /// so the request never waits for a later call, and the calling thread is soon free to
    /// post the requests behind it (writing a whole 256 KiB request first made a batch of 16
    /// such requests 30 % slower through NIXL on the H200; one piece did not). Returns whether
    /// it is complete.
    fn send_direct(&self, idx: usize, base: *mut u8, size: usize, chunk: u64) -> Result<bool> {
        let fd = self.data_fd(chunk);
        // SAFETY: `base..base+size` is the caller's send buffer, live during the call.
        let piece = unsafe { core::slice::from_raw_parts(base, size.min(DIRECT_PIECE)) };
        let mut off = 0;
        while off < piece.len() {
            match sys::send_nb(fd, &[IoSlice::new(&piece[off..])], Sock::Data)? {
                Some(n) => off += n,
                None => break,
            }
        }
        DIRECT_REQUESTS.fetch_add(1, Ordering::Relaxed);
        if off == size {
            self.shared.remaining[idx].store(0, Ordering::Relaxed);
            return Ok(true);
        }
        self.hand_off_direct(
            Direct {
                idx,
                base,
                size,
                off,
                chunk,
            },
            JobKind::Send,
        )?;
        Ok(false)
    }

    /// Reads up to [`DIRECT_PIECE`] bytes of the direct receive `*d` that its data socket has
    /// now, without blocking; clears it and completes its request when all bytes are in.
    /// Returns true when a whole piece came and more is due (the caller checks the control
    /// socket, whose next header would hand the rest to the helper, before reading on).
    fn advance_direct(&self, d: &mut Option<Direct>) -> Result<bool> {
        let Some(cur) = d.as_mut() else {
            return Ok(false);
        };
        let fd = self.data_fd(cur.chunk);
        let end = cur.size.min(cur.off + DIRECT_PIECE);
        while cur.off < end {
            // SAFETY: `base..base+size` is the request's live buffer (NCCL's contract) until
            // the request completes, which only this function reports.
            let dst =
                unsafe { core::slice::from_raw_parts_mut(cur.base.add(cur.off), end - cur.off) };
            match sys::recv_nb(fd, dst, Sock::Data)? {
                Some(n) => cur.off += n,
                None => return Ok(false),
            }
        }
        if cur.off < cur.size {
            return Ok(true);
        }
        self.shared.remaining[cur.idx].store(0, Ordering::Release);
        *d = None;
        Ok(false)
    }

    /// Gives the rest of direct request `cur` to its socket's helper, ahead of any job queued
    /// after this, so the socket's bytes stay in request order.
    fn hand_off_direct(&self, cur: Direct, kind: JobKind) -> Result<()> {
        DIRECT_HANDOFFS.fetch_add(1, Ordering::Relaxed);
        // The chunk was counted when the request started; its remainder is that chunk's
        // tail (one chunk, so `dispatch` puts it on the chunk's socket).
        self.shared.dispatch(Job {
            kind,
            req: cur.idx,
            // SAFETY: off < size, inside the request's buffer.
            base: unsafe { cur.base.add(cur.off) },
            size: cur.size - cur.off,
            chunk_base: cur.chunk,
        })?;
        Ok(())
    }

    /// Stops the helpers. Returns false if some did not exit in time; the caller must then
    /// leak everything they might still touch instead of freeing it.
    fn shutdown(&mut self) -> bool {
        self.shared.closing.store(true, Ordering::Release);
        sys::shutdown(&self.ctrl);
        for s in &self.data {
            sys::shutdown(s);
        }
        self.shared.wake_all();
        let all = self
            .shared
            .wait_exited(self.threads.len(), CLOSE_JOIN_TIMEOUT);
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        // Whatever happens to the helpers, no staging kernel or copy reads the caller's
        // buffers once the comm is shut down (the last reference to the staging may otherwise
        // go with an exiting helper thread, later).
        if let Some(stage) = self.shared.cuda_stage.get() {
            stage.stop();
        }
        all
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // Comms dropped without close (setup failures) still stop their helpers.
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

/* ---------------------------------------- send --------------------------------------- */

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
    core: Core,
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
    fn new(socks: Vec<TcpStream>, cfg: &Config, gpu: Option<usize>) -> Result<Box<Self>> {
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

    /// The comm's staging ring, made at its first CUDA send (under the state lock, so once) on
    /// the comm's GPU, else on the GPU of the first CUDA send's buffer.
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

    fn test(&self, idx: usize) -> Result<Option<usize>> {
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

/* ---------------------------------------- recv --------------------------------------- */

/// Whether the device is UNPACK, i.e. its comms are in TCPX mode: CUDA present, or asked for.
pub(crate) fn unpack_device(cfg: &Config) -> bool {
    cfg.unpack || cfg.host_bounce || cuda::present()
}

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

/// What the device handle's `handle` points at.
enum HandleMem {
    /// Without CUDA: host memory.
    Host(Box<UnpackDevHandle>),
    /// On a CUDA machine: device memory, as TCPX's (`cuMemAlloc`, filled by a copy).
    Device(DeviceMem),
}

/// TCPX-mode state of a recv comm.
struct Unpack {
    meta: OwnedRegion,
    /// The GPU's bounce pool, shared with every other recv comm of that GPU: its base is the
    /// `bounce_buf` of every one of their device handles.
    bounce: Arc<BouncePool>,
    handle: HandleMem,
    /// Device copies made on the calling thread (the handle; inline payloads into device
    /// memory); CUDA machines.
    writer: Option<DeviceWriter>,
    /// The comm's GPU (CUDA machines).
    gpu: Option<usize>,
    shape: Shape,
    /// Seeds each receive's fragment layout.
    seed: u64,
}

impl Unpack {
    /// Meta table and device handle for a comm of GPU `gpu` (CUDA machines), and that GPU's
    /// bounce pool.
    fn new(cfg: &Config, gpu: Option<usize>, seed: u64) -> Result<Self> {
        let meta = OwnedRegion::new(core::mem::size_of::<NetUnpackMeta>(), gpu)?;
        let writer = gpu.map(DeviceWriter::new).transpose()?;
        let bounce = BouncePool::for_gpu(cfg, gpu)?;
        let h = UnpackDevHandle {
            meta: meta.region.device.cast(),
            bounce_buf: bounce.device_base(),
            head: u64::MAX,
        };
        let handle = match (&writer, gpu) {
            (Some(w), Some(g)) => {
                let m = DeviceMem::new(g, core::mem::size_of::<UnpackDevHandle>())?;
                // SAFETY: `h` lives across the batch, which waits for the copy; `m` is ours.
                w.batch(|c| unsafe {
                    c.htod(
                        m.ptr(),
                        (&h as *const UnpackDevHandle).cast(),
                        core::mem::size_of::<UnpackDevHandle>(),
                    )
                })?;
                HandleMem::Device(m)
            }
            _ => HandleMem::Host(Box::new(h)),
        };
        Ok(Unpack {
            meta,
            bounce,
            handle,
            writer,
            gpu,
            shape: Shape {
                odd: cfg.odd_fragments,
                linear_bytes: cfg.linear_bytes,
            },
            seed,
        })
    }

    /// What the device handle's `handle` points at.
    fn handle_ptr(&self) -> *mut c_void {
        match &self.handle {
            HandleMem::Host(b) => (&**b as *const UnpackDevHandle).cast_mut().cast(),
            HandleMem::Device(d) => d.ptr() as usize as *mut c_void,
        }
    }
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
    core: Core,
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

/// Host views of a recv comm's TCPX-mode memory, for in-process tests and tools.
#[derive(Debug, Clone, Copy)]
pub struct UnpackView {
    /// The meta table (host address).
    pub meta: *const NetUnpackMeta,
    /// Base of the bounce region: its host address, or its device address when
    /// `bounce_device` (read it with a device-to-host copy).
    pub bounce: *const u8,
    /// Length of the bounce region.
    pub bounce_len: usize,
    /// The bounce region is device memory (`Config::bounce_device` on a CUDA machine).
    pub bounce_device: bool,
    /// Pages of the bounce region free when the view was taken (the region is the GPU's pool,
    /// shared by all its recv comms).
    pub bounce_pages_free: usize,
}

impl RecvComm {
    fn new(
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

    fn test(&self, idx: usize) -> Result<Option<usize>> {
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
