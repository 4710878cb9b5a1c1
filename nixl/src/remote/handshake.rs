//! Opening conns: the drivers of the initiator's and the target's handshakes (the protocol is
//! `tcpx_core::nixl::handshake`'s; here the blocking socket reads and writes, their timeouts,
//! the engine's listen and connect) and the conn table of outgoing conns.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tcpx::engine::Session;
use tcpx_core::nixl::handshake::{
    self, HandshakeError, InitiatorHandshake, TargetHandshake, Transmit, EMIT_BUF,
};
use tcpx_core::nixl::pace::Stall;
use tcpx_core::wire::{self, HEADER_LEN, MAX_CONTROL_FRAME};

use crate::error::Error;

use super::conn::{Conn, Engine, Outstanding, Reader, Scan, Writer};
use super::protocol::{JobQueue, Jobs};
use super::{lock, now, Shared, MAX_JOBS, TABLE_CAP};
use crate::blob::PeerInfo;

/// Bytes a handshake's frames take at first: a `Hello` and the largest `ListenHandles`, or
/// the largest `ListenHandles` and `Limits`.
const RX_CAP: usize = 4096;

/// Reads the next handshake frame from a blocking stream onto the end of `rx` (every
/// handshake frame read so far, in order: the handshake's outcome points into it) and returns
/// where it starts. Its length is the handshake's to judge before the body is read (read
/// timeout set by the caller).
fn read_frame(s: &mut TcpStream, rx: &mut Vec<u8>) -> Result<usize, Error> {
    let io = |err| Error::Io {
        what: "control handshake read",
        err,
    };
    let start = rx.len();
    rx.resize(start + HEADER_LEN, 0);
    s.read_exact(&mut rx[start..]).map_err(io)?;
    let len = handshake::frame_len(&rx[start..])
        .map_err(refused)?
        .unwrap_or(HEADER_LEN);
    rx.resize(start + len, 0);
    s.read_exact(&mut rx[start + HEADER_LEN..]).map_err(io)?;
    Ok(start)
}

/// A handshake the protocol refused: a frame that does not parse is a malformed handshake
/// frame, anything else (another wire version, frames out of order) a mismatch with the peer.
fn refused(e: HandshakeError) -> Error {
    match e {
        HandshakeError::Frame(err) => Error::Wire {
            what: "handshake frame",
            err,
        },
        e => Error::Mismatch(e.to_string()),
    }
}

/// Sends what the handshake says until it has nothing more to send: its frames, and our
/// engine's `ListenHandles` frame (`conn_info`). A write failure is an [`Error::Io`] of `what`.
fn transmit(
    s: &mut TcpStream,
    what: &'static str,
    conn_info: &[u8],
    mut poll: impl FnMut(&mut [u8]) -> Result<Option<Transmit>, wire::Error>,
) -> Result<(), Error> {
    let mut buf = [0u8; EMIT_BUF];
    while let Some(t) = poll(&mut buf).map_err(|err| Error::Wire {
        what: "control message",
        err,
    })? {
        let bytes = match t {
            Transmit::Frame(n) => &buf[..n],
            Transmit::ListenHandles => conn_info,
        };
        s.write_all(bytes).map_err(|err| Error::Io { what, err })?;
    }
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

impl Shared {
    /// Our conn to `agent`, if there is one not known to be dead.
    pub(super) fn live_outgoing(&self, agent: &str) -> Option<Arc<Conn>> {
        lock(&self.outgoing)
            .get(agent)
            .filter(|c| c.dead().is_none())
            .cloned()
    }

    /// Our conn to `agent`, opened (handshake) if there is none or it died. The handshake
    /// holds only this peer's entry of the handshake table: transfers on other conns, and
    /// handshakes with other peers, go on meanwhile.
    pub(super) fn outgoing(&self, agent: &str, peer: &PeerInfo) -> Result<Arc<Conn>, Error> {
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
        let mut hs = InitiatorHandshake::new(self.engine_cfg.channels as u16, &self.agent);
        // A peer that stops answering (read/write timeout) or goes away during the handshake
        // is a disconnected peer, like one that fails later: REMOTE_DISCONNECT, not BACKEND.
        transmit(&mut s, "sending Hello", l.conn_info(), |b| {
            hs.poll_transmit(b)
        })
        .map_err(peer_gone)?;
        let mut rx = Vec::with_capacity(RX_CAP);
        let answered = loop {
            if let Some(a) = hs.outcome() {
                break a.clone();
            }
            let at = read_frame(&mut s, &mut rx).map_err(peer_gone)?;
            hs.handle_frame(&rx[at..]).map_err(|e| match e {
                HandshakeError::Unanswered { .. } => {
                    Error::Mismatch(format!("agent {agent:?} {e}"))
                }
                e => refused(e),
            })?;
        };
        let session = l.connect(&rx[answered.handles]).map_err(Error::Engine)?;
        self.conn(
            agent.into(),
            true,
            s,
            session,
            answered.limits.max_notif as usize,
        )
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
            rx: Mutex::new(Reader::new()),
            max_frame,
            peer_max_notif,
            dead: Mutex::new(None),
            alive: Mutex::new(now()),
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
            jobs: Mutex::new(Jobs::new(
                JobQueue(VecDeque::with_capacity(TABLE_CAP)),
                MAX_JOBS,
            )),
            finished: Mutex::new(Vec::with_capacity(TABLE_CAP)),
            stalled: Mutex::new(Stall::new()),
            timeout: self.timeout,
            refused_reads: AtomicU64::new(0),
            refused_writes: AtomicU64::new(0),
            refused_notifs: AtomicU64::new(0),
            checked: AtomicU64::new(0),
            left_since: AtomicU64::new(0),
            inline_buf: Mutex::new(Vec::new()),
        }))
    }

    /// Target handshake for a stream a peer opened (runs on its own thread: it blocks).
    pub(super) fn accept(&self, mut s: TcpStream) -> Result<(), Error> {
        let io = |err| Error::Io {
            what: "control handshake",
            err,
        };
        s.set_nonblocking(false).map_err(io)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let _ = s.set_nodelay(true);
        let mut hs = TargetHandshake::new(self.max_notif);
        let mut rx = Vec::with_capacity(RX_CAP);
        let peer = loop {
            if let Some(p) = hs.peer() {
                break p.clone();
            }
            let at = read_frame(&mut s, &mut rx)?;
            hs.handle_frame(&rx[at..]).map_err(refused)?;
        };
        let net = Session::open_net(&self.engine_cfg).map_err(Error::Engine)?;
        let l = Session::listen(net, self.engine_cfg.clone()).map_err(Error::Engine)?;
        transmit(&mut s, "control handshake", l.conn_info(), |b| {
            hs.poll_transmit(b)
        })?;
        let session = l.connect(&rx[peer.handles]).map_err(Error::Engine)?;
        let name = Arc::<str>::from(peer.name.as_str());
        let c = self.conn(name, false, s, session, 0)?;
        if self.stop.load(Ordering::Relaxed) {
            c.close("agent destroyed");
            return Ok(());
        }
        lock(&self.conns).push(c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;

    #[test]
    fn refused_handshakes_keep_their_statuses_and_texts() {
        let v = refused(HandshakeError::Version(wire::VERSION + 1));
        assert_eq!(v.status(), Status::Mismatch);
        assert!(
            v.to_string().contains(&format!(
                "the peer speaks wire version {}, this agent {}: every agent must run the same \
                 tcpx-nixl wire version",
                wire::VERSION + 1,
                wire::VERSION
            )),
            "{v}"
        );
        let f = refused(HandshakeError::Frame(wire::Error::BadMagic(0)));
        assert_eq!(f.status(), Status::InvalidParam);
        assert!(f.to_string().contains("bad magic"), "{f}");
        let h = refused(HandshakeError::NoHello(wire::Kind::Ack));
        assert_eq!(h.status(), Status::Mismatch);
        assert_eq!(
            h.to_string(),
            "mismatch: control stream did not open with Hello"
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
