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

mod conn;
mod cost;
mod handshake;
mod initiator;
mod inline;
mod notif_queue;
mod protocol;
mod service;
mod target;
mod thread;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, LazyLock, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tcpx::engine::{Config as EngineConfig, Copier};
use tcpx_core::wire::{self, Message, Notif};

use crate::blob::PeerInfo;
use crate::config::Config;
use crate::error::{Arg, Error};
use crate::registry::{MdId, MemTable};

pub use cost::CostModel;
pub use initiator::RemoteXfer;
pub use notif_queue::{NotifQueue, Notifs};

use conn::Conn;
use thread::run;

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
/// Bytes one read of a control stream takes at most.
const READ_CHUNK: usize = 16 * 1024;

/// An initiator conn that `checkXfer` serviced less than this long ago is left to the
/// application's polling by the backend thread: both servicing it only contend for its locks
/// and double the CPU per transfer. Short, so an application that checks rarely (or whose
/// polling thread is preempted) still has its transfers driven by the backend thread.
const CHECKED_RECENTLY: Duration = Duration::from_micros(250);

/// The longest the backend thread waits before looking again at an initiator conn the
/// application keeps checking (see [`recheck_after`]).
const RECHECK_MAX: Duration = Duration::from_millis(8);

/// When the backend thread looks again at an initiator conn `checkXfer` serviced
/// `since_check` ago, having found it checked at every look for `left_for`; `None`: the
/// application stopped checking and the thread takes the conn back.
///
/// At first that is when the conn would stop counting as checked. An application that keeps
/// checking (a loop polling `checkXfer`) makes the thread wait longer, a quarter of how long
/// it has kept at it, up to [`RECHECK_MAX`]: every look wakes the thread, and on a machine
/// with few cores each wake-up takes a core from a thread a transfer needs (with the thread
/// looking every 250 µs, 9–22 % of 4 KiB transfers on two cores took over twice their
/// median). The cost: an application that polls back to back and then stops in the middle of
/// a transfer has it driven by this thread only after up to that wait.
fn recheck_after(since_check: Duration, left_for: Duration) -> Option<Duration> {
    let rest = CHECKED_RECENTLY
        .checked_sub(since_check)
        .filter(|r| !r.is_zero())?;
    Some(rest.max((left_for / 4).min(RECHECK_MAX)))
}

/// The backend thread's nap while transfers are in flight (engine progress wakes nothing):
/// a control frame arriving ends it sooner.
const NAP: Duration = Duration::from_micros(50);

/// Timer slack of the backend thread (ns): its naps end when asked, not up to the default
/// 50 µs later.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Origin of the protocol's clock ([`now`]).
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The time the protocol's pacing is given: since a process-wide origin.
fn now() -> Duration {
    ORIGIN.elapsed()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single insert/remove/assignment: state stays usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
}

impl Shared {
    /// A dead conn's WRITEs that were still waiting give back the queue room their notifs
    /// reserved (they will never be delivered), so a peer that leaves cannot shrink the queue
    /// for everyone.
    fn release_reservations(&self, c: &Conn) {
        let mut jobs = lock(&c.jobs);
        while let Some(msg) = jobs.poll_unreserved() {
            lock(&self.notifs).unreserve(msg.len());
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

    /// [`now`] in nanoseconds, at least 1 (0 means never in [`Conn::checked`]).
    fn now_ns(&self) -> u64 {
        (now().as_nanos() as u64).max(1)
    }

    /// How long the backend thread still leaves `c` to the application's `checkXfer` (`None`:
    /// it services the conn itself). Called by the backend thread only: it keeps the conn's
    /// `left_since`.
    fn left_to_checks(&self, c: &Conn, now_ns: u64) -> Option<Duration> {
        let at = c.checked.load(Ordering::Relaxed);
        if !c.initiator || at == 0 {
            return None;
        }
        let since = Duration::from_nanos(now_ns.saturating_sub(at));
        let left_since = c.left_since.load(Ordering::Relaxed);
        let left_for = Duration::from_nanos(match left_since {
            0 => 0,
            t => now_ns.saturating_sub(t),
        });
        let wait = recheck_after(since, left_for);
        let streak = match wait {
            None => 0,
            Some(_) if left_since == 0 => now_ns,
            Some(_) => left_since,
        };
        c.left_since.store(streak, Ordering::Relaxed);
        wait
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
        split_chunks: config.split_chunks,
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

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_conn_not_checked_for_the_window_is_taken_back() {
        assert_eq!(recheck_after(CHECKED_RECENTLY, Duration::ZERO), None);
        assert_eq!(
            recheck_after(CHECKED_RECENTLY + US, Duration::from_secs(1)),
            None
        );
        assert_eq!(
            recheck_after(Duration::from_secs(3600), Duration::ZERO),
            None
        );
    }

    #[test]
    fn the_first_look_comes_when_the_check_would_expire() {
        assert_eq!(
            recheck_after(Duration::ZERO, Duration::ZERO),
            Some(CHECKED_RECENTLY)
        );
        assert_eq!(recheck_after(100 * US, Duration::ZERO), Some(150 * US));
        // A short streak does not stretch it.
        assert_eq!(recheck_after(100 * US, 400 * US), Some(150 * US));
    }

    #[test]
    fn an_application_that_keeps_checking_is_looked_at_less_often_up_to_the_cap() {
        assert_eq!(
            recheck_after(10 * US, Duration::from_millis(4)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            recheck_after(10 * US, Duration::from_millis(20)),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            recheck_after(10 * US, Duration::from_secs(60)),
            Some(RECHECK_MAX)
        );
        // Never shorter than what is left of the window.
        assert_eq!(
            recheck_after(Duration::ZERO, Duration::from_micros(800)),
            Some(CHECKED_RECENTLY)
        );
    }
}
