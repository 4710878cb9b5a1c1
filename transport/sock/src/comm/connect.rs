//! A connect in progress: every socket's non-blocking connect and hello, then a send comm.

use std::io::IoSlice;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use tcpx_core::wire::sock::{SockHandle, SockHello, HELLO_LEN};

use super::{current_gpu, unpack_device, SendComm};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sys::{self, Sock};

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
