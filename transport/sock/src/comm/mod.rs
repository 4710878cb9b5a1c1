//! Comms: listen/connect/accept state machines and the send/recv request paths.
//!
//! Each comm has one non-blocking control socket, driven on the caller's thread inside
//! `isend`/`irecv`/`test` (headers and small inline payloads), plus `nsocks` blocking data
//! sockets served by helper threads (see [`crate::worker`]).

mod connect;
mod direct;
mod listen;
mod recv;
mod send;
mod sockets;
mod unpack;

use core::ffi::c_void;
use std::sync::{Mutex, MutexGuard};

use crate::config::Config;
use crate::cuda;
use crate::error::{Error, Result};

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

/// The GPU current on the calling thread (device 0 if none, as `cudaGetDevice` says), on a CUDA
/// machine in TCPX mode: what TCPX binds comms to.
fn current_gpu(cfg: &Config) -> Option<usize> {
    (unpack_device(cfg) && cuda::present()).then(cuda::home_ordinal)
}

/// Whether the device is UNPACK, i.e. its comms are in TCPX mode: CUDA present, or asked for.
pub(crate) fn unpack_device(cfg: &Config) -> bool {
    cfg.unpack || cfg.host_bounce || cuda::present()
}

pub(crate) use connect::Connecting;
pub use direct::direct_requests;
pub(crate) use listen::ListenComm;
pub use recv::RecvComm;
pub(crate) use send::SendComm;
pub use unpack::UnpackView;
