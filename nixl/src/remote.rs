//! Transfers and notifications between different agents over the tcpx engine (protocol:
//! `nixl/README.md`, "Transfers between agents"; design: `docs/DESIGN.md`).
//!
//! Each agent opens one control stream + engine `Session` per peer it initiates transfers to
//! (a [`Conn`] with `initiator == true`) and serves the ones peers open to it. One backend
//! thread per agent accepts control streams, reads every stream's frames and drives every
//! session; the initiator side also progresses from `checkXfer`.
//!
//! Sender announces: on a conn, the initiator's sends (WRITE data) are posted in the order of
//! its `WriteAnnounce`s, the target's sends (READ data) in the order of its `ReadAnnounce`s,
//! and each side posts its receives strictly in the order it reads those announces. A WRITE
//! the target refuses after its data is on the wire is received into a scratch buffer and
//! dropped, so the pairing holds and the conn keeps serving; only a failure that breaks the
//! pairing itself (a receive that cannot be posted) closes the conn, and the next use
//! reconnects.
//!
//! A transfer of more descriptors than one engine transfer or frame carries travels in parts
//! of [`PART_SEGMENTS`] (after neighbours are joined), each its own announce or request and
//! engine transfer; NIXL sees one request, complete once every part is.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpx::engine::{
    Config as EngineConfig, Copier, Direction, MemId, Memory, Progress, Segment as ESeg, Session,
    XferId,
};
use tcpx::log::Level;
use tcpx_core::wire::{
    self, Ack, ErrorMsg, Hello, Keepalive, Limits, MemKind, Message, Notif, ReadAnnounce, ReadData,
    ReadRequest, Segment as WireSegment, WriteAnnounce, HEADER_LEN, MAX_CONTROL_FRAME,
};

use crate::config::{Config, NOTIF_OVERHEAD};
use crate::error::{Arg, Error, Status};
use crate::registry::{MdId, MemTable, Region};
use crate::xfer::{self, Far, Op, Segment};

/// What a peer's `getConnInfo` blob told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Control protocol version the peer speaks.
    pub protocol: u16,
    /// The peer's control listener.
    pub addr: SocketAddr,
    /// Data channels the peer offers.
    pub channels: u16,
}

/// The backend's notification queue, shared with the backend thread.
pub type Notifs = Arc<Mutex<NotifQueue>>;

/// Notifications waiting for `getNotifs`: (sender, message) in arrival order, bounded in bytes
/// so that peers cannot grow it without limit while the application does not take them: a
/// peer's notification that does not fit waits on its conn (which takes nothing more from that
/// peer meanwhile) until the application makes room. The sender is a shared name, so queueing
/// a notification allocates only its message.
#[derive(Debug)]
pub struct NotifQueue {
    q: VecDeque<(Arc<str>, Vec<u8>)>,
    held: u64,
    limit: u64,
}

impl NotifQueue {
    /// What one entry counts against the bound besides its message.
    pub const ENTRY_OVERHEAD: u64 = NOTIF_OVERHEAD;

    /// An empty queue holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        NotifQueue {
            q: VecDeque::new(),
            held: 0,
            limit,
        }
    }

    fn cost(len: usize) -> u64 {
        len as u64 + Self::ENTRY_OVERHEAD
    }

    /// Whether a `len`-byte notification fits now.
    fn has_room(&self, len: usize) -> Result<(), Error> {
        if self.held + Self::cost(len) > self.limit {
            return Err(Error::NotifQueueFull {
                held: self.held,
                limit: self.limit,
            });
        }
        Ok(())
    }

    /// Queues a notification, or leaves the queue unchanged when it has no room.
    pub fn push(&mut self, from: Arc<str>, msg: Vec<u8>) -> Result<(), Error> {
        self.reserve(msg.len())?;
        self.push_reserved(from, msg);
        Ok(())
    }

    /// Queues one of the agent's own notifications whatever the bound: the application that
    /// sends it is the one that takes it, so it cannot wait for itself; it only makes peers'
    /// notifications wait longer.
    pub fn push_own(&mut self, from: Arc<str>, msg: Vec<u8>) {
        self.held += Self::cost(msg.len());
        self.push_reserved(from, msg);
    }

    /// Takes room for a `len`-byte notification that will be pushed later (after work done
    /// without the lock), so nothing can fill the queue in between.
    pub fn reserve(&mut self, len: usize) -> Result<(), Error> {
        self.has_room(len)?;
        self.held += Self::cost(len);
        Ok(())
    }

    /// Gives back room taken by [`NotifQueue::reserve`] for a notification never pushed.
    pub fn unreserve(&mut self, len: usize) {
        self.held -= Self::cost(len);
    }

    /// Queues a notification whose room [`NotifQueue::reserve`] took.
    pub fn push_reserved(&mut self, from: Arc<str>, msg: Vec<u8>) {
        self.q.push_back((from, msg));
    }

    /// The oldest notification.
    pub fn front(&self) -> Option<&(Arc<str>, Vec<u8>)> {
        self.q.front()
    }

    /// Drops the oldest notification (taken by the application).
    pub fn pop_front(&mut self) {
        if let Some((_, m)) = self.q.pop_front() {
            self.held -= Self::cost(m.len());
        }
    }

    /// Bytes counted against the bound now.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Notifications queued.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}

/// The backend's metadata table, shared with the backend thread (target-side validation).
pub type Mem = Arc<RwLock<MemTable>>;

/// Initial capacity of a conn's frame buffers (they grow to the largest frame).
const FRAME_BUF: usize = 4096;
/// Initial capacity of a conn's transfer tables (in flight at once; they grow past it).
const TABLE_CAP: usize = 64;
/// Most target jobs on one conn: engine transfers are bounded by the engine, so this bounds
/// inline WRITEs waiting for earlier WRITEs to land (past it the conn takes no more frames
/// from the peer until some have finished).
const MAX_JOBS: usize = 4096;
/// Segments per part of a transfer: what one engine transfer and one announce or request
/// carry.
pub const PART_SEGMENTS: usize = if wire::MAX_SEGMENTS < tcpx_core::plan::MAX_SEGMENTS {
    wire::MAX_SEGMENTS
} else {
    tcpx_core::plan::MAX_SEGMENTS
};
/// Parts an initiator has outstanding on one conn at most (sent and not finished, over all
/// its transfers to that peer): the target posts one engine transfer per part, so this keeps
/// both sessions within [`ENGINE_TRANSFERS`]. Further parts wait, in post order, until earlier
/// ones finish. 128 parts keep a link busy many times over (each is up to 1,024 segments);
/// more would cost every session memory (the engine sizes each transfer slot for its
/// largest segment list up front: about 8 KiB of resident memory per slot).
pub const MAX_OUTSTANDING: usize = 128;
/// Engine transfers per session (`tcpx::engine::Config::max_transfers`): room for a peer's
/// outstanding parts, and on a target's session for the drains of WRITEs it refused.
pub const ENGINE_TRANSFERS: usize = 2 * MAX_OUTSTANDING;
/// Bytes read from one control stream per pass of the backend thread, so one busy peer
/// cannot hold the thread.
const READ_PER_PASS: usize = 256 * 1024;

/// An initiator conn that `checkXfer` serviced less than this long ago is left to the
/// application's polling by the backend thread: both servicing it only contend for its locks
/// and double the CPU per transfer. Short, so an application that checks rarely (or whose
/// polling thread is preempted) still has its transfers driven by the backend thread.
const CHECKED_RECENTLY: Duration = Duration::from_micros(250);

/// The backend thread's nap while transfers are in flight (engine progress wakes nothing):
/// a control frame arriving ends it sooner.
const NAP: Duration = Duration::from_micros(50);

/// Timer slack of the backend thread (ns): its naps end when asked, not up to the default
/// 50 µs later.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert/remove/assignment: state stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often a conn holding its peer back says it is alive: a quarter of our own timeout, and
/// at least every 100 ms, which is well inside any timeout a peer is likely to run with (it
/// uses its own `timeout_ms`, which we do not know).
fn keepalive_every(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), KEEPALIVE_MAX)
}

/// Longest gap between keepalives of a conn holding its peer back.
const KEEPALIVE_MAX: Duration = Duration::from_millis(100);

/// The engine side of a conn: the session and which engine region each registration is.
struct Engine {
    /// `None` once the conn died and the backend thread closed it: a dead conn's comms are
    /// closed at once, so no receive still posted on them (a released READ's, say) can write
    /// into memory the application has taken back or reuses.
    session: Option<Session>,
    /// Our registrations on this session, registered at their first use on it.
    mems: HashMap<MdId, MemId>,
    /// Target side (backend thread only): the engine segments of the announce being served,
    /// filled by `resolve` and posted from here. Reused, so serving an announce allocates
    /// nothing once it has grown to the largest one.
    resolved: Vec<ESeg>,
    /// Target side: host memory that refused WRITEs' data is received into and dropped (one
    /// chunk long, registered on first use). Declared after the session, so it is freed after
    /// the session let go of it.
    sink: Option<(MemId, Box<[u8]>)>,
}

impl Engine {
    /// The session, unless the conn died and it was closed.
    fn live(&mut self) -> Result<&mut Session, Error> {
        self.session
            .as_mut()
            .ok_or_else(|| Error::Disconnected("the connection was closed".into()))
    }

    /// Drives the session (see `Session::progress`).
    fn progress(&mut self) -> Result<bool, String> {
        match self.session.as_mut() {
            Some(s) => s.progress().map_err(|e| e.to_string()),
            None => Err("the connection was closed".into()),
        }
    }

    /// Where transfer `id` stands (see `Session::status`).
    fn status(&self, id: XferId) -> Result<Progress, String> {
        match self.session.as_ref() {
            Some(s) => s.status(id).map_err(|e| e.to_string()),
            None => Err("the connection was closed".into()),
        }
    }

    /// Forgets transfer `id` (abandons it if in flight); nothing to do on a closed session.
    fn release(&mut self, id: XferId) {
        if let Some(s) = self.session.as_mut() {
            let _ = s.release(id);
        }
    }
}

/// A target-side transfer: an engine transfer in flight, or a WRITE whose data is in place
/// waiting for the WRITEs announced before it.
struct Job {
    /// The engine transfer; `None` once it is done (or for an inline WRITE, which has none).
    id: Option<XferId>,
    /// Arrival order on this conn (assigned here, not by the peer): a WRITE is acknowledged
    /// only after every WRITE that arrived before it landed.
    seq: u64,
    wire: u64,
    /// `Some` for a WRITE (Ack + notif due when it lands), `None` for READ data we send and
    /// for data of a refused WRITE we drop.
    write: Option<Option<Vec<u8>>>,
    /// The notif's room in the queue is reserved (every notif reserves it on arrival, before
    /// a WRITE's data is written).
    reserved: bool,
    /// An Ack is due (a WRITE); a bare `Notif` only waits its turn behind the WRITEs that
    /// arrived before it, so a peer's notifications reach the application in the order it
    /// sent them.
    ack: bool,
}

impl Job {
    /// (arrival order, still moving, is a WRITE).
    fn state(&self) -> (u64, bool, bool) {
        (self.seq, self.id.is_some(), self.write.is_some())
    }
}

/// The arrival order of the first WRITE whose data is still landing, among jobs given as
/// [`Job::state`]: it holds back the Acks of the WRITEs after it. READ data we still send
/// holds back nothing.
fn first_landing(jobs: impl Iterator<Item = (u64, bool, bool)>) -> Option<u64> {
    jobs.filter(|&(_, moving, write)| moving && write)
        .map(|(seq, ..)| seq)
        .min()
}

/// Whether a job ([`Job::state`]) may finish now: its transfer is done and no WRITE that
/// arrived before it is still landing.
fn may_finish((seq, moving, _): (u64, bool, bool), first_landing: Option<u64>) -> bool {
    !moving && first_landing.is_none_or(|f| seq < f)
}

/// The write half of a control stream. Frames are appended to `out` and written as the
/// socket takes them, never waiting: a peer that reads slowly (or holds us back on purpose)
/// only makes the unsent tail longer, and every later use of the stream writes more of it.
struct Writer {
    /// A clone of the conn's stream (non-blocking).
    stream: TcpStream,
    /// Frames not yet written, from `sent` on. Emptied (capacity kept) once all went out, so
    /// sending allocates nothing in steady state.
    out: Vec<u8>,
    sent: usize,
    /// When the last frame was appended (a conn holding its peer back sends a keepalive when
    /// this gets old).
    last_frame: Instant,
    /// Since when bytes have waited without the socket taking any.
    stuck: Option<Instant>,
}

impl Writer {
    fn new(stream: TcpStream) -> Self {
        Writer {
            stream,
            out: Vec::with_capacity(FRAME_BUF),
            sent: 0,
            last_frame: Instant::now(),
            stuck: None,
        }
    }

    /// Appends one frame.
    fn push(&mut self, msg: &Message<'_>) -> Result<(), Error> {
        let start = self.out.len();
        self.out.resize(start + msg.buffer_len(), 0);
        match msg.emit(&mut self.out[start..]) {
            Ok(_) => {
                self.last_frame = Instant::now();
                Ok(())
            }
            Err(err) => {
                self.out.truncate(start);
                Err(Error::Wire {
                    what: "control message",
                    err,
                })
            }
        }
    }

    /// Writes what the socket takes now; `Err` when the stream failed.
    fn flush(&mut self) -> std::io::Result<()> {
        let before = self.sent;
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.stuck = None;
        } else if self.sent > before {
            self.stuck = None;
        } else if self.stuck.is_none() {
            self.stuck = Some(Instant::now());
        }
        Ok(())
    }

    /// Whether frames wait to be written.
    fn pending(&self) -> bool {
        self.sent < self.out.len()
    }
}

/// Initiator: scratch of one scan over a conn's parts (reused, so a scan allocates nothing):
/// the parts listed, and the wire ids of those found finished (or stale).
#[derive(Default)]
struct Scan {
    listed: Vec<(u64, Arc<Mutex<Flight>>)>,
    gone: Vec<u64>,
}

/// The read half of a control stream: bytes read and not yet handled.
struct Reader {
    buf: Vec<u8>,
    /// Target: a frame at the front of `buf` waits for room (in the notification queue, or
    /// among the jobs) before it is handled; nothing more is read from the peer meanwhile.
    held: bool,
}

/// Initiator: the transfers it has sent on a conn and not yet seen finish, and those waiting
/// for room to send more.
struct Outstanding {
    /// Every part sent and not finished, by wire id: its flight, and whether it holds a place
    /// among the outstanding parts.
    parts: HashMap<u64, (Arc<Mutex<Flight>>, bool)>,
    /// Flights with parts still to send, in post order.
    waiting: VecDeque<Arc<Mutex<Flight>>>,
}

/// One control stream and its data session with one peer.
struct Conn {
    /// The peer's agent name, shared with the notifications it sends us.
    peer: Arc<str>,
    initiator: bool,
    /// Non-blocking; read under `rx`'s lock, by the backend thread and (for an initiator
    /// conn) by `check`.
    stream: TcpStream,
    /// Writer. Held across "post sends + write their announce" so the two orders cannot
    /// diverge.
    tx: Mutex<Writer>,
    engine: Mutex<Engine>,
    rx: Mutex<Reader>,
    /// Largest frame read from the peer: a target takes notifications up to its own
    /// `max_notif_bytes`; an initiator only answers.
    max_frame: usize,
    /// Initiator: the longest notification the peer takes (its `Limits`).
    peer_max_notif: usize,
    dead: Mutex<Option<String>>,
    /// When the peer last showed it is alive (a frame read, bytes moved or written): an
    /// initiator waiting on it fails after `timeout` without.
    alive: Mutex<Instant>,
    /// Initiator: parts sent, and flights waiting to send (a leaf lock: nothing is taken while
    /// it is held).
    out: Mutex<Outstanding>,
    /// Initiator: parts counted in `out.parts` that hold a place among the engine transfers
    /// ([`MAX_OUTSTANDING`]).
    outstanding: AtomicUsize,
    /// Initiator: scratch of one scan over the parts (reused, so a scan allocates nothing).
    scan: Mutex<Scan>,
    /// Target: engine transfers in flight and WRITEs waiting for earlier ones.
    jobs: Mutex<Vec<Job>>,
    /// Target: the next job's `seq`.
    next_seq: AtomicU64,
    /// Target (backend thread only): jobs `finish_jobs` took out of `jobs`, kept to reuse
    /// the list's storage.
    finished: Mutex<Vec<Job>>,
    /// Since when the backend thread has been waiting on the peer (a partial frame buffered
    /// or a job in flight) with nothing moving; past `timeout` the conn is closed, so a peer
    /// that announces data it never sends, or stops mid-frame, cannot hold it forever.
    stalled: Mutex<Option<Instant>>,
    timeout: Duration,
    /// Target: READs refused so far (they leave the conn open, so a peer can send many).
    refused_reads: AtomicU64,
    /// WRITEs from this peer refused so far (rate-limits their log lines).
    refused_writes: AtomicU64,
    /// Log rate limiting of errors the peer sent about no transfer in flight.
    refused_notifs: AtomicU64,
    /// Initiator: when `checkXfer` last serviced the conn, in ns since [`Shared::epoch`]
    /// (0: never).
    checked: AtomicU64,
    /// Target: the data of a READ answered inline, gathered before it is framed (reused; it
    /// grows to the largest inline READ once).
    inline_buf: Mutex<Vec<u8>>,
}

/// How an inline transfer reaches one of our ranges.
enum InlineEnd {
    /// Host memory: the CPU copies.
    Host,
    /// Device memory: its device's copier copies.
    Device(Arc<Copier>),
    /// Device memory of a device that could not be opened.
    NoCopier(u32),
}

impl InlineEnd {
    /// The copier that reaches range `i` (`None`: host memory); a device without one is an
    /// error (checked before any copy, so only a changed table could get here).
    fn copier(self, i: usize) -> Result<Option<Arc<Copier>>, (Status, String)> {
        match self {
            InlineEnd::Host => Ok(None),
            InlineEnd::Device(c) => Ok(Some(c)),
            InlineEnd::NoCopier(d) => {
                Err((Status::Backend, format!("segment {i}: device {d} is gone")))
            }
        }
    }
}

/// Where wire segment `i` of a peer's request lies in our registrations: (md, offset inside
/// it, CUDA device of the memory or `None` for host memory), or the refusal to answer with.
fn locate(
    table: &MemTable,
    i: usize,
    s: &WireSegment,
) -> Result<(usize, u64, Option<u32>), (Status, String)> {
    let bad = |why: &str| (Status::InvalidParam, format!("segment {i}: {why}"));
    let md = usize::try_from(s.region()).map_err(|_| bad("unknown region"))?;
    let r = table.local(md).map_err(|_| bad("unknown region"))?;
    if r.key != s.key() {
        return Err(bad("wrong key"));
    }
    if !r.span.contains(s.addr(), s.len()) {
        return Err(bad("range outside the registration"));
    }
    Ok((md, s.addr() - r.span.base, r.cuda_device()))
}

/// Copies `dst.len()` bytes of our memory at `addr` into `dst`: host memory with the CPU,
/// device memory with its device's `copier`.
///
/// # Safety
/// `addr..addr + dst.len()` is live memory of ours (host memory when `copier` is `None`, else
/// of the copier's device) that nothing writes meanwhile.
unsafe fn read_ours(copier: Option<&Copier>, addr: u64, dst: &mut [u8]) -> tcpx::Result<()> {
    match copier {
        // SAFETY: per the contract; `dst` is ours and does not overlap it.
        None => unsafe {
            std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len());
            Ok(())
        },
        // SAFETY: per the contract.
        Some(c) => unsafe { c.to_host(addr, dst) },
    }
}

/// Copies `src` into our memory at `addr`, as [`read_ours`] the other way.
///
/// # Safety
/// `addr..addr + src.len()` is live memory of ours (as in [`read_ours`]) that nothing else
/// uses meanwhile.
unsafe fn write_ours(copier: Option<&Copier>, addr: u64, src: &[u8]) -> tcpx::Result<()> {
    match copier {
        // SAFETY: per the contract; `src` is ours and does not overlap it.
        None => unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len());
            Ok(())
        },
        // SAFETY: per the contract.
        Some(c) => unsafe { c.to_device(addr, src) },
    }
}

/// Copies our segments' bytes, in order, into `out`: an inline WRITE's data.
fn gather_local(
    segs: &[Segment],
    copiers: &[Option<Arc<Copier>>],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let total = segs.iter().map(|s| s.len as usize).sum();
    out.clear();
    out.resize(total, 0);
    let mut at = 0;
    for (s, copier) in segs.iter().zip(copiers) {
        let len = s.len as usize;
        // SAFETY: `plan` put the range inside one of our registrations (device memory of the
        // copier's device when there is one), which NIXL's contract keeps allocated while the
        // transfer is posted.
        unsafe { read_ours(copier.as_deref(), s.local, &mut out[at..at + len]) }
            .map_err(Error::Engine)?;
        at += len;
    }
    Ok(())
}

/// `why` cut to the longest prefix an `Error` frame carries, at a character boundary.
fn error_text(why: &str) -> &str {
    let mut n = why.len().min(wire::MAX_ERROR_TEXT);
    while !why.is_char_boundary(n) {
        n -= 1;
    }
    &why[..n]
}

/// Whether the `n`-th refusal (from 1) from one peer gets a log line: the first few, then
/// only powers of two, so a peer that keeps sending refused requests cannot flood the log
/// (10,000 refusals: 15 lines).
fn log_refusal(n: u64) -> bool {
    n <= 4 || n.is_power_of_two()
}

impl Conn {
    fn dead(&self) -> Option<String> {
        lock(&self.dead).clone()
    }

    /// Closes the connection for a failure (a warning line says why).
    fn kill(&self, why: &str) {
        self.close_at(Level::Warn, why);
    }

    /// Closes the connection in the normal course of things: `disconnect`, the agent going
    /// away, the peer closing its end (an info line).
    fn close(&self, why: &str) {
        self.close_at(Level::Info, why);
    }

    fn close_at(&self, level: Level, why: &str) {
        let mut d = lock(&self.dead);
        if d.is_none() {
            tcpx::log_at!(
                level,
                crate::LOG_TARGET,
                "peer {:?}: closing connection: {why}",
                self.peer
            );
            *d = Some(why.to_owned());
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// The peer showed it is alive now.
    fn heard(&self) {
        *lock(&self.alive) = Instant::now();
    }

    /// How long the peer has shown no sign of life.
    fn silent_for(&self) -> Duration {
        lock(&self.alive).elapsed()
    }

    /// Appends one frame to the held writer and writes what the socket takes; never waits.
    fn send_on(&self, tx: &mut Writer, msg: &Message<'_>) -> Result<(), Error> {
        if let Some(why) = self.dead() {
            return Err(Error::Disconnected(why));
        }
        tx.push(msg)?;
        self.flush_on(tx)
    }

    /// Writes what the socket takes of the held writer's frames.
    fn flush_on(&self, tx: &mut Writer) -> Result<(), Error> {
        let before = tx.sent;
        if let Err(e) = tx.flush() {
            let why = format!("control write: {e}");
            self.kill(&why);
            return Err(Error::Disconnected(why));
        }
        if tx.sent != before || !tx.pending() {
            self.heard();
        }
        Ok(())
    }

    fn send(&self, msg: &Message<'_>) -> Result<(), Error> {
        let mut tx = lock(&self.tx);
        self.send_on(&mut tx, msg)
    }

    /// Sends an `Error` about transfer `xfer` (0: none) with `why` as the wire carries it.
    fn send_error(&self, status: Status, xfer: u64, why: &str) -> Result<(), Error> {
        self.send(&Message::Error(ErrorMsg {
            code: (status as i32).unsigned_abs(),
            xfer,
            text: error_text(why),
        }))
    }

    /// Logs `what` for the `n`-th time this peer caused it, counted in `counter`: rate-limited
    /// by [`log_refusal`], since a peer can cause it any number of times.
    fn log_repeated(&self, counter: &AtomicU64, what: std::fmt::Arguments<'_>) {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if log_refusal(n) {
            crate::log!(
                Warn,
                "peer {:?}: {what} ({n} from this peer; from the 5th on only powers of two are \
                 logged)",
                self.peer
            );
        }
    }

    /// Target side: posts the engine segments `Shared::resolve` left in the session.
    fn post_resolved(&self, dir: Direction) -> Result<XferId, Error> {
        let mut e = lock(&self.engine);
        let Engine {
            session, resolved, ..
        } = &mut *e;
        let session = session
            .as_mut()
            .ok_or_else(|| Error::Disconnected("the connection was closed".into()))?;
        session.post(dir, resolved).map_err(Error::Engine)
    }

    /// Target side: a job joins the conn's list; `ack` when it is a WRITE.
    fn add_job(&self, id: Option<XferId>, wire: u64, write: Option<Option<Vec<u8>>>, ack: bool) {
        let reserved = matches!(write, Some(Some(_)));
        lock(&self.jobs).push(Job {
            id,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            wire,
            write,
            reserved,
            ack,
        });
    }
}

/// Reads one frame from a blocking stream (handshake only; read timeout set by the caller).
fn read_frame(s: &mut TcpStream) -> Result<Vec<u8>, Error> {
    let io = |err| Error::Io {
        what: "control handshake read",
        err,
    };
    let mut buf = vec![0u8; HEADER_LEN];
    s.read_exact(&mut buf).map_err(io)?;
    let wire = |err| Error::Wire {
        what: "handshake frame",
        err,
    };
    let len = wire::peek_frame_within(&buf, MAX_CONTROL_FRAME)
        .map_err(|e| match e {
            wire::Error::BadVersion(v) => Error::Mismatch(format!(
                "the peer speaks wire version {v}, this agent {}: every agent must run the \
                 same tcpx-nixl wire version",
                wire::VERSION
            )),
            e => wire(e),
        })?
        .unwrap_or(HEADER_LEN);
    buf.resize(len, 0);
    s.read_exact(&mut buf[HEADER_LEN..]).map_err(io)?;
    Ok(buf)
}

fn frame(msg: &Message<'_>) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf).map_err(|err| Error::Wire {
        what: "control message",
        err,
    })?;
    Ok(buf)
}

/// Turns an I/O failure that means "the peer is not there any more" (timeout, EOF, reset)
/// into [`Error::Disconnected`]; anything else is left as it is.
fn peer_gone(e: Error) -> Error {
    use std::io::ErrorKind::*;
    match e {
        Error::Io { what, err }
            if matches!(
                err.kind(),
                WouldBlock
                    | TimedOut
                    | UnexpectedEof
                    | ConnectionReset
                    | ConnectionAborted
                    | BrokenPipe
            ) =>
        {
            Error::Disconnected(format!("{what}: {err}"))
        }
        other => other,
    }
}

/// Where one part of a posted transfer stands.
#[derive(Debug, Clone, Copy, Default)]
struct Part {
    /// Our engine transfer for it (WRITE: the sends, posted with the announce; READ: the
    /// receives, posted when the target's `ReadAnnounce` arrives).
    engine: Option<XferId>,
    /// Our side is done with the data: the engine transfer finished (or was abandoned), the
    /// inline data was copied, or there is none to move (a refused READ).
    moved: bool,
    /// The target answered (Ack, ReadAnnounce, ReadData or Error).
    answered: bool,
}

impl Part {
    fn settled(&self) -> bool {
        self.moved && self.answered
    }
}

/// An initiator-side transfer once posted. One per prepared request, created by its first
/// post and reset in place by every repost, so a repost allocates nothing.
struct Flight {
    op: Op,
    /// Wire id of part 0 of the current post (part `k` is `wire + k`). Control messages name
    /// parts by it; one naming an earlier post of this request is stale.
    wire: u64,
    conn: Arc<Conn>,
    /// Our engine segments of every part, mapped for `conn`; capacity for all of them, refilled
    /// in place by each post.
    segs: Vec<ESeg>,
    /// The target's ranges of every part, as announced (shared with the prepared request).
    far: Arc<[WireSegment]>,
    /// The segment range of each part (shared with the prepared request).
    ranges: Arc<[Range<usize>]>,
    /// Each part's state in the current post.
    parts: Vec<Part>,
    /// Parts whose announce or request went out in the current post.
    sent: usize,
    /// READ that offered to take its data inline (empty otherwise): where the data goes (our
    /// addresses and lengths, request order, and the copier of device memory; capacity kept
    /// across reposts).
    inline_dst: Vec<(u64, u64, Option<Arc<Copier>>)>,
    /// The post's notification (buffer reused by every post) and whether there is one.
    notif: Vec<u8>,
    notify: bool,
    /// The notification travels in the WRITE's only announce; otherwise it is sent as a
    /// `Notif` once every part finished (a READ, or a WRITE of several parts).
    notif_in_announce: bool,
    done: bool,
    released: bool,
    failed: Option<(Status, String)>,
    /// When the current post was made, and its bytes (the cost model learns from them).
    posted_at: Instant,
    bytes: u64,
}

impl Flight {
    /// Every part that went out finished, and no more will go out.
    fn settled(&self) -> bool {
        let all_sent = self.sent == self.parts.len() || self.failed.is_some() || self.released;
        all_sent && self.parts[..self.sent].iter().all(Part::settled)
    }

    /// The part a wire id names in the current post, if it does (allocates nothing).
    fn index_of(&self, xfer: u64) -> Option<usize> {
        xfer.checked_sub(self.wire)
            .map(|k| k as usize)
            .filter(|&k| k < self.sent)
    }

    /// The part a wire id names in the current post; `Err` for a stale or foreign id.
    fn part_of(&self, xfer: u64) -> Result<usize, Error> {
        match self.index_of(xfer) {
            Some(k) => Ok(k),
            None => Err(Error::Mismatch(format!(
                "message for transfer {xfer}, which is not a part of the current post ({}..{})",
                self.wire,
                self.wire + self.sent as u64
            ))),
        }
    }

    /// Records the first failure of the post.
    fn fail(&mut self, status: Status, why: String) {
        if self.failed.is_none() {
            self.failed = Some((status, why));
        }
    }
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("op", &self.op)
            .field("wire", &self.wire)
            .field("sent", &self.sent)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A prepared transfer to another agent. Everything a post needs is built here once, so
/// reposts (NIXL's steady state) allocate nothing.
#[derive(Debug)]
pub struct RemoteXfer {
    op: Op,
    /// The descriptors, neighbours joined.
    segments: Vec<Segment>,
    /// `segments` as the target names them (region id, key, address, length): fixed at
    /// prepare, each announce or request is encoded from it.
    wire: Arc<[WireSegment]>,
    /// The parts: ranges of `segments` of at most [`PART_SEGMENTS`].
    ranges: Arc<[Range<usize>]>,
    /// Our registrations the segments lie in (each registered on a conn's session at its first
    /// use there).
    mds: Vec<MdId>,
    bytes: u64,
    /// `Some` when small enough and all our side host memory or device memory with a copier:
    /// a READ offers to take the data inline (it goes to `segments`' local addresses, in
    /// request order), a WRITE carries it in the announce. Per segment, the copier of its
    /// device memory (`None`: host memory).
    inline: Option<Vec<Option<Arc<Copier>>>>,
    /// An inline WRITE's data, gathered at each post (reused).
    inline_data: Vec<u8>,
    /// The latest post's flight, reused by the next post.
    flight: Option<Arc<Mutex<Flight>>>,
    /// The latest post went out: before the first post, or after a post that failed,
    /// `checkXfer` says NOT_POSTED.
    posted: bool,
}

impl RemoteXfer {
    /// Bytes the transfer moves.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What transfers to other agents have cost so far: a latency (small transfers) and a
/// throughput (large ones), each a moving average of completed transfers, for
/// `estimateXferCost`. Starts from figures measured over tcpxsock on loopback on a 2-core box.
#[derive(Debug)]
pub struct CostModel {
    /// Nanoseconds of a transfer too small for its bytes to matter.
    latency_ns: AtomicU64,
    /// Bytes per second of large transfers, past the latency.
    bytes_per_s: AtomicU64,
}

impl CostModel {
    /// Transfers up to this size teach the latency.
    const SMALL: u64 = 64 * 1024;
    /// Transfers from this size on teach the throughput.
    const LARGE: u64 = 1 << 20;

    /// A model starting at `latency` and `bytes_per_s`.
    pub fn new(latency: Duration, bytes_per_s: u64) -> Self {
        CostModel {
            latency_ns: AtomicU64::new(latency.as_nanos() as u64),
            bytes_per_s: AtomicU64::new(bytes_per_s.max(1)),
        }
    }

    /// A completed transfer of `bytes` that took `took`.
    pub fn observe(&self, bytes: u64, took: Duration) {
        // Moving averages with weight 1/8: steady under noise, current within tens of
        // transfers. Racing updates may lose one sample; the model stays an estimate.
        let ewma = |old: u64, new: u64| old - old / 8 + new / 8;
        let ns = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        if bytes <= Self::SMALL {
            let l = self.latency_ns.load(Ordering::Relaxed);
            self.latency_ns.store(ewma(l, ns), Ordering::Relaxed);
        } else if bytes >= Self::LARGE {
            let moving = ns
                .saturating_sub(self.latency_ns.load(Ordering::Relaxed))
                .max(1);
            let rate = (u128::from(bytes) * 1_000_000_000 / u128::from(moving))
                .min(u128::from(u64::MAX)) as u64;
            let r = self.bytes_per_s.load(Ordering::Relaxed);
            self.bytes_per_s
                .store(ewma(r, rate).max(1), Ordering::Relaxed);
        }
    }

    /// Expected duration of a transfer of `bytes`, and the margin around it.
    pub fn estimate(&self, bytes: u64) -> (Duration, Duration) {
        let latency = self.latency_ns.load(Ordering::Relaxed);
        let rate = self.bytes_per_s.load(Ordering::Relaxed).max(1);
        let moving = (u128::from(bytes) * 1_000_000_000 / u128::from(rate)) as u64;
        let total = Duration::from_nanos(latency.saturating_add(moving));
        // Half the latency, plus a quarter of the time the bytes take: what run-to-run noise
        // looked like in the measurements.
        let margin = Duration::from_nanos(latency / 2 + moving / 4);
        (total, margin)
    }
}

struct Shared {
    agent: String,
    engine_cfg: EngineConfig,
    timeout: Duration,
    /// Longest notification we take from a peer (`max_notif_bytes`), told in `Limits`.
    max_notif: u32,
    mem: Mem,
    notifs: Notifs,
    stop: AtomicBool,
    /// Conns we opened, by peer: our transfers to that peer go there.
    outgoing: Mutex<HashMap<String, Arc<Conn>>>,
    /// Every live conn, both roles, serviced by the backend thread.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Per peer, the lock held while our conn to it is opened: one handshake per peer at a
    /// time, while handshakes with different peers (each up to the timeout; TCPX's accept
    /// alone takes 5 s) run at once. `disconnect` removes the peer's entry, which tells a
    /// handshake still running that its conn is not wanted any more.
    connecting: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    next_wire: AtomicU64,
    /// `inline_read_bytes`: READs this small travel inline.
    inline_read_bytes: u64,
    /// `inline_write_bytes`: WRITEs this small carry their data in the announce.
    inline_write_bytes: u64,
    /// READs this agent answered inline (tests: which path a READ took).
    inline_answers: AtomicU64,
    /// Inline WRITEs this agent took (tests: which path a WRITE took).
    inline_writes: AtomicU64,
    /// WRITEs this agent refused after their data was on the wire, received and dropped
    /// (tests: which path a refusal took).
    drained: AtomicU64,
    /// Per CUDA device with registered memory: what inline transfers copy its bytes with
    /// (`None`: the device could not be opened; its memory travels through the engine).
    copiers: Mutex<HashMap<u32, Option<Arc<Copier>>>>,
    /// What transfers to peers cost so far.
    cost: CostModel,
    /// [`MAX_OUTSTANDING`]; lowered by tests to make parts wait.
    max_outstanding: AtomicUsize,
    /// Origin of [`Conn::checked`].
    epoch: Instant,
}

impl Shared {
    /// A dead conn's WRITEs that were still waiting give back the queue room their notifs
    /// reserved (they will never be delivered), so a peer that leaves cannot shrink the queue
    /// for everyone.
    fn release_reservations(&self, c: &Conn) {
        for j in lock(&c.jobs).iter_mut().filter(|j| j.reserved) {
            if let Some(Some(msg)) = &j.write {
                lock(&self.notifs).unreserve(msg.len());
            }
            j.reserved = false;
            j.write = None;
        }
    }

    /// A dead conn lets go of everything: its session is closed (the plugin closes its comms,
    /// so nothing more is received into our memory or sent from it), and its lists of parts
    /// and waiting flights are emptied (flights hold their conn: this breaks the cycle, so the
    /// conn is freed once the last request that used it is).
    fn close(&self, c: &Conn) {
        let session = lock(&c.engine).session.take();
        drop(session);
        let mut out = lock(&c.out);
        out.parts.clear();
        out.waiting.clear();
        c.outstanding.store(0, Ordering::Relaxed);
    }

    fn max_outstanding(&self) -> usize {
        self.max_outstanding.load(Ordering::Relaxed)
    }

    /// Nanoseconds since [`Shared::epoch`], at least 1 (0 means never in [`Conn::checked`]).
    fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    /// How long the backend thread still leaves `c` to the application's `checkXfer` (`None`:
    /// it services the conn itself).
    fn left_to_checks(&self, c: &Conn, now_ns: u64) -> Option<Duration> {
        let at = c.checked.load(Ordering::Relaxed);
        if !c.initiator || at == 0 {
            return None;
        }
        let since = now_ns.saturating_sub(at);
        let window = CHECKED_RECENTLY.as_nanos() as u64;
        (since < window).then(|| Duration::from_nanos(window - since))
    }

    /// The copier of `device`, if its memory can travel inline.
    fn copier(&self, device: u32) -> Option<Arc<Copier>> {
        lock(&self.copiers).get(&device).cloned().flatten()
    }
}

/// The engine-backed data path to other agents, with its backend thread.
pub struct RemotePath {
    shared: Arc<Shared>,
    /// In a Mutex only so the backend stays `Sync` (a Receiver is not).
    thread: Mutex<Option<(JoinHandle<()>, mpsc::Receiver<()>)>>,
}

impl std::fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePath")
            .field("agent", &self.shared.agent)
            .finish_non_exhaustive()
    }
}

/// The engine configuration of every session of an agent configured as `config`.
pub fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        plugin: config.plugin_path.clone(),
        devices: config.devices,
        channels: config.channels.into(),
        chunk_bytes: config.chunk_bytes,
        window: config.window.into(),
        timeout: config.timeout,
        // Every session of the agent, whichever thread opens it, is bound to the agent's GPU
        // from its handshake on.
        gpu: config.gpu.map(|g| g as i32),
        max_transfers: ENGINE_TRANSFERS,
        max_segments: PART_SEGMENTS,
    }
}

impl RemotePath {
    /// Starts the backend thread, which accepts peers on `listener`.
    pub fn new(
        agent: &str,
        config: &Config,
        listener: TcpListener,
        mem: Mem,
        notifs: Notifs,
    ) -> Result<Self, Error> {
        let engine_cfg = engine_config(config);
        engine_cfg.validate().map_err(Error::Engine)?;
        listener.set_nonblocking(true).map_err(|err| Error::Io {
            what: "control listener",
            err,
        })?;
        let shared = Arc::new(Shared {
            agent: agent.to_owned(),
            engine_cfg,
            timeout: config.timeout,
            max_notif: config.max_notif_bytes,
            mem,
            notifs,
            stop: AtomicBool::new(false),
            outgoing: Mutex::new(HashMap::new()),
            conns: Mutex::new(Vec::new()),
            connecting: Mutex::new(HashMap::new()),
            next_wire: AtomicU64::new(1),
            inline_read_bytes: config.inline_read_bytes.into(),
            inline_write_bytes: config.inline_write_bytes.into(),
            inline_answers: AtomicU64::new(0),
            inline_writes: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            copiers: Mutex::new(HashMap::new()),
            cost: CostModel::new(Duration::from_micros(30), 1_500_000_000),
            max_outstanding: AtomicUsize::new(MAX_OUTSTANDING),
            epoch: Instant::now(),
        });
        let (done_tx, done_rx) = mpsc::channel();
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("tcpx-nixl".into())
            .spawn(move || {
                run(&s, &listener);
                let _ = done_tx.send(());
            })
            .map_err(|err| Error::Io {
                what: "starting the backend thread",
                err,
            })?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some((handle, done_rx))),
        })
    }

    /// `connect`: opens our conn to the peer now rather than at the first transfer.
    pub fn connect(&self, agent: &str, peer: &PeerInfo) -> Result<(), Error> {
        self.shared.outgoing(agent, peer).map(drop)
    }

    /// `disconnect`: closes every conn with the peer (both roles); a handshake with it still
    /// running ends in REMOTE_DISCONNECT.
    pub fn disconnect(&self, agent: &str) {
        {
            // Lock order: handshake table, then outgoing conns (as `Shared::outgoing`).
            let mut connecting = lock(&self.shared.connecting);
            connecting.remove(agent);
            lock(&self.shared.outgoing).remove(agent);
        }
        for c in lock(&self.shared.conns).iter() {
            if *c.peer == *agent {
                c.close("disconnect");
            }
        }
    }

    /// Opens the copier of CUDA device `device` unless it was tried before (once: a device
    /// that cannot be opened is logged, our transfers of its memory go through the engine,
    /// copies to ourselves and inline WRITEs into it are refused). Called before its first
    /// registration, outside the metadata table's lock (opening a context takes a while).
    pub fn open_copier(&self, device: u32) {
        if lock(&self.shared.copiers).contains_key(&device) {
            return;
        }
        let opened = match Copier::open(device) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                crate::log!(Warn, "device {device}: no inline transfers: {e}");
                None
            }
        };
        lock(&self.shared.copiers).entry(device).or_insert(opened);
    }

    /// A registration going away (the caller holds the metadata table's write lock, so no
    /// transfer can start using it): released on every session that registered it, once the
    /// transfers still using it there (released ones included, and parts whose data is still
    /// to come) have finished, bounded by the timeout, so no byte lands in the memory after the
    /// application has it back.
    pub fn deregister(&self, md: MdId) {
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).clone();
        for c in conns {
            let Some(id) = lock(&c.engine).mems.get(&md).copied() else {
                continue;
            };
            let deadline = Instant::now() + self.shared.timeout;
            loop {
                let busy = {
                    let mut e = lock(&c.engine);
                    let Some(s) = e.session.as_mut() else { break };
                    if s.progress().is_err() {
                        break;
                    }
                    s.in_use(id).unwrap_or(false)
                } || (c.initiator && self.shared.references(&c, id));
                if !busy || Instant::now() >= deadline || c.dead().is_some() {
                    break;
                }
                if c.initiator {
                    // Answers (a READ's announce) must be read for its receives to be posted.
                    self.shared.service(&c);
                }
                std::thread::yield_now();
            }
            let mut e = lock(&c.engine);
            e.mems.remove(&md);
            if let Some(Err(err)) = e.session.as_mut().map(|s| s.deregister(id)) {
                crate::log!(Warn, "peer {:?}: deregistering {md:#x}: {err}", c.peer);
            }
        }
    }

    /// `prepXfer` towards `agent`, with segments already validated: neighbours are joined
    /// and the list cut into parts, everything later posts need built here.
    pub fn prepare(
        &self,
        op: Op,
        _agent: &str,
        _peer: &PeerInfo,
        segments: Vec<Segment>,
    ) -> Result<RemoteXfer, Error> {
        let segments = xfer::merge(segments);
        let wire: Arc<[WireSegment]> = segments
            .iter()
            .map(|s| match s.far {
                Far::Peer { token, addr } => WireSegment::new(token.region, token.key, addr, s.len),
                Far::Own { addr, .. } => WireSegment::new(0, 0, addr, s.len),
            })
            .collect();
        let ranges: Arc<[Range<usize>]> = xfer::parts(segments.len(), PART_SEGMENTS).into();
        let mut mds: Vec<MdId> = segments.iter().map(|s| s.md).collect();
        mds.sort_unstable();
        mds.dedup();
        let bytes = segments
            .iter()
            .map(|s| s.len)
            .fold(0u64, u64::saturating_add);
        let limit = match op {
            Op::Read => self.shared.inline_read_bytes,
            Op::Write => self.shared.inline_write_bytes,
        };
        // A small transfer of one part goes inline when every local segment is host memory or
        // device memory with a copier: a READ offers to take its data in the answer, a WRITE
        // puts it in the announce.
        let inline = if limit > 0 && bytes <= limit && ranges.len() == 1 {
            segments
                .iter()
                .map(|s| match s.dev {
                    None => Some(None),
                    Some(device) => self.shared.copier(device).map(Some),
                })
                .collect::<Option<Vec<_>>>()
        } else {
            None
        };
        Ok(RemoteXfer {
            op,
            segments,
            wire,
            ranges,
            mds,
            bytes,
            inline,
            inline_data: Vec::new(),
            flight: None,
            posted: false,
        })
    }

    /// `postXfer` of a prepared transfer; `notif` is delivered to the peer once every byte
    /// landed.
    ///
    /// A conn can die between being picked and being written to. Nothing of this post reached
    /// the peer then — a dead conn's peer discards everything — so the post is made once more
    /// on a fresh conn.
    pub fn post(
        &self,
        agent: &str,
        peer: &PeerInfo,
        x: &mut RemoteXfer,
        notif: Option<&[u8]>,
    ) -> Result<Status, Error> {
        let reused = self.shared.live_outgoing(agent).is_some();
        match self.post_once(agent, peer, x, notif) {
            Err(Error::Disconnected(_)) if reused => self.post_once(agent, peer, x, notif),
            r => r,
        }
    }

    fn post_once(
        &self,
        agent: &str,
        peer: &PeerInfo,
        x: &mut RemoteXfer,
        notif: Option<&[u8]>,
    ) -> Result<Status, Error> {
        if let Some(f) = &x.flight {
            let f = lock(f);
            let over = f.done || (f.failed.is_some() && f.settled()) || f.conn.dead().is_some();
            if x.posted && !over {
                return Err(Error::RepostActive);
            }
        }
        x.posted = false;
        let conn = self.shared.outgoing(agent, peer)?;
        if let Some(msg) = notif {
            if msg.len() > conn.peer_max_notif {
                return Err(Error::invalid(
                    Arg::Notif,
                    format!(
                        "{} bytes, but agent {agent:?} takes notifications of at most {} bytes \
                         (its backend parameter max_notif_bytes)",
                        msg.len(),
                        conn.peer_max_notif
                    ),
                ));
            }
        }
        self.shared.ensure_registered(&conn, &x.mds)?;
        let n = x.ranges.len();
        let wire_id = self
            .shared
            .next_wire
            .fetch_add(n.max(1) as u64, Ordering::Relaxed);
        let flight = match &x.flight {
            Some(fl) => fl.clone(),
            None => {
                let fl = Arc::new(Mutex::new(Flight {
                    op: x.op,
                    wire: wire_id,
                    conn: conn.clone(),
                    segs: Vec::with_capacity(x.segments.len()),
                    far: x.wire.clone(),
                    ranges: x.ranges.clone(),
                    parts: vec![Part::default(); n],
                    sent: 0,
                    inline_dst: Vec::with_capacity(if x.inline.is_some() {
                        x.segments.len()
                    } else {
                        0
                    }),
                    notif: Vec::new(),
                    notify: false,
                    notif_in_announce: false,
                    done: false,
                    released: false,
                    failed: None,
                    posted_at: Instant::now(),
                    bytes: x.bytes,
                }));
                x.flight = Some(fl.clone());
                fl
            }
        };
        {
            // The previous post is over (done, failed and settled, or its conn died): reset
            // the flight for this one. Its parts, if its conn died, are never answered: the
            // dead conn is never serviced again. Then the conn's engine regions of our
            // segments (this conn may be new since the last post). Lock order: flight, then
            // session.
            let mut f = lock(&flight);
            let old = f.conn.clone();
            for p in f.parts.iter_mut() {
                if let Some(id) = p.engine.take() {
                    lock(&old.engine).release(id);
                }
                *p = Part::default();
            }
            f.conn = conn.clone();
            f.wire = wire_id;
            f.sent = 0;
            f.done = false;
            f.failed = None;
            f.posted_at = Instant::now();
            f.notif.clear();
            f.notif.extend_from_slice(notif.unwrap_or(&[]));
            f.notify = notif.is_some();
            f.notif_in_announce = f.notify && x.op == Op::Write && n == 1;
            f.inline_dst.clear();
            if let (Some(copiers), Op::Read) = (&x.inline, x.op) {
                let dst = x
                    .segments
                    .iter()
                    .zip(copiers)
                    .map(|(s, c)| (s.local, s.len, c.clone()));
                f.inline_dst.extend(dst);
            }
            f.segs.clear();
            let e = lock(&conn.engine);
            for s in &x.segments {
                let mem = *e
                    .mems
                    .get(&s.md)
                    .ok_or_else(|| Error::invalid(Arg::Metadata, "registration is gone"))?;
                f.segs.push(ESeg {
                    mem,
                    offset: s.offset,
                    remote_offset: 0,
                    len: s.len,
                });
            }
        }
        // The clock of the no-progress timeout starts with the post.
        conn.heard();
        if n == 0 {
            // Nothing to move (every descriptor was empty): done now, the notification sent.
            lock(&flight).done = true;
            x.posted = true;
            if let Some(msg) = notif {
                conn.send(&Message::Notif(Notif { msg }))?;
            }
            return Ok(Status::Success);
        }
        if let (Some(copiers), Op::Write) = (&x.inline, x.op) {
            gather_local(&x.segments, copiers, &mut x.inline_data)?;
            // The data is in the announce: nothing for the data session, and no place among
            // the outstanding parts.
            let mut tx = lock(&conn.tx);
            {
                let mut f = lock(&flight);
                f.parts[0].moved = true;
                f.sent = 1;
            }
            lock(&conn.out)
                .parts
                .insert(wire_id, (flight.clone(), false));
            let sent = conn.send_on(
                &mut tx,
                &Message::WriteAnnounce(WriteAnnounce {
                    xfer: wire_id,
                    segments: &x.wire,
                    notif,
                    data: Some(&x.inline_data),
                }),
            );
            drop(tx);
            if let Err(e) = sent {
                lock(&conn.out).parts.remove(&wire_id);
                return Err(e);
            }
        } else {
            let mut tx = lock(&conn.tx);
            // Transfers waiting for room go first: a stream of small ones must not starve a
            // large one.
            let behind = !lock(&conn.out).waiting.is_empty();
            let all = !behind && self.shared.send_parts(&conn, &mut tx, &flight)?;
            if !all {
                lock(&conn.out).waiting.push_back(flight.clone());
            }
            conn.flush_on(&mut tx)?;
        }
        x.posted = true;
        if x.op == Op::Write && x.inline.is_none() {
            // Put the data on the wire now rather than at the first `checkXfer`. A session
            // error surfaces there (this post stands; the conn is then dead).
            let _ = lock(&conn.engine).progress();
        }
        Ok(Status::InProgress)
    }

    /// `checkXfer` of a posted transfer.
    pub fn check(&self, x: &mut RemoteXfer) -> Result<Status, Error> {
        let (Some(fl), true) = (&x.flight, x.posted) else {
            return Err(Error::NotPosted);
        };
        // Read the peer's answers and drive the session on this thread as well: leaving them
        // to the backend thread would put a thread hand-off into every transfer's latency. An
        // initiator conn carries nothing else, and everything `service` touches is behind the
        // conn's locks; no flight may be held here.
        let conn = {
            let f = lock(fl);
            (!f.done && f.failed.is_none()).then(|| f.conn.clone())
        };
        if let Some(conn) = conn.filter(|c| c.initiator) {
            conn.checked.store(self.shared.now_ns(), Ordering::Relaxed);
            self.shared.service(&conn);
        }
        let mut f = lock(fl);
        if f.done {
            return Ok(Status::Success);
        }
        if let Some(why) = f.conn.dead() {
            f.fail(Status::RemoteDisconnect, why.clone());
            let (status, reason) = f.failed.clone().unwrap_or((Status::RemoteDisconnect, why));
            return Err(Error::Remote { status, reason });
        }
        if f.settled() {
            if let Some((status, reason)) = &f.failed {
                return Err(Error::Remote {
                    status: *status,
                    reason: reason.clone(),
                });
            }
            f.done = true;
            self.shared.cost.observe(f.bytes, f.posted_at.elapsed());
            let conn = f.conn.clone();
            let after = f.notify && !f.notif_in_announce;
            // Never write to the stream with the flight locked (post holds tx, then the
            // flight); the buffer is the request's own, not used until its next post.
            drop(f);
            if after {
                let f = lock(fl);
                let sent = conn.send(&Message::Notif(Notif { msg: &f.notif }));
                drop(f);
                sent?;
            }
            return Ok(Status::Success);
        }
        if f.conn.silent_for() > f.conn.timeout {
            let why = format!("no progress from the peer for {:?}", f.conn.timeout);
            // Where the two sides stand is unknown now: the conn cannot be reused.
            f.conn.kill(&why);
            f.fail(Status::RemoteDisconnect, why.clone());
            return Err(Error::Disconnected(why));
        }
        Ok(Status::InProgress)
    }

    /// `releaseReqH`: abandons an in-flight transfer without blocking. Its engine transfers
    /// finish into memory on their own; parts still to be answered are answered and settled
    /// by whoever services the conn; parts not yet sent never are.
    pub fn abort(&self, x: RemoteXfer) {
        if let Some(fl) = x.flight {
            let conn = {
                let mut f = lock(&fl);
                f.released = true;
                let conn = f.conn.clone();
                for p in f.parts.iter_mut() {
                    if let Some(id) = p.engine.take() {
                        lock(&conn.engine).release(id);
                        p.moved = true;
                    }
                }
                conn
            };
            lock(&conn.out).waiting.retain(|w| !Arc::ptr_eq(w, &fl));
        }
    }

    /// READs this agent answered inline so far (tests: which path a READ took).
    pub(crate) fn inline_answers(&self) -> u64 {
        self.shared.inline_answers.load(Ordering::Relaxed)
    }

    /// WRITEs this agent refused after their data was on the wire, and dropped (tests).
    pub(crate) fn drained(&self) -> u64 {
        self.shared.drained.load(Ordering::Relaxed)
    }

    /// The copier of CUDA device `device`, if its memory was registered and it could be opened.
    pub(crate) fn copier(&self, device: u32) -> Option<Arc<Copier>> {
        self.shared.copier(device)
    }

    /// Inline WRITEs this agent took so far (tests: which path a WRITE took).
    pub(crate) fn inline_writes(&self) -> u64 {
        self.shared.inline_writes.load(Ordering::Relaxed)
    }

    /// The cost model of transfers to peers.
    pub(crate) fn cost(&self) -> &CostModel {
        &self.shared.cost
    }

    /// Lowers the parts outstanding per conn (tests: parts that wait for room).
    #[cfg(test)]
    pub(crate) fn set_max_outstanding(&self, n: usize) {
        self.shared.max_outstanding.store(n, Ordering::Relaxed);
    }

    /// Identity of our live conn to `agent`, if any (tests: whether a conn survived).
    #[cfg(test)]
    pub(crate) fn outgoing_id(&self, agent: &str) -> Option<usize> {
        self.shared
            .live_outgoing(agent)
            .map(|c| Arc::as_ptr(&c) as usize)
    }

    /// `genNotif` towards another agent.
    pub fn notify(&self, agent: &str, peer: &PeerInfo, msg: &[u8]) -> Result<(), Error> {
        let conn = self.shared.outgoing(agent, peer)?;
        if msg.len() > conn.peer_max_notif {
            return Err(Error::invalid(
                Arg::Notif,
                format!(
                    "{} bytes, but agent {agent:?} takes notifications of at most {} bytes (its \
                     backend parameter max_notif_bytes)",
                    msg.len(),
                    conn.peer_max_notif
                ),
            ));
        }
        conn.send(&Message::Notif(Notif { msg }))
    }
}

impl Drop for RemotePath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some((handle, done)) = lock(&self.thread).take() {
            // The loop checks `stop` every pass and never waits on a peer, so waiting the
            // timeout (plus slack) is plenty. Past it, detach.
            match done.recv_timeout(self.shared.timeout + Duration::from_secs(1)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    crate::log!(Warn, "backend thread did not stop in time; detaching it");
                }
            }
        }
        lock(&self.shared.outgoing).clear();
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).drain(..).collect();
        for c in conns {
            c.close("agent destroyed");
            self.shared.close(&c);
        }
    }
}

/// Registers one local region on a session (at its first use there).
fn register_on(e: &mut Engine, md: MdId, region: &Region) -> Result<MemId, Error> {
    if let Some(id) = e.mems.get(&md) {
        return Ok(*id);
    }
    let len = usize::try_from(region.span.len)
        .map_err(|_| Error::invalid(Arg::Descs, "region exceeds the address space"))?;
    let memory = match region.mem {
        MemKind::Dram => Memory::Host,
        MemKind::Vram => Memory::Cuda {
            device: region.device as i32,
        },
    };
    let session = e.live()?;
    // SAFETY: NIXL keeps registered memory allocated until `deregisterMem`, which removes it
    // from every session (RemotePath::deregister) before returning; the caller holds the
    // metadata table (read), so the registration is live now.
    let id = unsafe { session.register(region.span.base as usize as *mut _, len, memory) }
        .map_err(Error::Engine)?;
    e.mems.insert(md, id);
    Ok(id)
}

/// What handling one frame came to.
enum Handled {
    /// Acted on; the next frame may follow.
    Done,
    /// It needs room that is not there yet (in the notification queue, or among the jobs):
    /// left in the buffer, nothing more taken from the peer until it fits.
    Held,
}

impl Shared {
    /// Our conn to `agent`, if there is one not known to be dead.
    fn live_outgoing(&self, agent: &str) -> Option<Arc<Conn>> {
        lock(&self.outgoing)
            .get(agent)
            .filter(|c| c.dead().is_none())
            .cloned()
    }

    /// Our conn to `agent`, opened (handshake) if there is none or it died. The handshake
    /// holds only this peer's entry of the handshake table: transfers on other conns, and
    /// handshakes with other peers, go on meanwhile.
    fn outgoing(&self, agent: &str, peer: &PeerInfo) -> Result<Arc<Conn>, Error> {
        if let Some(c) = self.live_outgoing(agent) {
            return Ok(c);
        }
        let slot = lock(&self.connecting)
            .entry(agent.to_owned())
            .or_default()
            .clone();
        let _one = lock(&slot);
        if let Some(c) = self.live_outgoing(agent) {
            return Ok(c);
        }
        let conn = self.open(agent, peer)?;
        lock(&self.conns).push(conn.clone());
        let connecting = lock(&self.connecting);
        if !connecting.get(agent).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            // `disconnect` ran during the handshake: the peer may be loaded again with other
            // connection info by now, so this conn must not serve it.
            drop(connecting);
            conn.close("disconnected during the handshake");
            return Err(Error::Disconnected(format!(
                "{agent:?} was disconnected during the handshake"
            )));
        }
        lock(&self.outgoing).insert(agent.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Initiator handshake: Hello + our ListenHandles, their ListenHandles and Limits, engine
    /// connect.
    fn open(&self, agent: &str, peer: &PeerInfo) -> Result<Arc<Conn>, Error> {
        let io = |what| move |err| Error::Io { what, err };
        let mut s = TcpStream::connect_timeout(&peer.addr, self.timeout)
            .map_err(|e| Error::Disconnected(format!("connecting to {}: {e}", peer.addr)))?;
        s.set_read_timeout(Some(self.timeout))
            .map_err(io("control stream"))?;
        s.set_write_timeout(Some(self.timeout))
            .map_err(io("control stream"))?;
        let _ = s.set_nodelay(true);
        let net = Session::open_net(&self.engine_cfg).map_err(Error::Engine)?;
        let l = Session::listen(net, self.engine_cfg.clone()).map_err(Error::Engine)?;
        let hello = frame(&Message::Hello(Hello {
            channels: self.engine_cfg.channels as u16,
            name: &self.agent,
        }))?;
        // A peer that stops answering (read/write timeout) or goes away during the handshake
        // is a disconnected peer, like one that fails later: REMOTE_DISCONNECT, not BACKEND.
        s.write_all(&hello)
            .and_then(|_| s.write_all(l.conn_info()))
            .map_err(io("sending Hello"))
            .map_err(peer_gone)?;
        let theirs = read_frame(&mut s).map_err(peer_gone)?;
        let limits = read_frame(&mut s).map_err(peer_gone)?;
        let limits = match wire::parse(&limits) {
            Ok(Message::Limits(l)) => l,
            _ => {
                return Err(Error::Mismatch(format!(
                    "agent {agent:?} did not answer the handshake with its Limits"
                )))
            }
        };
        let session = l.connect(&theirs).map_err(Error::Engine)?;
        self.conn(agent.into(), true, s, session, limits.max_notif as usize)
    }

    fn conn(
        &self,
        peer: Arc<str>,
        initiator: bool,
        s: TcpStream,
        session: Session,
        peer_max_notif: usize,
    ) -> Result<Arc<Conn>, Error> {
        let io = |err| Error::Io {
            what: "control stream",
            err,
        };
        s.set_nonblocking(true).map_err(io)?;
        let tx = s.try_clone().map_err(io)?;
        let addr =
            |a: std::io::Result<SocketAddr>| a.map_or_else(|_| "?".into(), |a| a.to_string());
        crate::log!(
            Info,
            "peer {peer:?}: connected as {} (control stream {} -> {})",
            if initiator { "initiator" } else { "target" },
            addr(s.local_addr()),
            addr(s.peer_addr())
        );
        // An initiator reads only answers; a target reads announces with notifications of up
        // to its own limit.
        let max_frame = if initiator {
            MAX_CONTROL_FRAME
        } else {
            MAX_CONTROL_FRAME + self.max_notif as usize
        };
        Ok(Arc::new(Conn {
            peer,
            initiator,
            stream: s,
            tx: Mutex::new(Writer::new(tx)),
            engine: Mutex::new(Engine {
                session: Some(session),
                mems: HashMap::new(),
                resolved: Vec::with_capacity(TABLE_CAP),
                sink: None,
            }),
            rx: Mutex::new(Reader {
                buf: Vec::with_capacity(FRAME_BUF),
                held: false,
            }),
            max_frame,
            peer_max_notif,
            dead: Mutex::new(None),
            alive: Mutex::new(Instant::now()),
            // Sized up front (and never shrunk by removals), so reposts insert without
            // allocating; more parts in flight at once than this grow it once.
            out: Mutex::new(Outstanding {
                parts: HashMap::with_capacity(TABLE_CAP),
                waiting: VecDeque::new(),
            }),
            outstanding: AtomicUsize::new(0),
            scan: Mutex::new(Scan {
                listed: Vec::with_capacity(TABLE_CAP),
                gone: Vec::with_capacity(TABLE_CAP),
            }),
            jobs: Mutex::new(Vec::with_capacity(TABLE_CAP)),
            next_seq: AtomicU64::new(0),
            finished: Mutex::new(Vec::with_capacity(TABLE_CAP)),
            stalled: Mutex::new(None),
            timeout: self.timeout,
            refused_reads: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            refused_notifs: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            inline_buf: Mutex::new(Vec::new()),
        }))
    }

    /// Target handshake for a stream a peer opened (runs on its own thread: it blocks).
    fn accept(&self, mut s: TcpStream) -> Result<(), Error> {
        let io = |err| Error::Io {
            what: "control handshake",
            err,
        };
        s.set_nonblocking(false).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let _ = s.set_nodelay(true);
        let hello = read_frame(&mut s)?;
        let name = match wire::parse(&hello) {
            Ok(Message::Hello(h)) => Arc::<str>::from(h.name),
            _ => {
                return Err(Error::Mismatch(
                    "control stream did not open with Hello".into(),
                ))
            }
        };
        let theirs = read_frame(&mut s)?;
        let net = Session::open_net(&self.engine_cfg).map_err(Error::Engine)?;
        let l = Session::listen(net, self.engine_cfg.clone()).map_err(Error::Engine)?;
        let limits = frame(&Message::Limits(Limits {
            max_notif: self.max_notif,
        }))?;
        s.write_all(l.conn_info())
            .and_then(|_| s.write_all(&limits))
            .map_err(io)?;
        let session = l.connect(&theirs).map_err(Error::Engine)?;
        let c = self.conn(name, false, s, session, 0)?;
        if self.stop.load(Ordering::Relaxed) {
            c.close("agent destroyed");
            return Ok(());
        }
        lock(&self.conns).push(c);
        Ok(())
    }

    /// Registers our registrations `mds` on the conn's session where they are not yet (their
    /// first use there). The metadata table's read lock keeps them registered meanwhile.
    fn ensure_registered(&self, c: &Conn, mds: &[MdId]) -> Result<(), Error> {
        if mds.iter().all(|m| lock(&c.engine).mems.contains_key(m)) {
            return Ok(());
        }
        // Table, then session: the lock order.
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        let mut e = lock(&c.engine);
        for &md in mds {
            let region = table
                .local(md)
                .map_err(|_| Error::invalid(Arg::Metadata, "registration is gone"))?;
            register_on(&mut e, md, region)?;
        }
        Ok(())
    }

    /// Initiator: whether a part still to finish on `c` has data to move in engine region
    /// `id` (a READ whose announce has not come yet: its receives are still to be posted).
    fn references(&self, c: &Conn, id: MemId) -> bool {
        let flights: Vec<Arc<Mutex<Flight>>> = lock(&c.out)
            .parts
            .values()
            .map(|(f, _)| f.clone())
            .collect();
        flights.iter().any(|fl| {
            let f = lock(fl);
            (0..f.sent).any(|k| {
                !f.parts[k].settled() && f.segs[f.ranges[k].clone()].iter().any(|s| s.mem == id)
            })
        })
    }

    /// Initiator: sends the flight's next parts while the conn has room for them, each part's
    /// engine sends (WRITE) posted with its announce under the held writer. `Ok(true)` once
    /// nothing is left to send (all sent, or the flight failed or was released).
    fn send_parts(
        &self,
        c: &Conn,
        tx: &mut Writer,
        fl: &Arc<Mutex<Flight>>,
    ) -> Result<bool, Error> {
        let mut f = lock(fl);
        while f.sent < f.parts.len() && f.failed.is_none() && !f.released {
            if c.outstanding.load(Ordering::Relaxed) >= self.max_outstanding() {
                return Ok(false);
            }
            let k = f.sent;
            let xfer = f.wire + k as u64;
            let range = f.ranges[k].clone();
            if f.op == Op::Write {
                let posted = lock(&c.engine).live().and_then(|s| {
                    s.post(Direction::Send, &f.segs[range.clone()])
                        .map_err(Error::Engine)
                });
                match posted {
                    Ok(id) => f.parts[k].engine = Some(id),
                    // Nothing of this part went out: the post fails if it is the first, else
                    // the parts already sent finish and the transfer fails with this.
                    Err(e) if k == 0 => return Err(e),
                    Err(e) => {
                        f.fail(e.status(), format!("part {k}: {e}"));
                        break;
                    }
                }
            }
            let msg = match f.op {
                Op::Write => Message::WriteAnnounce(WriteAnnounce {
                    xfer,
                    segments: &f.far[range],
                    notif: f.notif_in_announce.then_some(&f.notif[..]),
                    data: None,
                }),
                Op::Read => Message::ReadRequest(ReadRequest {
                    xfer,
                    segments: &f.far[range],
                    inline_ok: !f.inline_dst.is_empty(),
                }),
            };
            if let Some(why) = c.dead() {
                return Err(Error::Disconnected(why));
            }
            tx.push(&msg)?;
            lock(&c.out).parts.insert(xfer, (fl.clone(), true));
            c.outstanding.fetch_add(1, Ordering::Relaxed);
            f.sent += 1;
        }
        Ok(true)
    }

    /// One pass over a conn: read and handle frames, drive the session, then the role's own
    /// work (initiator: settle parts, send waiting ones; target: finish jobs).
    fn service(&self, c: &Arc<Conn>) -> bool {
        if c.dead().is_some() {
            return false;
        }
        let mut moved = false;
        // Whole frames handled: progress for a conn waiting on a partial frame, not for one
        // waiting on announced data (frames must not keep a stalled WRITE's conn open).
        let mut framed = false;
        let partial;
        // A frame waits for room: retried on every pass (room comes from the application
        // taking notifications, or from jobs finishing).
        let mut held = false;
        // EOF, or a frame that closes the conn, after frames: what those frames completed (a
        // last Notif, say) is still delivered, then the conn is closed.
        let mut eof = false;
        let mut fatal: Option<String> = None;
        {
            let mut rx = lock(&c.rx);
            let mut tmp = [0u8; 16 * 1024];
            let mut budget = READ_PER_PASS;
            loop {
                // Handle every whole frame, unless one waits for room.
                let mut off = 0;
                while !held {
                    match wire::next_frame_within(&rx.buf[off..], c.max_frame) {
                        Ok(Some(f)) => {
                            let n = f.len();
                            match self.handle(c, f) {
                                Ok(Handled::Done) => {
                                    off += n;
                                    framed = true;
                                }
                                Ok(Handled::Held) => held = true,
                                Err(e) => {
                                    fatal = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            fatal = Some(format!("bad control frame: {e}"));
                            break;
                        }
                    }
                }
                rx.buf.drain(..off);
                if held || eof || budget == 0 || fatal.is_some() {
                    break;
                }
                match (&c.stream).read(&mut tmp[..budget.min(16 * 1024)]) {
                    Ok(0) => eof = true,
                    Ok(n) => {
                        rx.buf.extend_from_slice(&tmp[..n]);
                        budget -= n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        fatal = Some(format!("control read: {e}"));
                        break;
                    }
                }
            }
            rx.held = held;
            // A frame waiting for room is not a peer stopping mid-frame.
            partial = !held && !rx.buf.is_empty();
        }
        if framed {
            c.heard();
        }
        match lock(&c.engine).progress() {
            Ok(m) => {
                if m {
                    c.heard();
                }
                moved |= m;
            }
            Err(e) => {
                c.kill(&format!("data session: {e}"));
                return true;
            }
        }
        if c.initiator {
            moved |= self.drive(c);
        } else {
            moved |= self.finish_jobs(c);
        }
        if let Some(why) = fatal {
            c.kill(&why);
            return true;
        }
        if eof {
            c.close("peer closed the control stream");
            return true;
        }
        {
            let mut tx = lock(&c.tx);
            // Holding the peer back: say we are alive, so its timeout measures a dead agent
            // and not a slow application here.
            if held && tx.last_frame.elapsed() >= keepalive_every(c.timeout) {
                let _ = c.send_on(&mut tx, &Message::Keepalive(Keepalive));
            } else if tx.pending() {
                let _ = c.flush_on(&mut tx);
            }
            if tx
                .stuck
                .is_some_and(|t| t.elapsed() > c.timeout && c.silent_for() > c.timeout)
            {
                drop(tx);
                c.kill(&format!(
                    "the peer took none of our control frames for {:?}",
                    c.timeout
                ));
                return true;
            }
        }
        if c.initiator {
            return moved || framed;
        }
        let jobs_waiting = !lock(&c.jobs).is_empty();
        let waiting = partial || jobs_waiting;
        let progress = moved || (framed && !jobs_waiting);
        moved |= framed;
        let mut stalled = lock(&c.stalled);
        match *stalled {
            _ if progress || !waiting => *stalled = None,
            None => *stalled = Some(Instant::now()),
            Some(t) if t.elapsed() > c.timeout => {
                drop(stalled);
                let what = if partial {
                    "a partial frame"
                } else {
                    "announced data"
                };
                c.kill(&format!(
                    "no progress from the peer for {:?} ({what})",
                    c.timeout
                ));
                return true;
            }
            Some(_) => {}
        }
        moved || held
    }

    /// Initiator: finds the parts that finished (their engine transfers done and their
    /// answers in), frees their places, and sends parts that waited for room.
    fn drive(&self, c: &Conn) -> bool {
        let mut scan = lock(&c.scan);
        let Scan { listed: snap, gone } = &mut *scan;
        snap.clear();
        gone.clear();
        snap.extend(
            lock(&c.out)
                .parts
                .iter()
                .map(|(id, (f, _))| (*id, f.clone())),
        );
        for (id, fl) in snap.drain(..) {
            let mut f = lock(&fl);
            let Some(k) = f.index_of(id) else {
                // A part of an earlier post of a reposted request: nothing to wait for.
                gone.push(id);
                continue;
            };
            if let Some(xid) = f.parts[k].engine {
                let status = lock(&c.engine).status(xid);
                match status {
                    Ok(Progress::Done { .. }) => {
                        lock(&c.engine).release(xid);
                        f.parts[k].engine = None;
                        f.parts[k].moved = true;
                    }
                    Ok(Progress::Pending { .. }) => {}
                    Err(err) => {
                        drop(f);
                        c.kill(&format!("data session: {err}"));
                        return true;
                    }
                }
            }
            if f.parts[k].settled() {
                gone.push(id);
            }
        }
        let any = !gone.is_empty();
        if any {
            let mut out = lock(&c.out);
            for id in gone.iter() {
                if let Some((_, true)) = out.parts.remove(id) {
                    c.outstanding.fetch_sub(1, Ordering::Relaxed);
                }
            }
            drop(out);
            c.heard();
        }
        drop(scan);
        if lock(&c.out).waiting.is_empty()
            || c.outstanding.load(Ordering::Relaxed) >= self.max_outstanding()
        {
            return any;
        }
        let mut tx = lock(&c.tx);
        loop {
            let Some(fl) = lock(&c.out).waiting.front().cloned() else {
                break;
            };
            match self.send_parts(c, &mut tx, &fl) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let status = e.status();
                    lock(&fl).fail(status, e.to_string());
                }
            }
            lock(&c.out).waiting.pop_front();
        }
        let _ = c.flush_on(&mut tx);
        true
    }

    /// Target side: completed jobs, in announce order (a job waits for every earlier one),
    /// get their WRITE's notif queued and Ack sent.
    fn finish_jobs(&self, c: &Arc<Conn>) -> bool {
        // Only target conns have jobs, and only the backend thread serves target conns.
        let mut finished = lock(&c.finished);
        finished.clear();
        {
            let mut jobs = lock(&c.jobs);
            if jobs.is_empty() {
                return false;
            }
            let mut e = lock(&c.engine);
            for j in jobs.iter_mut() {
                let Some(id) = j.id else { continue };
                match e.status(id) {
                    Ok(Progress::Done { .. }) => {
                        e.release(id);
                        j.id = None;
                    }
                    Ok(Progress::Pending { .. }) => {}
                    Err(err) => {
                        drop(e);
                        c.kill(&format!("data session: {err}"));
                        return true;
                    }
                }
            }
            let first = first_landing(jobs.iter().map(Job::state));
            let mut i = 0;
            while i < jobs.len() {
                if may_finish(jobs[i].state(), first) {
                    finished.push(jobs.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        // `swap_remove` reorders; Acks and notifs go out in arrival order. Sequence numbers
        // are unique, so the unstable sort (which, unlike the stable one, never allocates) is
        // enough.
        finished.sort_unstable_by_key(|j| j.seq);
        let any = !finished.is_empty();
        for j in finished.drain(..) {
            if let Some(notif) = j.write {
                // Its room was reserved when it arrived: only now, with the data in place
                // (its own and that of every WRITE before it), may the application see it.
                if let Some(msg) = notif {
                    lock(&self.notifs).push_reserved(c.peer.clone(), msg);
                }
                if j.ack {
                    let acked = c.send(&Message::Ack(Ack {
                        xfer: j.wire,
                        status: 0,
                    }));
                    if acked.is_err() {
                        return true;
                    }
                }
            }
        }
        any
    }

    /// Whether the conn's jobs are at their bound, so a job that would wait behind a WRITE
    /// still landing must wait for room instead. Only the backend thread changes a target
    /// conn's jobs, so this holds until the caller's push. The bound counts only while a WRITE
    /// is still landing: otherwise every job finishes at the end of this pass, however many
    /// frames it brought.
    fn jobs_full(&self, c: &Conn) -> bool {
        let jobs = lock(&c.jobs);
        jobs.len() >= MAX_JOBS && jobs.iter().any(|j| j.id.is_some() && j.write.is_some())
    }

    /// Takes room for a WRITE's or a `Notif`'s notification; `false` when the queue has none
    /// (the frame waits).
    fn reserve(&self, notif: Option<&[u8]>) -> bool {
        match notif {
            Some(m) => lock(&self.notifs).reserve(m.len()).is_ok(),
            None => true,
        }
    }

    fn unreserve(&self, notif: Option<&[u8]>) {
        if let Some(m) = notif {
            lock(&self.notifs).unreserve(m.len());
        }
    }

    /// Checks a notification's length against what we told the peer we take.
    fn check_notif(&self, notif: Option<&[u8]>) -> Result<(), Error> {
        match notif {
            Some(m) if m.len() > self.max_notif as usize => Err(Error::Mismatch(format!(
                "a notification of {} bytes, above the {} this agent told the peer it takes",
                m.len(),
                self.max_notif
            ))),
            _ => Ok(()),
        }
    }

    /// An inline WRITE arrived. Room for its notif and a place among the conn's jobs come
    /// first (without them it waits: `Ok(Held)`), then its data is copied in and it joins the
    /// jobs as one whose transfer is done (`finish_jobs` acknowledges it after the WRITEs that
    /// arrived before it, in this same pass when none is still landing). A refusal (`Err`)
    /// wrote nothing.
    fn take_inline_write(
        &self,
        c: &Conn,
        w: &WriteAnnounce<'_>,
    ) -> Result<Handled, (Status, String)> {
        if self.jobs_full(c) || !self.reserve(w.notif) {
            return Ok(Handled::Held);
        }
        if let Err(e) = self.scatter_inline(w.segments, w.data.unwrap_or(&[])) {
            self.unreserve(w.notif);
            return Err(e);
        }
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
        // The one allocation serving a WRITE: the notification the app receives.
        c.add_job(None, w.xfer, Some(w.notif.map(<[u8]>::to_vec)), true);
        Ok(Handled::Done)
    }

    /// An inline WRITE: checks every range against our registrations, then copies the data
    /// in. A range we refuse, or a device copy that fails, is an `Err`; nothing was written
    /// for a refusal.
    fn scatter_inline(&self, segs: &[WireSegment], data: &[u8]) -> Result<(), (Status, String)> {
        let no_copier = self.inline_walk(segs, |i, s, span, copier| {
            // SAFETY: `locate` put the range inside a live registration of ours (device memory
            // of the copier's device when there is one), which the table's read lock keeps
            // registered until the copy is done; the frame buffer does not overlap it.
            unsafe { write_ours(copier, s.addr(), &data[span]) }.map_err(|e| {
                (
                    Status::Backend,
                    format!("segment {i}: writing device memory: {e}"),
                )
            })
        })?;
        match no_copier {
            Some((i, d)) => Err((
                Status::NotSupported,
                format!("segment {i}: device {d} cannot take inline data here"),
            )),
            None => Ok(()),
        }
    }

    /// Walks our ranges `segs`, packed back to back in an inline frame's data, under the
    /// table's read lock (so no registration goes away meanwhile): checks every range first —
    /// a refused one is an `Err`; device memory whose device has no copier stops the walk with
    /// `Ok(Some((range, device)))` before anything moved — then hands `copy` each range's
    /// index, segment, span of the packed data and copier (`None`: host memory).
    fn inline_walk(
        &self,
        segs: &[WireSegment],
        mut copy: impl FnMut(
            usize,
            &WireSegment,
            Range<usize>,
            Option<&Copier>,
        ) -> Result<(), (Status, String)>,
    ) -> Result<Option<(usize, u32)>, (Status, String)> {
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        for (i, s) in segs.iter().enumerate() {
            if let InlineEnd::NoCopier(d) = self.inline_end(&table, i, s)? {
                return Ok(Some((i, d)));
            }
        }
        let mut at = 0;
        for (i, s) in segs.iter().enumerate() {
            let len = s.len() as usize;
            let copier = self.inline_end(&table, i, s)?.copier(i)?;
            copy(i, s, at..at + len, copier.as_deref())?;
            at += len;
        }
        Ok(None)
    }

    /// Checks our range `i` against our registrations (a range we refuse is an `Err`) and says
    /// how an inline copy reaches it.
    fn inline_end(
        &self,
        table: &MemTable,
        i: usize,
        s: &WireSegment,
    ) -> Result<InlineEnd, (Status, String)> {
        let (_, _, device) = locate(table, i, s)?;
        Ok(match device {
            None => InlineEnd::Host,
            Some(d) => self
                .copier(d)
                .map_or(InlineEnd::NoCopier(d), InlineEnd::Device),
        })
    }

    /// Checks announced target ranges against our registrations and leaves their engine
    /// segments in the session's `resolved` list, for the caller to post under a new lock of
    /// the session (only this thread touches that list, so it is still there). A registration
    /// used for the first time on this session is registered on it now.
    fn resolve(&self, c: &Conn, segs: &[WireSegment]) -> Result<(), (Status, String)> {
        // Table, then session: the lock order.
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        // Every range is checked before any is mapped, so a refusal is INVALID_PARAM whatever
        // the session knows.
        let region = |i: usize, s: &WireSegment| locate(&table, i, s).map(|(md, off, _)| (md, off));
        for (i, s) in segs.iter().enumerate() {
            region(i, s)?;
        }
        let mut e = lock(&c.engine);
        e.resolved.clear();
        for (i, s) in segs.iter().enumerate() {
            let (md, offset) = region(i, s)?;
            let mem = match e.mems.get(&md) {
                Some(&m) => m,
                None => {
                    let r = table.local(md).map_err(|_| {
                        (Status::InvalidParam, format!("segment {i}: unknown region"))
                    })?;
                    register_on(&mut e, md, r).map_err(|err| {
                        (
                            Status::Backend,
                            format!("segment {i}: registering region {md:#x} here: {err}"),
                        )
                    })?
                }
            };
            e.resolved.push(ESeg {
                mem,
                offset,
                remote_offset: 0,
                len: s.len(),
            });
        }
        Ok(())
    }

    /// Target side: receives the data of a WRITE we refused into the sink and drops it: one
    /// receive per chunk the initiator's plan cuts (each segment from its start, in chunks of
    /// `chunk_bytes`), all at the sink's start. The chunks, their order and so their channels
    /// are those of the initiator's sends, so the session stays paired. `Err` when the
    /// receives cannot be posted (the conn must close then).
    fn drain(&self, c: &Conn, wire: u64, segs: &[WireSegment]) -> Result<(), Error> {
        let cb = u64::from(self.engine_cfg.chunk_bytes);
        let mut posted = Vec::new();
        {
            let mut e = lock(&c.engine);
            let sink = match &e.sink {
                Some((id, _)) => *id,
                None => {
                    let mut buf = vec![0u8; cb as usize].into_boxed_slice();
                    let session = e.live()?;
                    // SAFETY: the boxed buffer moves into `e.sink`, in the same `Engine` as
                    // the session and declared after it, so its heap bytes are freed only once
                    // the session (and every receive it posted into them) is gone.
                    let id = unsafe {
                        session.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host)
                    }
                    .map_err(Error::Engine)?;
                    e.sink = Some((id, buf));
                    id
                }
            };
            let Engine {
                session, resolved, ..
            } = &mut *e;
            let session = session
                .as_mut()
                .ok_or_else(|| Error::Disconnected("the connection was closed".into()))?;
            resolved.clear();
            for s in segs {
                let mut left = s.len();
                while left > 0 {
                    let len = left.min(cb);
                    resolved.push(ESeg {
                        mem: sink,
                        offset: 0,
                        remote_offset: 0,
                        len,
                    });
                    left -= len;
                    if resolved.len() == PART_SEGMENTS {
                        posted.push(
                            session
                                .post(Direction::Recv, resolved)
                                .map_err(Error::Engine)?,
                        );
                        resolved.clear();
                    }
                }
            }
            if !resolved.is_empty() {
                posted.push(
                    session
                        .post(Direction::Recv, resolved)
                        .map_err(Error::Engine)?,
                );
            }
        }
        for id in posted {
            c.add_job(Some(id), wire, None, false);
        }
        self.drained.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A READ that offered to take its data inline: when the ranges are all our host memory
    /// or device memory with a copier, and no more than `inline_read_bytes`, gathers them
    /// into the conn's inline buffer (under the table's read lock, so no registration goes
    /// away meanwhile) and says so; `Ok(false)`: answer the usual way. A range we refuse is
    /// an `Err` either way.
    fn gather_inline(&self, c: &Conn, segs: &[WireSegment]) -> Result<bool, (Status, String)> {
        let total = segs
            .iter()
            .map(WireSegment::len)
            .fold(0u64, u64::saturating_add);
        if self.inline_read_bytes == 0 || total > self.inline_read_bytes {
            return Ok(false);
        }
        let mut buf = lock(&c.inline_buf);
        buf.clear();
        buf.resize(total as usize, 0);
        let no_copier = self.inline_walk(segs, |i, s, span, copier| {
            // SAFETY: `locate` put the range inside a live registration of ours (device memory
            // of the copier's device when there is one), which the table's read lock keeps
            // registered until the copy is done.
            unsafe { read_ours(copier, s.addr(), &mut buf[span]) }.map_err(|e| {
                (
                    Status::Backend,
                    format!("segment {i}: reading device memory: {e}"),
                )
            })
        })?;
        Ok(no_copier.is_none())
    }

    /// Validates a READ and readies its answer: `Ok(true)` = gathered for a `ReadData`,
    /// `Ok(false)` = resolved for a `ReadAnnounce` and the data comms.
    fn answer_read(&self, c: &Conn, r: &ReadRequest<'_>) -> Result<bool, (Status, String)> {
        if r.inline_ok && self.gather_inline(c, r.segments)? {
            return Ok(true);
        }
        self.resolve(c, r.segments).map(|()| false)
    }

    /// The flight an answer names, if its part is still listed.
    fn answered(&self, c: &Conn, xfer: u64) -> Option<Arc<Mutex<Flight>>> {
        lock(&c.out).parts.get(&xfer).map(|(f, _)| f.clone())
    }

    /// Acts on one control frame. An `Err` closes the conn.
    fn handle(&self, c: &Arc<Conn>, buf: &[u8]) -> Result<Handled, Error> {
        let msg = wire::parse(buf).map_err(|err| Error::Wire {
            what: "control frame",
            err,
        })?;
        match (c.initiator, msg) {
            (false, Message::WriteAnnounce(w)) if w.data.is_some() => {
                self.check_notif(w.notif)?;
                match self.take_inline_write(c, &w) {
                    Ok(h) => return Ok(h),
                    Err((status, why)) => {
                        c.log_repeated(
                            &c.refused_writes,
                            format_args!("refusing inline WRITE {}: {why}", w.xfer),
                        );
                        // Nothing else of it is on the wire: the conn stays usable.
                        c.send_error(status, w.xfer, &why)?;
                    }
                }
            }
            (false, Message::WriteAnnounce(w)) => {
                self.check_notif(w.notif)?;
                if !self.reserve(w.notif) {
                    return Ok(Handled::Held);
                }
                match self.resolve(c, w.segments) {
                    Ok(()) => {
                        let id = c.post_resolved(Direction::Recv)?;
                        // The one allocation serving a WRITE: the notification the app
                        // receives.
                        c.add_job(Some(id), w.xfer, Some(w.notif.map(<[u8]>::to_vec)), true);
                    }
                    Err((status, why)) => {
                        self.unreserve(w.notif);
                        c.log_repeated(
                            &c.refused_writes,
                            format_args!("refusing WRITE {}: {why}", w.xfer),
                        );
                        // Its data is on the wire already: taken and dropped, so the session
                        // stays paired and the conn keeps serving; nothing of it is written.
                        self.drain(c, w.xfer, w.segments)?;
                        c.send_error(status, w.xfer, &why)?;
                    }
                }
            }
            (false, Message::ReadRequest(r)) => match self.answer_read(c, &r) {
                Err((status, why)) => {
                    c.log_repeated(
                        &c.refused_reads,
                        format_args!("refusing READ {}: {why}", r.xfer),
                    );
                    // Nothing was posted on either side: the conn stays usable.
                    c.send_error(status, r.xfer, &why)?;
                }
                Ok(true) => {
                    // One frame answers the READ; nothing is posted on either side.
                    // Counted before the answer can complete the READ at the initiator.
                    self.inline_answers.fetch_add(1, Ordering::Relaxed);
                    let data = lock(&c.inline_buf);
                    c.send(&Message::ReadData(ReadData {
                        xfer: r.xfer,
                        data: &data,
                    }))?;
                }
                Ok(false) => {
                    let mut tx = lock(&c.tx);
                    c.send_on(
                        &mut tx,
                        &Message::ReadAnnounce(ReadAnnounce { xfer: r.xfer }),
                    )?;
                    let id = c.post_resolved(Direction::Send)?;
                    drop(tx);
                    c.add_job(Some(id), r.xfer, None, false);
                }
            },
            (false, Message::Notif(n)) => {
                self.check_notif(Some(n.msg))?;
                // No room: the notification waits on this conn (and so does everything the
                // peer sends after it) until the application takes notifications.
                if self.jobs_full(c) || !self.reserve(Some(n.msg)) {
                    return Ok(Handled::Held);
                }
                // Queued behind the WRITEs that arrived before it (at once when none is still
                // landing). The allocation is the notification the app receives.
                c.add_job(None, 0, Some(Some(n.msg.to_vec())), false);
            }
            (true, Message::Ack(a)) => {
                let f = self
                    .answered(c, a.xfer)
                    .ok_or_else(|| Error::Mismatch(format!("Ack for unknown {}", a.xfer)))?;
                let mut f = lock(&f);
                let k = f.part_of(a.xfer)?;
                if a.status != 0 {
                    // Refusals come as `Error` frames, with the conn kept; a negative Ack is
                    // from a peer that does not follow this protocol.
                    f.fail(
                        Status::from_wire(a.status),
                        format!("peer refused the WRITE ({})", a.status),
                    );
                    return Err(Error::Mismatch(format!(
                        "negative Ack {} for {}: not this wire version's protocol",
                        a.status, a.xfer
                    )));
                }
                f.parts[k].answered = true;
            }
            (true, Message::ReadData(d)) => {
                let f = self
                    .answered(c, d.xfer)
                    .ok_or_else(|| Error::Mismatch(format!("ReadData for unknown {}", d.xfer)))?;
                let mut f = lock(&f);
                let k = f.part_of(d.xfer)?;
                let offered = !f.inline_dst.is_empty();
                let want = f.inline_dst.iter().map(|r| r.1).sum::<u64>();
                if !offered || want != d.data.len() as u64 || f.parts[k].answered {
                    let why = format!(
                        "ReadData of {} bytes for {} {}",
                        d.data.len(),
                        if offered {
                            "a READ of"
                        } else {
                            "a READ that did not offer inline, of"
                        },
                        want
                    );
                    f.fail(Status::Mismatch, why.clone());
                    return Err(Error::Mismatch(why));
                }
                f.parts[k].answered = true;
                f.parts[k].moved = true;
                // A released READ's memory is no longer ours to write.
                if !f.released {
                    let mut at = 0;
                    let mut failed = None;
                    for (addr, len, copier) in &f.inline_dst {
                        let src = &d.data[at..at + *len as usize];
                        at += *len as usize;
                        // SAFETY: `addr..addr+len` is a range of one of our registrations
                        // (device memory of the copier's device when there is one; checked at
                        // prepare, still registered at post: NIXL's contract keeps it so while
                        // the transfer is live); the frame buffer does not overlap it.
                        if let Err(e) = unsafe { write_ours(copier.as_deref(), *addr, src) } {
                            failed = Some(format!("writing device memory: {e}"));
                            break;
                        }
                    }
                    if let Some(why) = failed {
                        // The frame was whole: the conn stays usable, only this READ failed.
                        crate::log!(Warn, "READ {}: {why}", d.xfer);
                        f.fail(Status::Backend, why);
                    }
                }
            }
            (true, Message::ReadAnnounce(r)) => {
                let f = self.answered(c, r.xfer).ok_or_else(|| {
                    Error::Mismatch(format!("ReadAnnounce for unknown {}", r.xfer))
                })?;
                let mut f = lock(&f);
                // A stale one cannot be paired (the flight's segments are the next post's):
                // the conn closes.
                let k = f.part_of(r.xfer)?;
                if f.parts[k].answered {
                    return Err(Error::Mismatch(format!("second answer to {}", r.xfer)));
                }
                // Even a released READ must post its receives: the peer's data is coming and
                // later transfers pair by order.
                let range = f.ranges[k].clone();
                let mut e = lock(&c.engine);
                let id = e
                    .live()?
                    .post(Direction::Recv, &f.segs[range])
                    .map_err(Error::Engine)?;
                f.parts[k].answered = true;
                if f.released {
                    e.release(id);
                    f.parts[k].moved = true;
                } else {
                    f.parts[k].engine = Some(id);
                }
            }
            (true, Message::Error(m)) => {
                if let Some(f) = self.answered(c, m.xfer) {
                    let mut f = lock(&f);
                    let k = f.part_of(m.xfer)?;
                    if f.parts[k].answered {
                        return Err(Error::Mismatch(format!("second answer to {}", m.xfer)));
                    }
                    f.parts[k].answered = true;
                    // A refused READ moved nothing; a refused WRITE's sends still finish (the
                    // target takes and drops their data).
                    if f.op == Op::Read {
                        f.parts[k].moved = true;
                    }
                    let status = Status::from_wire(-(m.code.min(i32::MAX as u32) as i32));
                    let why = if f.parts.len() > 1 {
                        format!("part {k} of {}: {}", f.parts.len(), m.text)
                    } else {
                        m.text.to_owned()
                    };
                    f.fail(status, why);
                } else {
                    // Not about a transfer in flight: an answer to a released one.
                    c.log_repeated(&c.refused_notifs, format_args!("error: {}", m.text));
                }
            }
            (true, Message::Keepalive(_)) => {}
            (_, m) => {
                return Err(Error::Mismatch(format!(
                    "unexpected {:?} on a {} stream",
                    m.kind(),
                    if c.initiator { "initiator" } else { "target" }
                )))
            }
        }
        Ok(Handled::Done)
    }
}

/// The backend thread: accepts peers, services every conn, backs off when idle.
fn run(shared: &Arc<Shared>, listener: &TcpListener) {
    // SAFETY: PR_SET_TIMERSLACK takes a value and touches no memory; on failure the default
    // slack stays (naps end up to 50 µs late).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
    let mut idle = 0u32;
    // Reused every pass, so a busy backend thread does not allocate per pass.
    let mut conns: Vec<Arc<Conn>> = Vec::new();
    // Per conn of `conns`: left to `checkXfer` this pass.
    let mut skipped: Vec<bool> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let mut moved = false;
        match listener.accept() {
            Ok((s, _)) => {
                moved = true;
                let sh = shared.clone();
                // The handshake blocks until the peer's engine connects (bounded by the
                // timeout), so it must not stall the other conns.
                let spawned = std::thread::Builder::new()
                    .name("tcpx-nixl-accept".into())
                    .spawn(move || {
                        if let Err(e) = sh.accept(s) {
                            crate::log!(Warn, "accepting a peer: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    crate::log!(Warn, "accepting a peer: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => crate::log!(Warn, "control accept: {e}"),
        }
        conns.clear();
        conns.extend(lock(&shared.conns).iter().cloned());
        skipped.clear();
        let now = shared.now_ns();
        let mut holding = false;
        // The soonest a conn left to `checkXfer` comes back to this thread.
        let mut recheck: Option<Duration> = None;
        for c in &conns {
            // An initiator conn the application is polling: `checkXfer` reads its answers
            // and drives its session, so this thread neither services it nor wakes for it;
            // once the application stops checking it, this thread takes it back.
            if let Some(left) = shared.left_to_checks(c, now) {
                skipped.push(true);
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
                continue;
            }
            skipped.push(false);
            moved |= shared.service(c);
            holding |= lock(&c.rx).held;
        }
        if conns.iter().any(|c| c.dead().is_some()) {
            for c in conns.iter().filter(|c| c.dead().is_some()) {
                shared.release_reservations(c);
                shared.close(c);
            }
            lock(&shared.conns).retain(|c| c.dead().is_none());
            lock(&shared.outgoing).retain(|_, c| c.dead().is_none());
        }
        if moved {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            // Spin briefly for latency. Then, with transfers in flight either way (engine
            // progress is invisible to us), nap briefly; with none, sleep on the control
            // sockets so an idle agent costs no CPU. Either way an announce or answer wakes
            // the thread at once. A conn holding a frame back is retried (and keeps its peer
            // informed) every millisecond; its socket is left out of the poll, as it is
            // readable. So are conns left to `checkXfer`, until they come back.
            if idle < 64 {
                std::thread::yield_now();
            } else {
                let busy = conns.iter().zip(&skipped).any(|(c, &s)| {
                    !s && (!lock(&c.jobs).is_empty()
                        || !lock(&c.out).parts.is_empty()
                        || lock(&c.tx).pending())
                });
                let limit = if busy {
                    NAP
                } else if holding {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(10)
                };
                let limit = recheck.map_or(limit, |r| r.min(limit));
                wait_readable(listener, &conns, &skipped, &mut fds, limit);
            }
        }
    }
}

/// Blocks until the listener or a control stream is readable, or `limit` passes. Streams
/// holding a frame back (it waits for room; they stay readable) and those `skip` marks are
/// left out.
fn wait_readable(
    listener: &TcpListener,
    conns: &[Arc<Conn>],
    skip: &[bool],
    fds: &mut Vec<libc::pollfd>,
    limit: Duration,
) {
    use std::os::fd::AsRawFd;
    fds.clear();
    fds.push(libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    for (c, _) in conns
        .iter()
        .zip(skip)
        .filter(|(c, &s)| !s && c.dead().is_none() && !lock(&c.rx).held)
    {
        fds.push(libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ts = libc::timespec {
        tv_sec: limit.as_secs() as libc::time_t,
        tv_nsec: limit.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` holds valid pollfd entries for descriptors that stay open during the
    // call (the listener and the conns are borrowed); `ts` outlives it; no signal mask.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notif_queue_is_bounded_in_bytes_and_fifo() {
        let per = 100 + NotifQueue::ENTRY_OVERHEAD;
        let mut q = NotifQueue::new(3 * per);
        let from: Arc<str> = Arc::from("p");
        for i in 0..3u8 {
            q.push(from.clone(), vec![i; 100]).unwrap();
        }
        assert_eq!(q.held(), 3 * per);
        let e = q.push(from.clone(), vec![9; 1]).unwrap_err();
        assert!(
            matches!(e, Error::NotifQueueFull { held, limit } if held == 3 * per && limit == 3 * per)
        );
        assert_eq!(
            (q.len(), q.held()),
            (3, 3 * per),
            "a refused push changes nothing"
        );
        assert_eq!(q.front().unwrap().1, vec![0; 100]);
        q.pop_front();
        assert_eq!(q.held(), 2 * per);
        // The room one taken entry leaves fits another of its size, not a larger one.
        assert!(q.has_room(101).is_err());
        q.push(from.clone(), vec![3; 100]).unwrap();
        // The agent's own notifications go in whatever the bound.
        q.push_own(from.clone(), vec![4; 100]);
        assert_eq!(q.held(), 4 * per);
        let order: Vec<u8> = std::iter::from_fn(|| {
            let b = q.front().map(|(_, m)| m[0]);
            q.pop_front();
            b
        })
        .collect();
        assert_eq!(order, [1, 2, 3, 4]);
        assert!(q.is_empty() && q.held() == 0);
        q.pop_front();
        assert_eq!(q.held(), 0, "popping an empty queue is harmless");
    }

    #[test]
    fn error_text_is_cut_at_a_character_boundary() {
        assert_eq!(error_text("short"), "short");
        let ascii = "x".repeat(wire::MAX_ERROR_TEXT + 10);
        assert_eq!(error_text(&ascii).len(), wire::MAX_ERROR_TEXT);
        // A two-byte character straddling the limit is left out whole.
        let straddle = format!("{}é", "x".repeat(wire::MAX_ERROR_TEXT - 1));
        assert_eq!(error_text(&straddle), &straddle[..wire::MAX_ERROR_TEXT - 1]);
    }

    #[test]
    fn refusal_logging_is_bounded() {
        let lines = |n: u64| (1..=n).filter(|&k| log_refusal(k)).count();
        assert_eq!(lines(4), 4, "the first refusals are all logged");
        assert_eq!(lines(10_000), 15);
        assert_eq!(lines(1 << 20), 4 + 18, "logarithmic in the count");
        assert!(log_refusal(1024) && !log_refusal(1025));
    }

    #[test]
    fn acks_wait_only_for_earlier_writes_still_landing() {
        // (arrival order, still moving, is a WRITE)
        let read_moving = (0, true, false);
        let write_landing = (1, true, true);
        let write_done = |seq| (seq, false, true);
        // A READ still sending holds back nothing.
        let f = first_landing([read_moving, write_done(2)].into_iter());
        assert_eq!(f, None);
        assert!(may_finish(write_done(2), f));
        // A WRITE still landing holds back the WRITEs after it, not those before it.
        let f =
            first_landing([read_moving, write_landing, write_done(2), write_done(0)].into_iter());
        assert_eq!(f, Some(1));
        assert!(!may_finish(write_done(2), f));
        assert!(may_finish(write_done(0), f));
        assert!(
            !may_finish(write_landing, f),
            "a job still moving never finishes"
        );
        // The earliest of several.
        assert_eq!(
            first_landing([(7, true, true), (4, true, true), (9, true, true)].into_iter()),
            Some(4)
        );
    }

    #[test]
    fn handshake_io_failures_from_a_vanished_peer_are_disconnects() {
        use std::io::{Error as IoError, ErrorKind};
        for kind in [
            ErrorKind::WouldBlock,
            ErrorKind::TimedOut,
            ErrorKind::UnexpectedEof,
            ErrorKind::ConnectionReset,
        ] {
            let e = peer_gone(Error::Io {
                what: "control handshake read",
                err: IoError::from(kind),
            });
            assert_eq!(e.status(), Status::RemoteDisconnect, "{kind:?}");
        }
        let other = peer_gone(Error::Io {
            what: "control handshake read",
            err: IoError::from(ErrorKind::PermissionDenied),
        });
        assert_eq!(other.status(), Status::Backend);
    }

    #[test]
    fn the_cost_model_learns_latency_and_throughput() {
        let m = CostModel::new(Duration::from_micros(100), 1_000_000_000);
        let (small, margin) = m.estimate(0);
        assert_eq!(small, Duration::from_micros(100));
        assert!(margin > Duration::ZERO && margin < small);
        let (big, _) = m.estimate(1 << 30);
        assert!(big > Duration::from_millis(1000), "{big:?}");
        // Faster small transfers and a slower link pull the estimates their way.
        for _ in 0..64 {
            m.observe(4096, Duration::from_micros(20));
            m.observe(64 << 20, Duration::from_millis(128));
        }
        let (small2, _) = m.estimate(0);
        assert!(small2 < Duration::from_micros(30), "{small2:?}");
        let (big2, _) = m.estimate(1 << 30);
        assert!(big2 > Duration::from_millis(1800), "{big2:?}");
        // Mid-sized transfers teach nothing (neither a latency nor a rate alone).
        let before = m.estimate(1 << 20);
        m.observe(256 << 10, Duration::from_secs(5));
        assert_eq!(m.estimate(1 << 20), before);
    }

    #[test]
    fn keepalives_come_well_inside_the_timeout() {
        assert_eq!(keepalive_every(Duration::from_secs(10)), KEEPALIVE_MAX);
        assert_eq!(
            keepalive_every(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(
            keepalive_every(Duration::from_millis(1)),
            Duration::from_millis(1)
        );
    }
}
