//! Sockets and helper threads common to both directions of a comm.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::{sys_err, unpack_device};
use crate::config::Config;
use crate::error::Result;
use crate::sys;
use crate::worker::{self, Shared};

/// How long `close` waits for helper threads before giving up on them.
const CLOSE_JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sockets and helper threads common to both directions.
pub(super) struct Core {
    pub(super) shared: Arc<Shared>,
    pub(super) ctrl: TcpStream,
    /// Duplicates of the data sockets, kept to wake blocked helpers at close, and used by the
    /// calling thread for a [`Direct`](super::direct::Direct) request.
    pub(super) data: Vec<TcpStream>,
    pub(super) threads: Vec<JoinHandle<()>>,
    /// `Config::direct_bytes`.
    pub(super) direct_bytes: usize,
    /// TCPX mode (an UNPACK device): `test` never reports sizes, receives leave only at
    /// `irecvConsumed`, `isend`/`irecv` need a memory handle, `iflush` is an error.
    pub(crate) tcpx: bool,
}

impl Core {
    pub(super) fn new(mut socks: Vec<TcpStream>, chunk_bytes: usize, cfg: &Config) -> Result<Self> {
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

    /// Stops the helpers. Returns false if some did not exit in time; the caller must then
    /// leak everything they might still touch instead of freeing it.
    pub(super) fn shutdown(&mut self) -> bool {
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
