//! Helper threads: one per data socket, each moving its share of every request's chunks.
//!
//! Both ends assign chunk `j` of the comm's lifetime to socket `j % nsocks`, so a request's
//! chunks can be split without per-chunk headers: each socket carries its chunks in request
//! order and the receiver derives the same split from the size it read on the control socket.

use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpx_core::ring::TCPX_REQUESTS;
use tcpx_core::unpack::LoadMeta;

use crate::cuda::{Copies, DeviceWriter, Landing, SendStage, Staging};
use crate::error::{Error, Result};
use crate::frag::{pieces, Dest};
use crate::sys;
use crate::trace;

/// Jobs a lane can hold; a request puts at most one job on each lane.
const LANE_CAP: usize = 2 * TCPX_REQUESTS;
/// Fragments handed to one `recvmsg` in TCPX mode.
const IOV_BATCH: usize = 64;

/// What a helper thread does with its chunks of one request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JobKind {
    /// Send from `base`.
    Send,
    /// Send from `base` in the comm's CUDA staging ring ([`Shared::cuda_stage`]) as the
    /// request's device-to-host copy lands there.
    SendStaged(Staging),
    /// Receive into `base` (host mode).
    RecvHost,
    /// Receive into bounce pages and, for linear bytes, into `base` (TCPX mode).
    RecvFrags(FragJob),
}

/// Where a bounce receive's bytes go (TCPX mode): its fragment entries, and the posted buffer
/// for the bytes no entry covers (linear bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FragJob {
    /// The request's entries, in request order (the comm's private copy, which lives in the
    /// request's slot until the request is consumed).
    pub list: *const LoadMeta,
    pub n: usize,
    /// Base of the bounce region: a host address, or a device address when `device_bounce`.
    pub bounce: *mut u8,
    pub device_bounce: bool,
    /// The posted buffer is CUDA memory: linear bytes reach it by a host-to-device copy.
    pub cuda_buf: bool,
    /// The request has linear bytes.
    pub linear: bool,
    /// The comm's GPU, for device copies.
    pub gpu: usize,
}

impl FragJob {
    /// Whether delivering the request needs device copies.
    pub(crate) fn device(&self) -> bool {
        self.device_bounce || (self.cuda_buf && self.linear)
    }

    fn frags(&self) -> &[LoadMeta] {
        // SAFETY: per the field's contract, `n` entries live at `list` while the job does.
        unsafe { core::slice::from_raw_parts(self.list, self.n) }
    }
}

/// Delivers request bytes `at..at+src.len()` of a bounce receive from `src` to their places:
/// bounce pages (streamed with non-temporal stores when `stream`) and the posted buffer `base`;
/// device destinations through `writer`, waited for before this returns.
///
/// # Safety
/// `base` is the request's posted buffer and `job` describes the request; both stay valid, and
/// their destinations are this request's alone, for the call.
pub(crate) unsafe fn deliver(
    job: &FragJob,
    base: *mut u8,
    at: usize,
    src: &[u8],
    stream: bool,
    writer: Option<&DeviceWriter>,
) -> Result<()> {
    let place = |copies: Option<&Copies>| -> Result<()> {
        let mut it = pieces(job.frags(), at, at + src.len());
        while let Some(p) = it.try_next()? {
            let from = src[p.at - at..].as_ptr();
            let device = match p.dest {
                Dest::Bounce(_) => job.device_bounce,
                Dest::Linear => job.cuda_buf,
            };
            let dst = match p.dest {
                Dest::Bounce(o) => job.bounce.wrapping_add(o),
                Dest::Linear => base.wrapping_add(p.at),
            };
            match copies {
                // SAFETY: `from` holds p.len bytes of `src`, alive until the batch returns;
                // `dst` is this request's device memory (per the contract).
                Some(c) if device => unsafe { c.htod(dst as u64, from, p.len)? },
                None if device => return Err(Error::Internal("device copy without a writer")),
                // SAFETY: host destinations of this request; `from` holds p.len bytes.
                _ if stream => unsafe { stream_copy(from, dst, p.len) },
                // SAFETY: as above.
                _ => unsafe { core::ptr::copy_nonoverlapping(from, dst, p.len) },
            }
        }
        Ok(())
    };
    match writer {
        Some(w) => w.batch(|c| place(Some(c)))?,
        None => place(None)?,
    }
    if stream {
        store_fence();
    }
    Ok(())
}

/// One request's share for one lane.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Job {
    pub kind: JobKind,
    /// Request slot whose `remaining` counter this job decrements.
    pub req: usize,
    /// Start of the request's buffer (unused for `RecvPages`).
    pub base: *mut u8,
    /// Bytes in the request.
    pub size: usize,
    /// Comm-lifetime index of the request's first chunk.
    pub chunk_base: u64,
}

// SAFETY: a job's pointers reference memory the comm keeps alive until the job's request
// completes (user buffers by NCCL's contract, pages and bounce by the comm).
unsafe impl Send for Job {}

struct LaneQueue {
    jobs: [Option<Job>; LANE_CAP],
    head: usize,
    len: usize,
}

/// The work queue of one helper thread: a fixed ring, so posting never allocates.
pub(crate) struct Lane {
    q: Mutex<LaneQueue>,
    cv: Condvar,
}

/// State shared by the caller's thread and the helper threads of one comm.
pub(crate) struct Shared {
    pub closing: AtomicBool,
    has_error: AtomicBool,
    error: Mutex<Option<Error>>,
    /// Per request slot: lanes that still have to finish their job.
    pub remaining: [AtomicU32; TCPX_REQUESTS],
    pub lanes: Vec<Lane>,
    pub chunk_bytes: usize,
    /// `Config::stream_bounce`.
    pub stream_bounce: bool,
    /// The staging ring for CUDA sends (send comms only), made at the comm's first CUDA
    /// registration.
    pub cuda_stage: OnceLock<SendStage>,
    /// Per lane: its helper's way into device memory (recv comms whose CUDA receives need
    /// device copies), made at the comm's first CUDA registration ([`Shared::prepare_landings`]).
    landings: Vec<Mutex<Option<Landing>>>,
    exited: Mutex<usize>,
    exited_cv: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a helper panicked; the data is still consistent enough
    // to report errors and shut down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(nsocks: usize, chunk_bytes: usize, stream_bounce: bool) -> Arc<Self> {
        Arc::new(Shared {
            closing: AtomicBool::new(false),
            has_error: AtomicBool::new(false),
            error: Mutex::new(None),
            remaining: Default::default(),
            lanes: (0..nsocks)
                .map(|_| Lane {
                    q: Mutex::new(LaneQueue {
                        jobs: [None; LANE_CAP],
                        head: 0,
                        len: 0,
                    }),
                    cv: Condvar::new(),
                })
                .collect(),
            chunk_bytes,
            stream_bounce,
            cuda_stage: OnceLock::new(),
            landings: (0..nsocks).map(|_| Mutex::new(None)).collect(),
            exited: Mutex::new(0),
            exited_cv: Condvar::new(),
        })
    }

    /// Gives every helper a [`Landing`] on device `gpu` where it has none (or one on another
    /// device). Called at setup (a CUDA registration): a landing made at a helper's first device
    /// receive instead makes driver calls (a stream, pinned memory) that can wait behind a
    /// kernel of the same context, one that itself waits for the bytes this helper delivers.
    pub(crate) fn prepare_landings(&self, gpu: usize) -> Result<()> {
        for slot in &self.landings {
            // A helper holds its slot only while it delivers a request, with a landing in hand.
            let Ok(mut l) = slot.try_lock() else {
                continue;
            };
            if l.as_ref().is_none_or(|l| l.ordinal() != gpu) {
                *l = Some(Landing::new(gpu, SCRATCH)?);
            }
        }
        Ok(())
    }

    /// How many helpers have a landing on device `gpu` (tests).
    pub(crate) fn landings_on(&self, gpu: usize) -> usize {
        self.landings
            .iter()
            .filter(|l| lock(l).as_ref().is_some_and(|l| l.ordinal() == gpu))
            .count()
    }

    /// The first error a helper thread hit, if any.
    pub(crate) fn error(&self) -> Option<Error> {
        if !self.has_error.load(Ordering::Acquire) {
            return None;
        }
        *lock(&self.error)
    }

    fn set_error(&self, e: Error) {
        let mut g = lock(&self.error);
        if g.is_none() {
            *g = Some(e);
        }
        self.has_error.store(true, Ordering::Release);
    }

    /// Splits a request over the lanes; sets `remaining[req]` to the number of lanes used.
    /// Returns the number of chunks consumed from the comm's chunk counter.
    pub(crate) fn dispatch(&self, job: Job) -> Result<u64> {
        let n = self.lanes.len() as u64;
        let nchunks = job.size.div_ceil(self.chunk_bytes) as u64;
        let used = nchunks.min(n);
        self.remaining[job.req].store(used as u32, Ordering::Relaxed);
        for k in 0..used {
            let lane = &self.lanes[((job.chunk_base + k) % n) as usize];
            let mut q = lock(&lane.q);
            if q.len == LANE_CAP {
                return Err(Error::Internal("helper queue overflow"));
            }
            let at = (q.head + q.len) % LANE_CAP;
            q.jobs[at] = Some(job);
            q.len += 1;
            drop(q);
            lane.cv.notify_one();
        }
        Ok(nchunks)
    }

    /// Wakes every helper (at close).
    pub(crate) fn wake_all(&self) {
        for l in &self.lanes {
            // Taking the lock orders the wakeup after a helper's closing check.
            drop(lock(&l.q));
            l.cv.notify_all();
        }
    }

    /// Waits until `n` helpers have exited or `timeout` passed; true if all exited.
    pub(crate) fn wait_exited(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.exited);
        while *g < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .exited_cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Counts a helper's exit even if it unwinds.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        *lock(&self.0.exited) += 1;
        self.0.exited_cv.notify_all();
    }
}

/// Starts the helper thread of lane `me` on `sock`.
pub(crate) fn spawn(shared: Arc<Shared>, me: usize, sock: TcpStream) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("tcpxsock-{me}"))
        .spawn(move || {
            let _guard = ExitGuard(shared.clone());
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&shared, me, &sock)));
            let err = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(Error::Internal("helper thread panicked")),
            };
            if let Some(e) = err {
                if !shared.closing.load(Ordering::Acquire) {
                    shared.set_error(e);
                }
            }
        })
        .map_err(|e| Error::System("spawn helper thread", e.raw_os_error().unwrap_or(0)))
}

fn next_job(shared: &Shared, me: usize) -> Option<Job> {
    let lane = &shared.lanes[me];
    let mut q = lock(&lane.q);
    loop {
        if shared.closing.load(Ordering::Acquire) {
            return None;
        }
        if q.len > 0 {
            let h = q.head;
            let j = q.jobs[h].take();
            q.head = (q.head + 1) % LANE_CAP;
            q.len -= 1;
            return j;
        }
        // The timeout only bounds how long a missed wakeup could delay shutdown.
        q = lane
            .cv
            .wait_timeout(q, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Bytes a helper receives into its scratch before streaming them to bounce pages
/// ([`Shared::stream_bounce`]).
const SCRATCH: usize = 128 * 1024;

fn run(shared: &Shared, me: usize, sock: &TcpStream) -> Result<()> {
    let fd = sock.as_raw_fd();
    let n = shared.lanes.len() as u64;
    // Made at the helper's first bounce-page receive (host-memory comms never need it).
    let mut scratch = Vec::new();
    while let Some(job) = next_job(shared, me) {
        let sending = matches!(job.kind, JobKind::Send | JobKind::SendStaged(_));
        let key = trace::request_key(shared as *const Shared, job.req);
        trace::mark_key(
            if sending {
                "sock.helper.send.job"
            } else {
                "sock.helper.recv.job"
            },
            key,
        );
        let (first, nchunks) = lane_chunks(shared, me, &job);
        // Bytes of this lane's share of a kernel-staged request sent so far.
        let mut sent = 0u64;
        if matches!(job.kind, JobKind::SendStaged(Staging::Event)) && first < nchunks {
            shared
                .cuda_stage
                .get()
                .ok_or(Error::Internal("staged send without staging"))?
                .wait(job.req)?;
        }
        for j in (first..nchunks).step_by(n as usize) {
            let off = j as usize * shared.chunk_bytes;
            let len = shared.chunk_bytes.min(job.size - off);
            match job.kind {
                // SAFETY: `base..base+size` is the caller's live send buffer, or the request's
                // staging range, whose copy is done.
                JobKind::Send | JobKind::SendStaged(Staging::Event) => unsafe {
                    sys::send_all(fd, job.base.add(off), len)?
                },
                JobKind::SendStaged(Staging::Lanes { staged, .. }) => {
                    // SAFETY: the slot has a progress word per lane.
                    let word = unsafe { staged.add(me) };
                    send_staged(shared, fd, &job, off, len, word, &mut sent)?
                }
                JobKind::RecvHost => {
                    let mut iov = [libc::iovec {
                        // SAFETY: `off < size`, within the caller's receive buffer.
                        iov_base: unsafe { job.base.add(off) }.cast(),
                        iov_len: len,
                    }];
                    // SAFETY: the iovec lies inside the caller's live receive buffer.
                    unsafe { sys::recv_all_iov(fd, &mut iov)? };
                }
                JobKind::RecvFrags(f) if f.device() => {
                    let mut landing = lock(&shared.landings[me]);
                    if landing.as_ref().is_none_or(|l| l.ordinal() != f.gpu) {
                        // Only a CUDA receive whose comm saw no CUDA registration gets here.
                        static TOLD: AtomicBool = AtomicBool::new(false);
                        crate::log_warn_once(
                            &TOLD,
                            "tcpxsock: a CUDA receive on a comm without a CUDA registration made \
                             its helper's landing at the receive (register CUDA memory on the \
                             comm first: a driver call there can wait behind a running kernel)",
                        );
                        *landing = Some(Landing::new(f.gpu, SCRATCH)?);
                    }
                    let l = landing.as_mut().ok_or(Error::Internal("no landing"))?;
                    let (buf, writer) = l.parts();
                    // SAFETY: the job's buffer and entries stay valid until it completes.
                    unsafe { recv_through(fd, &job, &f, off, len, shared, buf, Some(writer))? }
                }
                JobKind::RecvFrags(f) if shared.stream_bounce => {
                    if scratch.is_empty() {
                        scratch = vec![0u8; SCRATCH];
                    }
                    // SAFETY: as above.
                    unsafe { recv_through(fd, &job, &f, off, len, shared, &mut scratch, None)? }
                }
                // SAFETY: as above.
                JobKind::RecvFrags(f) => unsafe { recv_frags(fd, job.base, &f, off, len)? },
            }
        }
        shared.remaining[job.req].fetch_sub(1, Ordering::Release);
        trace::mark_key(
            if sending {
                "sock.helper.send.done"
            } else {
                "sock.helper.recv.done"
            },
            key,
        );
    }
    Ok(())
}

/// Sends request bytes `off..off+len` of a kernel-staged `job` from the ring as the lane's
/// staging kernel puts them there: `staged` counts the bytes of this lane's share in the ring,
/// `sent` the ones this helper has sent. Each `send` takes everything already in, so a helper
/// behind the kernel sends as much at once as from host memory.
fn send_staged(
    shared: &Shared,
    fd: i32,
    job: &Job,
    off: usize,
    len: usize,
    staged: *const u64,
    sent: &mut u64,
) -> Result<()> {
    let mut pos = off;
    let end = off + len;
    let mut spins = 0u32;
    while pos < end {
        // SAFETY: the slot's progress word of this lane, pinned memory the kernel writes.
        let have = unsafe { staged.read_volatile() };
        let ready = (have.saturating_sub(*sent) as usize).min(end - pos);
        if ready == 0 {
            if shared.closing.load(Ordering::Acquire) {
                return Ok(());
            }
            // A piece is a few microseconds of PCIe away: spin briefly, then let others run.
            spins += 1;
            if spins > 64 {
                std::thread::yield_now();
            } else {
                core::hint::spin_loop();
            }
            continue;
        }
        spins = 0;
        // The bytes (written before the word) before this thread reads them.
        core::sync::atomic::fence(Ordering::Acquire);
        // SAFETY: `base..base+size` is the request's staging range and `pos..pos+ready` is in.
        unsafe { sys::send_all(fd, job.base.add(pos), ready)? };
        pos += ready;
        *sent += ready as u64;
    }
    Ok(())
}

/// The chunks of `job` that lane `me` moves: `first`, `first + lanes`, … below `nchunks`.
fn lane_chunks(shared: &Shared, me: usize, job: &Job) -> (u64, u64) {
    let n = shared.lanes.len() as u64;
    let nchunks = job.size.div_ceil(shared.chunk_bytes) as u64;
    ((me as u64 + n - job.chunk_base % n) % n, nchunks)
}

/// Receives request bytes `off..off+len` of a bounce receive through `scratch` (it stays in
/// this core's cache), then [`deliver`]s them: to the bounce pages with non-temporal stores
/// when `stream_bounce` (so they are not dirty in any CPU cache when the GPU reads them), to
/// device memory through `writer`.
///
/// # Safety
/// `job.base` and `f` describe a live bounce receive whose bytes `off..off+len` are this
/// helper's to write.
#[allow(clippy::too_many_arguments)]
unsafe fn recv_through(
    fd: i32,
    job: &Job,
    f: &FragJob,
    off: usize,
    len: usize,
    shared: &Shared,
    scratch: &mut [u8],
    writer: Option<&DeviceWriter>,
) -> Result<()> {
    let mut pos = off;
    let end = off + len;
    while pos < end {
        let piece = scratch.len().min(end - pos);
        let mut iov = [libc::iovec {
            iov_base: scratch.as_mut_ptr().cast(),
            iov_len: piece,
        }];
        // SAFETY: the one iovec covers `piece` bytes of `scratch`, this helper's own buffer,
        // borrowed mutably for the call.
        unsafe { sys::recv_all_iov(fd, &mut iov)? };
        // SAFETY: `job.base` and `f` describe a live bounce receive whose bytes
        // `pos..pos+piece` (inside `off..off+len`) are this helper's to write (this function's
        // contract), which is `deliver`'s contract for them.
        unsafe {
            deliver(
                f,
                job.base,
                pos,
                &scratch[..piece],
                shared.stream_bounce,
                writer,
            )?
        };
        pos += piece;
    }
    Ok(())
}

/// Orders earlier non-temporal stores ([`stream_copy`]) before later stores.
pub(crate) fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` reads and writes no memory and needs only SSE, which x86_64 always
    // has.
    unsafe {
        core::arch::x86_64::_mm_sfence()
    };
}

/// Copies `n` bytes with non-temporal 16-byte stores where `dst` is 16-byte aligned.
///
/// # Safety
/// Both ranges are valid for `n` bytes and do not overlap.
pub(crate) unsafe fn stream_copy(src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        if dst as usize % 16 == 0 {
            let body = n / 16;
            for i in 0..body {
                // SAFETY: within both ranges; `dst` 16-byte aligned.
                unsafe {
                    let v = _mm_loadu_si128(src.add(i * 16).cast::<__m128i>());
                    _mm_stream_si128(dst.add(i * 16).cast::<__m128i>(), v);
                }
            }
            // SAFETY: the tail, within both ranges.
            unsafe {
                core::ptr::copy_nonoverlapping(src.add(body * 16), dst.add(body * 16), n % 16)
            };
            return;
        }
    }
    // SAFETY: per the contract.
    unsafe { core::ptr::copy_nonoverlapping(src, dst, n) };
}

/// Receives request bytes `off..off+len` of a bounce receive straight into their places (host
/// bounce pages, and a host posted buffer for linear bytes); places that follow each other in
/// memory share one iovec (the pool hands out runs of pages).
///
/// # Safety
/// `base` and `f` describe a live bounce receive in host memory whose bytes `off..off+len` are
/// this helper's to write.
unsafe fn recv_frags(fd: i32, base: *mut u8, f: &FragJob, off: usize, len: usize) -> Result<()> {
    let mut iov = [libc::iovec {
        iov_base: core::ptr::null_mut(),
        iov_len: 0,
    }; IOV_BATCH];
    let mut it = pieces(f.frags(), off, off + len);
    let mut next = it.try_next()?;
    loop {
        let mut k = 0;
        while let Some(p) = next {
            let dst = match p.dest {
                Dest::Bounce(o) => f.bounce.wrapping_add(o),
                Dest::Linear => base.wrapping_add(p.at),
            };
            if k > 0
                && iov[k - 1]
                    .iov_base
                    .cast::<u8>()
                    .wrapping_add(iov[k - 1].iov_len)
                    == dst
            {
                iov[k - 1].iov_len += p.len;
            } else if k == IOV_BATCH {
                break;
            } else {
                iov[k] = libc::iovec {
                    iov_base: dst.cast(),
                    iov_len: p.len,
                };
                k += 1;
            }
            next = it.try_next()?;
        }
        if k == 0 {
            return Ok(());
        }
        // SAFETY: each iovec is a run of this request's bounce pages or posted buffer, owned by
        // the request until it is consumed.
        unsafe { sys::recv_all_iov(fd, &mut iov[..k])? };
    }
}
