//! One control stream and its data session with one peer: the conn, its writer and reader,
//! and the engine side (session, registrations on it).

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpx::engine::{MemId, Memory, Progress, Segment as ESeg, Session, XferId};
use tcpx::log::Level;
use tcpx_core::mem::MemKind;
use tcpx_core::nixl::pace::{self, Stall};
use tcpx_core::wire::{ErrorMsg, Message};

use crate::error::{Arg, Error, Status};
use crate::registry::{MdId, Region};

use super::initiator::Flight;
use super::protocol::{error_text, log_refusal, Finished, Jobs};
use super::{lock, now, FRAME_BUF, READ_CHUNK};

/// What handling one frame came to.
pub(super) enum Handled {
    /// Acted on; the next frame may follow.
    Done,
    /// It needs room that is not there yet (in the notification queue, or among the jobs):
    /// left in the buffer, nothing more taken from the peer until it fits.
    Held,
}

/// The engine side of a conn: the session and which engine region each registration is.
pub(super) struct Engine {
    /// `None` once the conn died and the backend thread closed it: a dead conn's comms are
    /// closed at once, so no receive still posted on them (a released READ's, say) can write
    /// into memory the application has taken back or reuses.
    pub(super) session: Option<Session>,
    /// Our registrations on this session, registered at their first use on it.
    pub(super) mems: HashMap<MdId, MemId>,
    /// Target side (backend thread only): the engine segments of the announce being served,
    /// filled by `resolve` and posted from here. Reused, so serving an announce allocates
    /// nothing once it has grown to the largest one.
    pub(super) resolved: Vec<ESeg>,
    /// Target side: host memory that refused WRITEs' data is received into and dropped (one
    /// chunk long, registered on first use). Declared after the session, so it is freed after
    /// the session let go of it.
    pub(super) sink: Option<(MemId, Box<[u8]>)>,
}

impl Engine {
    /// The session, unless the conn died and it was closed.
    pub(super) fn live(&mut self) -> Result<&mut Session, Error> {
        self.session
            .as_mut()
            .ok_or_else(|| Error::Disconnected("the connection was closed".into()))
    }

    /// Drives the session (see `Session::progress`).
    pub(super) fn progress(&mut self) -> Result<bool, String> {
        match self.session.as_mut() {
            Some(s) => s.progress().map_err(|e| e.to_string()),
            None => Err("the connection was closed".into()),
        }
    }

    /// Where transfer `id` stands (see `Session::status`).
    pub(super) fn status(&self, id: XferId) -> Result<Progress, String> {
        match self.session.as_ref() {
            Some(s) => s.status(id).map_err(|e| e.to_string()),
            None => Err("the connection was closed".into()),
        }
    }

    /// Forgets transfer `id` (abandons it if in flight); nothing to do on a closed session.
    pub(super) fn release(&mut self, id: XferId) {
        if let Some(s) = self.session.as_mut() {
            let _ = s.release(id);
        }
    }
}

/// The write half of a control stream. Frames are appended to `out` and written as the
/// socket takes them, never waiting: a peer that reads slowly (or holds us back on purpose)
/// only makes the unsent tail longer, and every later use of the stream writes more of it.
pub(super) struct Writer {
    /// A clone of the conn's stream (non-blocking).
    stream: TcpStream,
    /// Frames not yet written, from `sent` on. Emptied (capacity kept) once all went out, so
    /// sending allocates nothing in steady state.
    out: Vec<u8>,
    sent: usize,
    /// When the last frame was appended (a conn holding its peer back sends a keepalive when
    /// this gets old), as [`now`](super::now).
    pub(super) last_frame: Duration,
    /// Since when bytes have waited without the socket taking any.
    pub(super) stuck: Option<Duration>,
}

impl Writer {
    pub(super) fn new(stream: TcpStream) -> Self {
        Writer {
            stream,
            out: Vec::with_capacity(FRAME_BUF),
            sent: 0,
            last_frame: now(),
            stuck: None,
        }
    }

    /// Appends one frame.
    pub(super) fn push(&mut self, msg: &Message<'_>) -> Result<(), Error> {
        let start = self.out.len();
        self.out.resize(start + msg.buffer_len(), 0);
        match msg.emit(&mut self.out[start..]) {
            Ok(_) => {
                self.last_frame = now();
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
            self.stuck = Some(now());
        }
        Ok(())
    }

    /// Whether frames wait to be written.
    pub(super) fn pending(&self) -> bool {
        self.sent < self.out.len()
    }
}

/// Initiator: scratch of one scan over a conn's parts (reused, so a scan allocates nothing):
/// the parts listed, and the wire ids of those found finished (or stale).
#[derive(Default)]
pub(super) struct Scan {
    pub(super) listed: Vec<(u64, Arc<Mutex<Flight>>)>,
    pub(super) gone: Vec<u64>,
}

/// The read half of a control stream: bytes read and not yet handled.
pub(super) struct Reader {
    pub(super) buf: Vec<u8>,
    /// Target: a frame at the front of `buf` waits for room (in the notification queue, or
    /// among the jobs) before it is handled; nothing more is read from the peer meanwhile.
    pub(super) held: bool,
    /// What one read takes from the socket before it joins `buf`: made once per conn, as a
    /// buffer zeroed on every pass costs the backend thread a 16 KiB memset each time.
    scratch: Box<[u8]>,
}

impl Reader {
    pub(super) fn new() -> Self {
        Reader {
            buf: Vec::with_capacity(FRAME_BUF),
            held: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// Appends what one read of `stream` returns, at most `max` bytes (and [`READ_CHUNK`]);
    /// `Ok(0)` is the end of the stream.
    pub(super) fn read_from(&mut self, stream: &TcpStream, max: usize) -> std::io::Result<usize> {
        let n = max.min(self.scratch.len());
        let got = (&*stream).read(&mut self.scratch[..n])?;
        self.buf.extend_from_slice(&self.scratch[..got]);
        Ok(got)
    }
}

/// Initiator: the transfers it has sent on a conn and not yet seen finish, and those waiting
/// for room to send more.
pub(super) struct Outstanding {
    /// Every part sent and not finished, by wire id: its flight, and whether it holds a place
    /// among the outstanding parts.
    pub(super) parts: HashMap<u64, (Arc<Mutex<Flight>>, bool)>,
    /// Flights with parts still to send, in post order.
    pub(super) waiting: VecDeque<Arc<Mutex<Flight>>>,
}

/// One control stream and its data session with one peer.
pub(super) struct Conn {
    /// The peer's agent name, shared with the notifications it sends us.
    pub(super) peer: Arc<str>,
    pub(super) initiator: bool,
    /// Non-blocking; read under `rx`'s lock, by the backend thread and (for an initiator
    /// conn) by `check`.
    pub(super) stream: TcpStream,
    /// Writer. Held across "post sends + write their announce" so the two orders cannot
    /// diverge.
    pub(super) tx: Mutex<Writer>,
    pub(super) engine: Mutex<Engine>,
    pub(super) rx: Mutex<Reader>,
    /// Largest frame read from the peer: a target takes notifications up to its own
    /// `max_notif_bytes`; an initiator only answers.
    pub(super) max_frame: usize,
    /// Initiator: the longest notification the peer takes (its `Limits`).
    pub(super) peer_max_notif: usize,
    pub(super) dead: Mutex<Option<String>>,
    /// When the peer last showed it is alive (a frame read, bytes moved or written): an
    /// initiator waiting on it fails after `timeout` without. As [`now`](super::now).
    pub(super) alive: Mutex<Duration>,
    /// Initiator: parts sent, and flights waiting to send (a leaf lock: nothing is taken while
    /// it is held).
    pub(super) out: Mutex<Outstanding>,
    /// Initiator: parts counted in `out.parts` that hold a place among the engine transfers
    /// ([`MAX_OUTSTANDING`](super::MAX_OUTSTANDING)).
    pub(super) outstanding: AtomicUsize,
    /// Initiator: scratch of one scan over the parts (reused, so a scan allocates nothing).
    pub(super) scan: Mutex<Scan>,
    /// Target: engine transfers in flight and WRITEs waiting for earlier ones.
    pub(super) jobs: Mutex<Jobs>,
    /// Target (backend thread only): jobs `finish_jobs` took out of `jobs`, kept to reuse
    /// the list's storage.
    pub(super) finished: Mutex<Vec<Finished>>,
    /// Since when the backend thread has been waiting on the peer (a partial frame buffered
    /// or a job in flight) with nothing moving; past `timeout` the conn is closed, so a peer
    /// that announces data it never sends, or stops mid-frame, cannot hold it forever.
    pub(super) stalled: Mutex<Stall>,
    pub(super) timeout: Duration,
    /// Target: READs refused so far (they leave the conn open, so a peer can send many).
    pub(super) refused_reads: AtomicU64,
    /// WRITEs from this peer refused so far (rate-limits their log lines).
    pub(super) refused_writes: AtomicU64,
    /// Log rate limiting of errors the peer sent about no transfer in flight.
    pub(super) refused_notifs: AtomicU64,
    /// Initiator: when `checkXfer` last serviced the conn, in ns of the protocol's clock
    /// (`remote::now`; 0: never).
    pub(super) checked: AtomicU64,
    /// Initiator (backend thread only): since when the backend thread has found the conn
    /// left to `checkXfer` at every look, in ns of the protocol's clock (0: it services the
    /// conn itself).
    pub(super) left_since: AtomicU64,
    /// Target: the data of a READ answered inline, gathered before it is framed (reused; it
    /// grows to the largest inline READ once).
    pub(super) inline_buf: Mutex<Vec<u8>>,
}

impl Conn {
    pub(super) fn dead(&self) -> Option<String> {
        lock(&self.dead).clone()
    }

    /// Closes the connection for a failure (a warning line says why).
    pub(super) fn kill(&self, why: &str) {
        self.close_at(Level::Warn, why);
    }

    /// Closes the connection in the normal course of things: `disconnect`, the agent going
    /// away, the peer closing its end (an info line).
    pub(super) fn close(&self, why: &str) {
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
    pub(super) fn heard(&self) {
        *lock(&self.alive) = now();
    }

    /// Whether the peer has shown no sign of life for longer than the timeout.
    pub(super) fn silent(&self) -> bool {
        pace::silent(*lock(&self.alive), now(), self.timeout)
    }

    /// Whether our frames have waited unwritten, and the peer been silent, for longer than
    /// the timeout (`tx` held).
    pub(super) fn stuck(&self, tx: &Writer) -> bool {
        tx.stuck.is_some() && pace::stuck(tx.stuck, *lock(&self.alive), now(), self.timeout)
    }

    /// Appends one frame to the held writer and writes what the socket takes; never waits.
    pub(super) fn send_on(&self, tx: &mut Writer, msg: &Message<'_>) -> Result<(), Error> {
        if let Some(why) = self.dead() {
            return Err(Error::Disconnected(why));
        }
        tx.push(msg)?;
        self.flush_on(tx)
    }

    /// Writes what the socket takes of the held writer's frames.
    pub(super) fn flush_on(&self, tx: &mut Writer) -> Result<(), Error> {
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

    pub(super) fn send(&self, msg: &Message<'_>) -> Result<(), Error> {
        let mut tx = lock(&self.tx);
        self.send_on(&mut tx, msg)
    }

    /// Sends an `Error` about transfer `xfer` (0: none) with `why` as the wire carries it.
    pub(super) fn send_error(&self, status: Status, xfer: u64, why: &str) -> Result<(), Error> {
        self.send(&Message::Error(ErrorMsg {
            code: (status as i32).unsigned_abs(),
            xfer,
            text: error_text(why),
        }))
    }

    /// Logs `what` for the `n`-th time this peer caused it, counted in `counter`: rate-limited
    /// by [`log_refusal`], since a peer can cause it any number of times.
    pub(super) fn log_repeated(&self, counter: &AtomicU64, what: std::fmt::Arguments<'_>) {
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
}

/// Registers one local region on a session (at its first use there).
pub(super) fn register_on(e: &mut Engine, md: MdId, region: &Region) -> Result<MemId, Error> {
    if let Some(id) = e.mems.get(&md) {
        return Ok(*id);
    }
    let len = usize::try_from(region.span.len())
        .map_err(|_| Error::invalid(Arg::Descs, "region exceeds the address space"))?;
    let memory = match region.mem {
        MemKind::Host => Memory::Host,
        MemKind::Device => Memory::Cuda {
            device: region.device as i32,
        },
    };
    let session = e.live()?;
    // SAFETY: NIXL keeps registered memory allocated until `deregisterMem`, which removes it
    // from every session (RemotePath::deregister) before returning; the caller holds the
    // metadata table (read), so the registration is live now.
    let id = unsafe { session.register(region.span.base() as usize as *mut _, len, memory) }
        .map_err(Error::Engine)?;
    e.mems.insert(md, id);
    Ok(id)
}
