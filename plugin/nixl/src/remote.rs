//! Transfers and notifications between different agents: the seam where the tcpx engine
//! (Session/Transfer over ncclNet, DESIGN.md §6) plugs in.
//!
//! The backend has already validated every segment against the peer's published regions when
//! it calls in here. Until the engine lands, the operations that need it report
//! `NIXL_ERR_NOT_SUPPORTED`; bookkeeping that does not (connect, abort) succeeds.

use std::net::SocketAddr;

use crate::config::Config;
use crate::error::{Error, Status};
use crate::xfer::{Op, Segment};

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

/// A prepared transfer to another agent, as the engine will hold it.
#[derive(Debug)]
pub struct RemoteXfer {
    /// Not yet used: the engine's transfer state goes here.
    _private: (),
}

/// The engine-backed data path to other agents.
#[derive(Debug)]
pub struct RemotePath {
    /// Settings the engine will be created with.
    _config: Config,
}

/// Why remote operations fail in this build.
const NEEDS_ENGINE: &str = "moving data to or from another agent (needs the tcpx engine)";

impl RemotePath {
    /// A data path with the backend's settings; opens nothing until a peer is used.
    pub fn new(config: &Config) -> Self {
        Self {
            _config: config.clone(),
        }
    }

    /// `connect`: data comms are created lazily (DESIGN.md §6), so nothing happens yet.
    pub fn connect(&self, _agent: &str, _peer: &PeerInfo) -> Result<(), Error> {
        Ok(())
    }

    /// `disconnect`: closes the peer's comms once there are any.
    pub fn disconnect(&self, _agent: &str) {}

    /// `prepXfer` towards `agent`, with segments already validated.
    pub fn prepare(
        &self,
        _op: Op,
        _agent: &str,
        _peer: &PeerInfo,
        _segments: &[Segment],
    ) -> Result<RemoteXfer, Error> {
        Err(Error::NotSupported(NEEDS_ENGINE))
    }

    /// `postXfer` of a prepared transfer; `notif` is delivered to the peer on completion.
    pub fn post(&self, _xfer: &mut RemoteXfer, _notif: Option<&[u8]>) -> Result<Status, Error> {
        Err(Error::NotSupported(NEEDS_ENGINE))
    }

    /// `checkXfer` of a posted transfer.
    pub fn check(&self, _xfer: &mut RemoteXfer) -> Result<Status, Error> {
        Err(Error::NotSupported(NEEDS_ENGINE))
    }

    /// `releaseReqH`: aborts without blocking if still in flight.
    pub fn abort(&self, _xfer: RemoteXfer) {}

    /// `genNotif` towards another agent.
    pub fn notify(&self, _agent: &str, _peer: &PeerInfo, _msg: &[u8]) -> Result<(), Error> {
        Err(Error::NotSupported(NEEDS_ENGINE))
    }
}
