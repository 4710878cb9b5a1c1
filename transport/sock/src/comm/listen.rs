//! The listen comm: accepts data-socket connections non-blockingly and groups them into recv
//! comms.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tcpx_core::wire::sock::{SockHandle, SockHello, HELLO_LEN};

use super::{current_gpu, sys_err, unpack_device, RecvComm};
use crate::config::Config;
use crate::dev;
use crate::error::{Error, Result};
use crate::sys::{self, Sock};

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
