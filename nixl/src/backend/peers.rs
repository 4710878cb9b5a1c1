//! Peers: the connection info we publish and load (`getConnInfo`, `loadRemoteConnInfo`),
//! `connect` and `disconnect`.

use crate::blob;
use crate::blob::PeerInfo;
use crate::error::{Arg, Error};

use super::{lock, Backend};

#[derive(Debug)]
pub(super) struct Peer {
    info: PeerInfo,
    /// The blob as loaded, to tell a repeated load from a conflicting one.
    raw: Vec<u8>,
    connected: bool,
}

impl Backend {
    /// `getConnInfo`: version, control address, channels and agent name.
    pub fn conn_info(&self) -> &[u8] {
        &self.conn_info
    }

    /// `loadRemoteConnInfo`: a repeated identical load is accepted, a conflicting one is not.
    pub fn load_remote_conn_info(&self, agent: &str, info: &[u8]) -> Result<(), Error> {
        if agent.is_empty() || agent == &*self.agent {
            return Err(Error::invalid(
                Arg::Agent,
                format!("cannot load connection info for {agent:?}"),
            ));
        }
        let (peer, name) = blob::decode_conn_info(info)?;
        if name != agent {
            return Err(Error::Mismatch(format!(
                "connection info of {name:?} loaded for agent {agent:?}"
            )));
        }
        let mut peers = lock(&self.peers);
        if let Some(known) = peers.get(agent) {
            return if known.raw == info {
                Ok(())
            } else {
                Err(Error::AgentAlreadyLoaded(agent.to_owned()))
            };
        }
        peers.insert(
            agent.to_owned(),
            Peer {
                info: peer,
                raw: info.to_vec(),
                connected: false,
            },
        );
        Ok(())
    }

    /// `connect`: ourselves always; a peer once its connection info is loaded.
    pub fn connect(&self, agent: &str) -> Result<(), Error> {
        if agent == &*self.agent {
            return Ok(());
        }
        // Not under the peer table's lock: the handshake takes up to `timeout_ms` (TCPX's
        // accept alone 5 s), and transfers to other peers need the table meanwhile.
        let info = self.peer_info(agent)?;
        self.remote.connect(agent, &info)?;
        // A peer disconnected during the handshake has no entry left to mark.
        if let Some(peer) = lock(&self.peers).get_mut(agent) {
            peer.connected = true;
        }
        Ok(())
    }

    /// `disconnect`: forgets the peer (NIXL has unloaded its metadata first).
    pub fn disconnect(&self, agent: &str) -> Result<(), Error> {
        if agent == &*self.agent {
            return Ok(());
        }
        lock(&self.peers)
            .remove(agent)
            .ok_or_else(|| Error::UnknownAgent(agent.to_owned()))?;
        self.remote.disconnect(agent);
        Ok(())
    }

    /// Whether `agent` is a loaded peer that `connect` was called for.
    pub fn is_connected(&self, agent: &str) -> bool {
        lock(&self.peers).get(agent).is_some_and(|p| p.connected)
    }

    pub(super) fn peer_info(&self, agent: &str) -> Result<PeerInfo, Error> {
        lock(&self.peers)
            .get(agent)
            .map(|p| p.info.clone())
            .ok_or_else(|| Error::UnknownAgent(agent.to_owned()))
    }
}
