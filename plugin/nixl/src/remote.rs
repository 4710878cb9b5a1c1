//! Transfers and notifications between different agents over the tcpx engine (DESIGN.md §6).
//!
//! Each agent opens one control stream + engine `Session` per peer it initiates transfers to
//! (a [`Conn`] with `initiator == true`) and serves the ones peers open to it. One backend
//! thread per agent accepts control streams, reads every stream's frames and drives every
//! session; the initiator side also progresses from `checkXfer`.
//!
//! Sender announces: on a conn, the initiator's sends (WRITE data) are posted in the order of
//! its `WriteAnnounce`s, the target's sends (READ data) in the order of its `ReadAnnounce`s,
//! and each side posts its receives strictly in the order it reads those announces. A failure
//! that could break that pairing (a refused WRITE whose data is already on the wire, a
//! receive that cannot be posted) closes the conn; the next use reconnects.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpx::engine::{
    Config as EngineConfig, Copier, Direction, MemId, Memory, Progress, Segment as ESeg, Session,
    XferId,
};
use tcpx_core::wire::{
    self, Ack, ErrorMsg, Hello, MemKind, Message, Notif, ReadAnnounce, ReadData, ReadRequest,
    Segment as WireSegment, WriteAnnounce, HEADER_LEN,
};

use crate::config::Config;
use crate::error::{Error, Status};
use crate::registry::{MdId, MemTable, Region};
use crate::xfer::{Far, Op, Segment};

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
/// so that a peer cannot grow it without limit while the application does not take them. The
/// sender is a shared name, so queueing a notification allocates only its message.
#[derive(Debug)]
pub struct NotifQueue {
    q: VecDeque<(Arc<str>, Vec<u8>)>,
    held: u64,
    limit: u64,
}

impl NotifQueue {
    /// What one entry counts against the bound besides its message: the queue slot and the
    /// message's allocation header, rounded up.
    pub const ENTRY_OVERHEAD: u64 = 64;

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

/// Initial capacity of a conn's frame buffers (they grow to the largest frame, at most
/// `wire::MAX_FRAME`).
const FRAME_BUF: usize = 4096;
/// Initial capacity of a conn's transfer tables (in flight at once; they grow past it).
const TABLE_CAP: usize = 64;
/// Most target jobs on one conn: engine transfers are bounded by the engine, so this bounds
/// inline WRITEs waiting for earlier WRITEs to land (a peer cannot grow the list without
/// limit; past it an inline WRITE is refused before anything is written).
const MAX_JOBS: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert/remove/assignment: state stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The engine side of a conn: the session and which engine region each registration is.
struct Engine {
    session: Session,
    mems: HashMap<MdId, MemId>,
    /// Target side (backend thread only): the engine segments of the announce being served,
    /// filled by `resolve` and posted from here. Reused, so serving an announce allocates
    /// nothing once it has grown to the largest one.
    resolved: Vec<ESeg>,
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
    /// `Some` for a WRITE (Ack + notif due when it lands), `None` for READ data we send.
    write: Option<Option<Vec<u8>>>,
    /// The notif's room in the queue is already reserved (inline WRITEs reserve it on
    /// arrival, before their data is written).
    reserved: bool,
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

/// The write half of a control stream.
struct Writer {
    /// A clone of the conn's stream.
    stream: TcpStream,
    /// Every frame is encoded here (it grows to the largest frame sent and is reused), so
    /// sending an announce, Ack or Notif allocates nothing in steady state.
    buf: Vec<u8>,
}

/// One control stream and its data session with one peer.
struct Conn {
    /// The peer's agent name, shared with the notifications it sends us.
    peer: Arc<str>,
    initiator: bool,
    /// Non-blocking; read under `rbuf`'s lock, by the backend thread and (for an initiator
    /// conn) by `check`.
    stream: TcpStream,
    /// Writer. Held across "post sends + write their announce" so the two orders cannot
    /// diverge.
    tx: Mutex<Writer>,
    engine: Mutex<Engine>,
    rbuf: Mutex<Vec<u8>>,
    dead: Mutex<Option<String>>,
    /// Initiator: flights waiting for their Ack / ReadAnnounce / ReadData / ErrorMsg, by wire
    /// id.
    pending: Mutex<HashMap<u64, Arc<Mutex<Flight>>>>,
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
    /// Inline WRITEs from this peer refused so far (rate-limits their log lines).
    refused_writes: AtomicU64,
    /// Log rate limiting of notification refusals: on a target conn those it sent the peer,
    /// on an initiator conn the errors the peer sent about no transfer in flight.
    refused_notifs: AtomicU64,
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

    fn kill(&self, why: &str) {
        let mut d = lock(&self.dead);
        if d.is_none() {
            crate::log!("peer {:?}: closing connection: {why}", self.peer);
            *d = Some(why.to_owned());
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }

    /// Writes one whole frame; bounded by the timeout even on a non-blocking socket.
    fn send_on(&self, tx: &mut Writer, msg: &Message<'_>) -> Result<(), Error> {
        if let Some(why) = self.dead() {
            return Err(Error::Disconnected(why));
        }
        let Writer { stream, buf } = tx;
        encode(msg, buf)?;
        let deadline = Instant::now() + self.timeout;
        let mut off = 0;
        while off < buf.len() {
            match stream.write(&buf[off..]) {
                Ok(0) => break,
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(e) => {
                    let why = format!("control write: {e}");
                    self.kill(&why);
                    return Err(Error::Disconnected(why));
                }
            }
        }
        if off < buf.len() {
            self.kill("control write: stream closed");
            return Err(Error::Disconnected("control write: stream closed".into()));
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
        session.post(dir, resolved).map_err(Error::Engine)
    }
}

fn frame(msg: &Message<'_>) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    encode(msg, &mut buf)?;
    Ok(buf)
}

/// Encodes one frame into `buf` (replacing its contents); allocates only if `buf` is too
/// small.
fn encode(msg: &Message<'_>, buf: &mut Vec<u8>) -> Result<(), Error> {
    buf.clear();
    buf.resize(msg.buffer_len(), 0);
    let n = msg.emit(buf).map_err(|err| Error::Wire {
        what: "control message",
        err,
    })?;
    buf.truncate(n);
    Ok(())
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
    let len = wire::peek_frame(&buf).map_err(wire)?.unwrap_or(HEADER_LEN);
    buf.resize(len, 0);
    s.read_exact(&mut buf[HEADER_LEN..]).map_err(io)?;
    Ok(buf)
}

/// An initiator-side transfer once posted. One per prepared request, created by its first
/// post and reset in place by every repost, so a repost allocates nothing.
struct Flight {
    op: Op,
    /// Wire id of the current post. Control messages name transfers by it; one naming an
    /// earlier post of this request (possible only on a conn that died meanwhile) is stale.
    wire: u64,
    conn: Arc<Conn>,
    /// Local engine segments (READ: posted when the ReadAnnounce arrives); capacity for every
    /// segment of the request, refilled in place by each post.
    segs: Vec<ESeg>,
    engine: Option<XferId>,
    /// READ that offered to take its data inline (empty otherwise): where the data goes (our
    /// addresses and lengths, request order, and the copier of device memory; capacity kept
    /// across reposts).
    inline_dst: Vec<(u64, u64, Option<Arc<Copier>>)>,
    /// WRITE: Ack 0 received. READ: unused.
    acked: bool,
    /// The data part completed (the engine transfer, or a READ's inline `ReadData` copied).
    moved: bool,
    done: bool,
    released: bool,
    failed: Option<(Status, String)>,
    /// Last observed progress (bytes, engine posted, moved, acked) and when it changed: a
    /// peer that stops answering without closing fails the transfer after the timeout.
    seen: (u64, bool, bool, bool),
    since: Instant,
}

/// Refuses a control message for an earlier post of a reused flight (see [`Flight::wire`]).
fn stale(f: &Flight, xfer: u64) -> Result<(), Error> {
    if f.wire == xfer {
        Ok(())
    } else {
        Err(Error::Mismatch(format!(
            "message for transfer {xfer}, which was reposted as {}",
            f.wire
        )))
    }
}

/// A prepared transfer to another agent. Everything a post needs is built here once, so
/// reposts (NIXL's steady state) allocate nothing.
#[derive(Debug)]
pub struct RemoteXfer {
    op: Op,
    segments: Vec<Segment>,
    /// `segments` as the target names them (region id, key, address, length): fixed at
    /// prepare, each announce or request is encoded from it.
    wire: Vec<WireSegment>,
    /// READ: the notification to send once the data is in, when `notify` (the buffer is
    /// reused by every post).
    notif: Vec<u8>,
    notify: bool,
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

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("op", &self.op)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

struct Shared {
    agent: String,
    engine_cfg: EngineConfig,
    timeout: Duration,
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
    /// Per CUDA device with registered memory: what inline transfers copy its bytes with
    /// (`None`: the device could not be opened; its memory travels through the engine).
    copiers: Mutex<HashMap<u32, Option<Arc<Copier>>>>,
}

impl Shared {
    /// A dead conn's inline WRITEs that were still waiting give back the queue room their
    /// notifs reserved (they will never be delivered), so a peer that leaves cannot shrink
    /// the queue for everyone.
    fn release_reservations(&self, c: &Conn) {
        for j in lock(&c.jobs).iter_mut().filter(|j| j.reserved) {
            if let Some(Some(msg)) = &j.write {
                lock(&self.notifs).unreserve(msg.len());
            }
            j.reserved = false;
            j.write = None;
        }
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

impl RemotePath {
    /// Starts the backend thread, which accepts peers on `listener`.
    pub fn new(
        agent: &str,
        config: &Config,
        listener: TcpListener,
        mem: Mem,
        notifs: Notifs,
    ) -> Result<Self, Error> {
        let engine_cfg = EngineConfig {
            plugin: config.plugin_path.clone(),
            channels: config.channels.into(),
            chunk_bytes: config.chunk_bytes,
            window: config.window.into(),
            timeout: config.timeout,
            // Every session of the agent, whichever thread opens it, is bound to the agent's
            // GPU from its handshake on.
            gpu: config.gpu.map(|g| g as i32),
            ..EngineConfig::default()
        };
        engine_cfg.validate().map_err(Error::Engine)?;
        listener.set_nonblocking(true).map_err(|err| Error::Io {
            what: "control listener",
            err,
        })?;
        let shared = Arc::new(Shared {
            agent: agent.to_owned(),
            engine_cfg,
            timeout: config.timeout,
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
            copiers: Mutex::new(HashMap::new()),
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
                c.kill("disconnect");
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
                crate::log!("device {device}: no inline transfers: {e}");
                None
            }
        };
        lock(&self.shared.copiers).entry(device).or_insert(opened);
    }

    /// A new local registration: registers it on every live session.
    pub fn register(&self, md: MdId, region: &Region) {
        for c in lock(&self.shared.conns).iter() {
            register_on(&mut lock(&c.engine), md, region);
        }
    }

    /// A registration going away: releases it on every session, once the transfers still
    /// using it there (released ones included) have finished.
    pub fn deregister(&self, md: MdId) {
        for c in lock(&self.shared.conns).iter() {
            let mut e = lock(&c.engine);
            let Some(id) = e.mems.remove(&md) else {
                continue;
            };
            // A released transfer finishes into memory (the network cannot recall it): drive
            // the session until nothing uses the region any more, bounded by the timeout, so
            // no byte lands after the application has its memory back.
            let deadline = Instant::now() + self.shared.timeout;
            while e.session.in_use(id).unwrap_or(false) && Instant::now() < deadline {
                if e.session.progress().is_err() {
                    break;
                }
                std::thread::yield_now();
            }
            if let Err(err) = e.session.deregister(id) {
                crate::log!("peer {:?}: deregistering {md:#x}: {err}", c.peer);
            }
        }
    }

    /// `prepXfer` towards `agent`, with segments already validated.
    pub fn prepare(
        &self,
        op: Op,
        _agent: &str,
        _peer: &PeerInfo,
        segments: &[Segment],
    ) -> Result<RemoteXfer, Error> {
        if segments.len() > self.shared.engine_cfg.max_segments {
            return Err(Error::invalid(
                crate::error::Arg::Descs,
                format!(
                    "{} descriptors, at most {}",
                    segments.len(),
                    self.shared.engine_cfg.max_segments
                ),
            ));
        }
        let wire = segments
            .iter()
            .map(|s| match s.far {
                Far::Peer { token, addr } => WireSegment::new(token.region, token.key, addr, s.len),
                Far::Own { addr, .. } => WireSegment::new(0, 0, addr, s.len),
            })
            .collect();
        let total = segments
            .iter()
            .map(|s| s.len)
            .fold(0u64, u64::saturating_add);
        let limit = match op {
            Op::Read => self.shared.inline_read_bytes,
            Op::Write => self.shared.inline_write_bytes,
        };
        // A small transfer goes inline when every local segment is host memory or device
        // memory with a copier: a READ offers to take its data in the answer, a WRITE puts it
        // in the announce.
        let inline = if limit > 0 && total <= limit {
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
            segments: segments.to_vec(),
            wire,
            notif: Vec::new(),
            notify: false,
            inline,
            inline_data: Vec::new(),
            flight: None,
            posted: false,
        })
    }

    /// `postXfer` of a prepared transfer; `notif` is delivered to the peer on completion.
    ///
    /// A conn can die between being picked and being written to (the peer closed it right
    /// after refusing a WRITE, say). Nothing of this post reached the peer then — a dead
    /// conn's peer discards everything — so the post is made once more on a fresh conn.
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
            if x.posted && !f.done && f.failed.is_none() {
                return Err(Error::RepostActive);
            }
        }
        x.posted = false;
        x.notify = false;
        let conn = self.shared.outgoing(agent, peer)?;
        let wire_id = self.shared.next_wire.fetch_add(1, Ordering::Relaxed);
        let flight = match &x.flight {
            Some(fl) => {
                // The previous post is over (done, failed, or never sent): reset the flight
                // for this one. An engine transfer the previous post left behind (a failed
                // one) is abandoned as `releaseReqH` does.
                let (old_conn, old_wire) = {
                    let mut f = lock(fl);
                    if let Some(id) = f.engine.take() {
                        let _ = lock(&f.conn.engine).session.release(id);
                    }
                    f.acked = false;
                    f.moved = false;
                    f.done = false;
                    f.failed = None;
                    f.seen = (0, false, false, false);
                    f.since = Instant::now();
                    (
                        std::mem::replace(&mut f.conn, conn.clone()),
                        std::mem::replace(&mut f.wire, wire_id),
                    )
                };
                // A previous post can still be listed only if it failed waiting for its
                // answer, which means its conn died: drop the entry (the conn is never
                // serviced again). Not under the flight's lock: the backend thread takes a
                // conn's table, then a flight. Should that thread already hold the entry, the
                // flight's new wire id makes it refuse the stale answer.
                lock(&old_conn.pending).remove(&old_wire);
                fl.clone()
            }
            None => {
                let fl = Arc::new(Mutex::new(Flight {
                    op: x.op,
                    wire: wire_id,
                    conn: conn.clone(),
                    segs: Vec::with_capacity(x.segments.len()),
                    engine: None,
                    inline_dst: Vec::with_capacity(x.segments.len()),
                    acked: false,
                    moved: false,
                    done: false,
                    released: false,
                    failed: None,
                    seen: (0, false, false, false),
                    since: Instant::now(),
                }));
                x.flight = Some(fl.clone());
                fl
            }
        };
        {
            // Where an inline READ's data goes, and the conn's engine regions of our segments
            // (this conn may be new since the last post). Lock order: flight, then session.
            let mut f = lock(&flight);
            f.inline_dst.clear();
            if let (Some(copiers), Op::Read) = (&x.inline, x.op) {
                f.inline_dst.extend(
                    x.segments
                        .iter()
                        .zip(copiers)
                        .map(|(s, c)| (s.local, s.len, c.clone())),
                );
            }
            f.segs.clear();
            let e = lock(&conn.engine);
            for s in &x.segments {
                let mem = *e.mems.get(&s.md).ok_or_else(|| {
                    Error::invalid(crate::error::Arg::Metadata, "registration is gone")
                })?;
                f.segs.push(ESeg {
                    mem,
                    offset: s.offset,
                    remote_offset: 0,
                    len: s.len,
                });
            }
        }
        if let (Some(copiers), Op::Write) = (&x.inline, x.op) {
            gather_local(&x.segments, copiers, &mut x.inline_data)?;
        }
        let mut tx = lock(&conn.tx);
        lock(&conn.pending).insert(wire_id, flight.clone());
        let sent = match x.op {
            Op::Write if x.inline.is_some() => {
                // The data is in the announce: nothing for the data session.
                let mut f = lock(&flight);
                f.engine = None;
                f.moved = true;
                drop(f);
                conn.send_on(
                    &mut tx,
                    &Message::WriteAnnounce(WriteAnnounce {
                        xfer: wire_id,
                        segments: &x.wire,
                        notif,
                        data: Some(&x.inline_data),
                    }),
                )
            }
            Op::Write => {
                let mut f = lock(&flight);
                let posted = lock(&conn.engine)
                    .session
                    .post(Direction::Send, &f.segs)
                    .map_err(Error::Engine);
                match posted {
                    Ok(id) => {
                        f.engine = Some(id);
                        drop(f);
                        conn.send_on(
                            &mut tx,
                            &Message::WriteAnnounce(WriteAnnounce {
                                xfer: wire_id,
                                segments: &x.wire,
                                notif,
                                data: None,
                            }),
                        )
                    }
                    Err(e) => Err(e),
                }
            }
            Op::Read => {
                if let Some(msg) = notif {
                    x.notif.clear();
                    x.notif.extend_from_slice(msg);
                    x.notify = true;
                }
                conn.send_on(
                    &mut tx,
                    &Message::ReadRequest(ReadRequest {
                        xfer: wire_id,
                        segments: &x.wire,
                        inline_ok: x.inline.is_some(),
                    }),
                )
            }
        };
        drop(tx);
        if let Err(e) = sent {
            lock(&conn.pending).remove(&wire_id);
            return Err(e);
        }
        x.posted = true;
        if x.op == Op::Write && x.inline.is_none() {
            // Put the data on the wire now rather than at the first `checkXfer`. A session
            // error surfaces there (this post stands; the conn is then dead).
            let _ = lock(&conn.engine).session.progress();
        }
        Ok(Status::InProgress)
    }

    /// `checkXfer` of a posted transfer.
    pub fn check(&self, x: &mut RemoteXfer) -> Result<Status, Error> {
        let (Some(fl), true) = (&x.flight, x.posted) else {
            return Err(Error::NotPosted);
        };
        // Read the peer's answers (Ack, ReadAnnounce, ReadData, Error) and drive the session on this
        // thread as well: leaving them to the backend thread would put a thread hand-off into
        // every transfer's latency. An initiator conn carries nothing else, and everything
        // `service` touches is behind the conn's locks; no flight may be held here (answers
        // take a conn's table, then a flight).
        let conn = {
            let f = lock(fl);
            (!f.done && f.failed.is_none()).then(|| f.conn.clone())
        };
        if let Some(conn) = conn.filter(|c| c.initiator) {
            self.shared.service(&conn);
        }
        let mut f = lock(fl);
        if let Some((status, reason)) = &f.failed {
            return Err(Error::Remote {
                status: *status,
                reason: reason.clone(),
            });
        }
        if f.done {
            return Ok(Status::Success);
        }
        if let Some(why) = f.conn.dead() {
            f.failed = Some((Status::RemoteDisconnect, why.clone()));
            return Err(Error::Disconnected(why));
        }
        let mut bytes = f.seen.0;
        if let Some(id) = f.engine {
            let conn = f.conn.clone();
            let mut e = lock(&conn.engine);
            match e.session.poll(id) {
                Ok(Progress::Done { bytes: b }) => {
                    let _ = e.session.release(id);
                    f.engine = None;
                    f.moved = true;
                    bytes = b;
                }
                Ok(Progress::Pending { bytes_done, .. }) => bytes = bytes_done,
                Err(err) => {
                    drop(e);
                    let why = format!("data session: {err}");
                    conn.kill(&why);
                    f.failed = Some((Status::RemoteDisconnect, why.clone()));
                    return Err(Error::Disconnected(why));
                }
            }
        }
        let finished = match f.op {
            Op::Write => f.moved && f.acked,
            Op::Read => f.moved,
        };
        if !finished {
            let seen = (bytes, f.engine.is_some(), f.moved, f.acked);
            if seen != f.seen {
                f.seen = seen;
                f.since = Instant::now();
            } else if f.since.elapsed() > f.conn.timeout {
                let why = format!("no progress from the peer for {:?}", f.conn.timeout);
                // Where the two sides stand is unknown now: the conn cannot be reused.
                f.conn.kill(&why);
                f.failed = Some((Status::RemoteDisconnect, why.clone()));
                return Err(Error::Disconnected(why));
            }
            return Ok(Status::InProgress);
        }
        f.done = true;
        let conn = f.conn.clone();
        // Never write to the stream with the flight locked (post holds tx, then the flight).
        drop(f);
        if x.notify {
            conn.send(&Message::Notif(Notif { msg: &x.notif }))?;
        }
        Ok(Status::Success)
    }

    /// `releaseReqH`: abandons an in-flight transfer without blocking.
    pub fn abort(&self, x: RemoteXfer) {
        if let Some(fl) = x.flight {
            let mut f = lock(&fl);
            f.released = true;
            if let Some(id) = f.engine.take() {
                let conn = f.conn.clone();
                let _ = lock(&conn.engine).session.release(id);
            }
        }
    }

    /// READs this agent answered inline so far (tests: which path a READ took).
    pub(crate) fn inline_answers(&self) -> u64 {
        self.shared.inline_answers.load(Ordering::Relaxed)
    }

    /// The copier of CUDA device `device`, if its memory was registered and it could be opened.
    pub(crate) fn copier(&self, device: u32) -> Option<Arc<Copier>> {
        self.shared.copier(device)
    }

    /// Inline WRITEs this agent took so far (tests: which path a WRITE took).
    pub(crate) fn inline_writes(&self) -> u64 {
        self.shared.inline_writes.load(Ordering::Relaxed)
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
        conn.send(&Message::Notif(Notif { msg }))
    }
}

impl Drop for RemotePath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some((handle, done)) = lock(&self.thread).take() {
            // The loop checks `stop` every pass; a pass is bounded by the control write
            // timeout, so waiting that long (plus slack) is enough. Past it, detach.
            match done.recv_timeout(self.shared.timeout + Duration::from_secs(1)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = handle.join();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    crate::log!("backend thread did not stop in time; detaching it");
                }
            }
        }
        lock(&self.shared.outgoing).clear();
        for c in lock(&self.shared.conns).drain(..) {
            c.kill("agent destroyed");
        }
    }
}

/// Registers one local region on a session.
fn register_on(e: &mut Engine, md: MdId, region: &Region) {
    if e.mems.contains_key(&md) {
        return;
    }
    let Ok(len) = usize::try_from(region.span.len) else {
        return;
    };
    let memory = match region.mem {
        MemKind::Dram => Memory::Host,
        MemKind::Vram => Memory::Cuda {
            device: region.device as i32,
        },
    };
    // SAFETY: NIXL keeps registered memory allocated until `deregisterMem`, which removes it
    // from every session (RemotePath::deregister) before returning.
    let r = unsafe {
        e.session
            .register(region.span.base as usize as *mut _, len, memory)
    };
    match r {
        Ok(id) => {
            e.mems.insert(md, id);
        }
        Err(err) => crate::log!("registering {md:#x} on a peer session: {err}"),
    }
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
        self.adopt(conn.clone());
        let connecting = lock(&self.connecting);
        if !connecting.get(agent).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            // `disconnect` ran during the handshake: the peer may be loaded again with other
            // connection info by now, so this conn must not serve it.
            drop(connecting);
            conn.kill("disconnected during the handshake");
            return Err(Error::Disconnected(format!(
                "{agent:?} was disconnected during the handshake"
            )));
        }
        lock(&self.outgoing).insert(agent.to_owned(), conn.clone());
        Ok(conn)
    }

    /// Initiator handshake: Hello + our ListenHandles, their ListenHandles, engine connect.
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
        let session = l.connect(&theirs).map_err(Error::Engine)?;
        self.conn(agent.into(), true, s, session)
    }

    fn conn(
        &self,
        peer: Arc<str>,
        initiator: bool,
        s: TcpStream,
        session: Session,
    ) -> Result<Arc<Conn>, Error> {
        let io = |err| Error::Io {
            what: "control stream",
            err,
        };
        s.set_nonblocking(true).map_err(io)?;
        let tx = s.try_clone().map_err(io)?;
        Ok(Arc::new(Conn {
            peer,
            initiator,
            stream: s,
            tx: Mutex::new(Writer {
                stream: tx,
                buf: Vec::with_capacity(FRAME_BUF),
            }),
            engine: Mutex::new(Engine {
                session,
                mems: HashMap::new(),
                resolved: Vec::with_capacity(TABLE_CAP),
            }),
            rbuf: Mutex::new(Vec::with_capacity(FRAME_BUF)),
            dead: Mutex::new(None),
            // Sized up front (and never shrunk by removals), so reposts insert without
            // allocating; more transfers in flight at once than this grow it once.
            pending: Mutex::new(HashMap::with_capacity(TABLE_CAP)),
            jobs: Mutex::new(Vec::with_capacity(TABLE_CAP)),
            next_seq: AtomicU64::new(0),
            finished: Mutex::new(Vec::with_capacity(TABLE_CAP)),
            stalled: Mutex::new(None),
            timeout: self.timeout,
            refused_reads: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            refused_notifs: AtomicU64::new(0),
            inline_buf: Mutex::new(Vec::new()),
        }))
    }

    /// Registers every local region on the conn's session and makes it serviced. Holding the
    /// table's read lock keeps a concurrent `registerMem` from missing the new session.
    fn adopt(&self, c: Arc<Conn>) {
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        {
            let mut e = lock(&c.engine);
            for (md, region) in table.locals() {
                register_on(&mut e, md, region);
            }
        }
        lock(&self.conns).push(c);
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
        s.write_all(l.conn_info()).map_err(io)?;
        let session = l.connect(&theirs).map_err(Error::Engine)?;
        let c = self.conn(name, false, s, session)?;
        if self.stop.load(Ordering::Relaxed) {
            c.kill("agent destroyed");
            return Ok(());
        }
        self.adopt(c);
        Ok(())
    }

    /// One pass over a conn: read frames, drive the session, finish target jobs.
    fn service(&self, c: &Arc<Conn>) -> bool {
        if c.dead().is_some() {
            return false;
        }
        let mut moved = false;
        // Whole frames handled: progress for a conn waiting on a partial frame, not for one
        // waiting on announced data (frames must not keep a stalled WRITE's conn open).
        let mut framed = false;
        let partial;
        // EOF after frames: those frames (a last Notif, say) are still served, then the conn
        // is closed.
        let mut eof = false;
        {
            let mut rbuf = lock(&c.rbuf);
            let mut tmp = [0u8; 16 * 1024];
            loop {
                match (&c.stream).read(&mut tmp) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => rbuf.extend_from_slice(&tmp[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        c.kill(&format!("control read: {e}"));
                        return true;
                    }
                }
            }
            let mut off = 0;
            loop {
                match wire::next_frame(&rbuf[off..]) {
                    Ok(Some(f)) => {
                        let n = f.len();
                        if let Err(e) = self.handle(c, f) {
                            c.kill(&e.to_string());
                            return true;
                        }
                        off += n;
                        framed = true;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        c.kill(&format!("bad control frame: {e}"));
                        return true;
                    }
                }
            }
            rbuf.drain(..off);
            partial = !rbuf.is_empty();
        }
        if eof {
            c.kill("peer closed the control stream");
            return true;
        }
        match lock(&c.engine).session.progress() {
            Ok(m) => moved |= m,
            Err(e) => {
                c.kill(&format!("data session: {e}"));
                return true;
            }
        }
        moved |= self.finish_jobs(c);
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
        moved
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
                match e.session.status(id) {
                    Ok(Progress::Done { .. }) => {
                        let _ = e.session.release(id);
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
                if self.complete_write(c, j.wire, notif, j.reserved).is_err() {
                    return true;
                }
            }
        }
        any
    }

    /// Target side: a WRITE's data is in place; only now may the application see its notif.
    /// Then the Ack, or — when the notif cannot be kept — an `Error`: the WRITE fails at the
    /// initiator with the reason, and the conn stays usable (both sides received what they
    /// posted).
    fn complete_write(
        &self,
        c: &Conn,
        wire: u64,
        notif: Option<Vec<u8>>,
        reserved: bool,
    ) -> Result<(), Error> {
        let queued = match notif {
            Some(msg) if reserved => {
                lock(&self.notifs).push_reserved(c.peer.clone(), msg);
                Ok(())
            }
            Some(msg) => lock(&self.notifs).push(c.peer.clone(), msg),
            None => Ok(()),
        };
        match queued {
            Ok(()) => c.send(&Message::Ack(Ack {
                xfer: wire,
                status: 0,
            })),
            Err(e) => {
                let why = e.to_string();
                crate::log!("WRITE {wire} from {:?}: {why}", c.peer);
                c.send_error(e.status(), wire, &why)
            }
        }
    }

    /// An inline WRITE arrived: room for its notif and a place among the conn's jobs are taken
    /// before any byte is written, then its data is copied in and it joins the jobs as one
    /// whose transfer is done (`finish_jobs` acknowledges it after the WRITEs that arrived
    /// before it, in this same pass when none is still landing). A refusal wrote nothing.
    fn take_inline_write(&self, c: &Conn, w: &WriteAnnounce<'_>) -> Result<(), (Status, String)> {
        let room = w.notif.map_or(0, <[u8]>::len);
        if w.notif.is_some() {
            lock(&self.notifs)
                .reserve(room)
                .map_err(|e| (e.status(), format!("notification refused: {e}")))?;
        }
        let unreserve = || {
            if w.notif.is_some() {
                lock(&self.notifs).unreserve(room);
            }
        };
        // Only the backend thread changes a target conn's jobs, so this holds until the push.
        // The bound counts only while a WRITE is still landing: otherwise every job here
        // finishes at the end of this pass, however many frames it brought.
        let full = {
            let jobs = lock(&c.jobs);
            jobs.len() >= MAX_JOBS && jobs.iter().any(|j| j.id.is_some() && j.write.is_some())
        };
        if full {
            unreserve();
            return Err((
                Status::NotAllowed,
                format!("{MAX_JOBS} transfers already wait on this connection"),
            ));
        }
        if let Err(e) = self.scatter_inline(w.segments, w.data.unwrap_or(&[])) {
            unreserve();
            return Err(e);
        }
        self.inline_writes.fetch_add(1, Ordering::Relaxed);
        lock(&c.jobs).push(Job {
            id: None,
            seq: c.next_seq.fetch_add(1, Ordering::Relaxed),
            wire: w.xfer,
            // The one allocation serving a WRITE: the notification the app receives.
            write: Some(w.notif.map(<[u8]>::to_vec)),
            reserved: true,
        });
        Ok(())
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
    /// the session (only this thread touches that list, so it is still there).
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
        let Engine { mems, resolved, .. } = &mut *e;
        resolved.clear();
        for (i, s) in segs.iter().enumerate() {
            let (md, offset) = region(i, s)?;
            let mem = *mems.get(&md).ok_or_else(|| {
                (
                    Status::Backend,
                    format!("region {md:#x} is not registered on this session"),
                )
            })?;
            resolved.push(ESeg {
                mem,
                offset,
                remote_offset: 0,
                len: s.len(),
            });
        }
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

    /// Acts on one control frame. An `Err` closes the conn.
    fn handle(&self, c: &Arc<Conn>, buf: &[u8]) -> Result<(), Error> {
        let msg = wire::parse(buf).map_err(|err| Error::Wire {
            what: "control frame",
            err,
        })?;
        match (c.initiator, msg) {
            (false, Message::WriteAnnounce(w)) if w.data.is_some() => {
                if let Err((status, why)) = self.take_inline_write(c, &w) {
                    c.log_repeated(
                        &c.refused_writes,
                        format_args!("refusing inline WRITE {}: {why}", w.xfer),
                    );
                    // Nothing else of it is on the wire: the conn stays usable.
                    c.send_error(status, w.xfer, &why)?;
                }
            }
            (false, Message::WriteAnnounce(w)) => {
                match self.resolve(c, w.segments) {
                    Ok(()) => {}
                    Err((status, why)) => {
                        crate::log!("refusing WRITE {} from {:?}: {why}", w.xfer, c.peer);
                        c.send(&Message::Ack(Ack {
                            xfer: w.xfer,
                            status: status as i32,
                        }))?;
                        // Its data is already on the wire with nothing to receive it: the
                        // session's pairing is lost.
                        return Err(Error::Disconnected(format!("refused WRITE: {why}")));
                    }
                }
                let id = c.post_resolved(Direction::Recv)?;
                lock(&c.jobs).push(Job {
                    id: Some(id),
                    seq: c.next_seq.fetch_add(1, Ordering::Relaxed),
                    reserved: false,
                    wire: w.xfer,
                    // The one allocation serving a WRITE: the notification the app receives.
                    write: Some(w.notif.map(<[u8]>::to_vec)),
                });
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
                    lock(&c.jobs).push(Job {
                        id: Some(id),
                        seq: c.next_seq.fetch_add(1, Ordering::Relaxed),
                        reserved: false,
                        wire: r.xfer,
                        write: None,
                    });
                }
            },
            (false, Message::Notif(n)) => {
                // The allocation is the notification the app receives. No room (checked first,
                // so a full queue costs no allocation): the notification is refused with an
                // `Error` for xfer 0 (never a wire id), which the peer logs, and the conn stays
                // up — its transfers are unaffected.
                let mut q = lock(&self.notifs);
                match q.reserve(n.msg.len()) {
                    Ok(()) => q.push_reserved(c.peer.clone(), n.msg.to_vec()),
                    Err(e) => {
                        drop(q);
                        let why = format!("notification refused: {e}");
                        c.log_repeated(&c.refused_notifs, format_args!("{why}"));
                        c.send_error(e.status(), 0, &why)?;
                    }
                }
            }
            (true, Message::Ack(a)) => {
                let f = lock(&c.pending).remove(&a.xfer);
                let f = f.ok_or_else(|| Error::Mismatch(format!("Ack for unknown {}", a.xfer)))?;
                let mut f = lock(&f);
                stale(&f, a.xfer)?;
                if a.status == 0 {
                    f.acked = true;
                } else {
                    f.failed = Some((
                        Status::from_wire(a.status),
                        format!("peer refused the WRITE ({})", a.status),
                    ));
                    // The peer closes the conn after a refused WRITE (the data it could not
                    // take is already on the wire): stop using it now, so the next post
                    // opens a new one instead of racing the close.
                    return Err(Error::Disconnected(format!(
                        "peer refused WRITE {}; the conn is closing",
                        a.xfer
                    )));
                }
            }
            (true, Message::ReadData(d)) => {
                let f = lock(&c.pending).remove(&d.xfer);
                let f =
                    f.ok_or_else(|| Error::Mismatch(format!("ReadData for unknown {}", d.xfer)))?;
                let mut f = lock(&f);
                stale(&f, d.xfer)?;
                let offered = !f.inline_dst.is_empty();
                let want = f.inline_dst.iter().map(|r| r.1).sum::<u64>();
                if !offered || want != d.data.len() as u64 {
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
                    f.failed = Some((Status::Mismatch, why.clone()));
                    return Err(Error::Mismatch(why));
                }
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
                        crate::log!("READ {}: {why}", d.xfer);
                        f.failed = Some((Status::Backend, why));
                        return Ok(());
                    }
                }
                f.moved = true;
            }
            (true, Message::ReadAnnounce(r)) => {
                let f = lock(&c.pending).remove(&r.xfer);
                let f = f.ok_or_else(|| {
                    Error::Mismatch(format!("ReadAnnounce for unknown {}", r.xfer))
                })?;
                let mut f = lock(&f);
                // A stale one cannot be paired (the flight's segments are the next post's):
                // the conn closes.
                stale(&f, r.xfer)?;
                // Even a released READ must post its receives: the peer's data is coming and
                // later transfers pair by order.
                let id = lock(&c.engine)
                    .session
                    .post(Direction::Recv, &f.segs)
                    .map_err(Error::Engine)?;
                if f.released {
                    let _ = lock(&c.engine).session.release(id);
                } else {
                    f.engine = Some(id);
                }
            }
            (true, Message::Error(m)) => {
                // The table's lock is released before the flight is taken (`post` takes a
                // flight, then a table).
                let f = lock(&c.pending).remove(&m.xfer);
                if let Some(f) = f {
                    let mut f = lock(&f);
                    stale(&f, m.xfer)?;
                    f.failed = Some((
                        Status::from_wire(-(m.code.min(i32::MAX as u32) as i32)),
                        m.text.to_owned(),
                    ));
                } else {
                    // Not about a transfer in flight: a refused notification (xfer 0) or an
                    // answer to a released one.
                    c.log_repeated(&c.refused_notifs, format_args!("error: {}", m.text));
                }
            }
            (_, m) => {
                return Err(Error::Mismatch(format!(
                    "unexpected {:?} on a {} stream",
                    m.kind(),
                    if c.initiator { "initiator" } else { "target" }
                )))
            }
        }
        Ok(())
    }
}

/// The backend thread: accepts peers, services every conn, backs off when idle.
fn run(shared: &Arc<Shared>, listener: &TcpListener) {
    let mut idle = 0u32;
    // Reused every pass, so a busy backend thread does not allocate per pass.
    let mut conns: Vec<Arc<Conn>> = Vec::new();
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
                            crate::log!("accepting a peer: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    crate::log!("accepting a peer: {e}");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => crate::log!("control accept: {e}"),
        }
        conns.clear();
        conns.extend(lock(&shared.conns).iter().cloned());
        for c in &conns {
            moved |= shared.service(c);
        }
        if conns.iter().any(|c| c.dead().is_some()) {
            for c in conns.iter().filter(|c| c.dead().is_some()) {
                shared.release_reservations(c);
            }
            lock(&shared.conns).retain(|c| c.dead().is_none());
            lock(&shared.outgoing).retain(|_, c| c.dead().is_none());
        }
        if moved {
            idle = 0;
        } else {
            idle = idle.saturating_add(1);
            // Spin briefly for latency. Then, with transfers in flight either way (engine
            // progress is invisible to us), nap briefly; with none, sleep in poll(2) on the control
            // sockets so an announce wakes the thread at once and an idle agent costs no CPU.
            if idle < 64 {
                std::thread::yield_now();
            } else if conns
                .iter()
                .any(|c| !lock(&c.jobs).is_empty() || !lock(&c.pending).is_empty())
            {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                wait_readable(listener, &conns, &mut fds, Duration::from_millis(10));
            }
        }
    }
}

/// Blocks until the listener or a control stream is readable, or `limit` passes.
fn wait_readable(
    listener: &TcpListener,
    conns: &[Arc<Conn>],
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
    for c in conns.iter().filter(|c| c.dead().is_none()) {
        fds.push(libc::pollfd {
            fd: c.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // SAFETY: `fds` holds valid pollfd entries for descriptors that stay open during the
    // call (the listener and the conns are borrowed).
    unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            limit.as_millis() as i32,
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
        let order: Vec<u8> = std::iter::from_fn(|| {
            let b = q.front().map(|(_, m)| m[0]);
            q.pop_front();
            b
        })
        .collect();
        assert_eq!(order, [1, 2, 3]);
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
}
