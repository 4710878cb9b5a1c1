//! The two metadata blobs NIXL carries between agents for us, in tcpx's wire format
//! (`tcpx_core::wire`): the region token (`getPublicData` / `loadRemoteMD`) and the
//! connection info (`getConnInfo` / `loadRemoteConnInfo`).

use std::net::SocketAddr;

use tcpx_core::wire::{self, ConnInfo, RegionToken};

use crate::error::Error;

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

/// Serialises a region token.
pub fn encode_token(token: &RegionToken) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; token.buffer_len()];
    token.emit(&mut buf).map_err(|err| Error::Wire {
        what: "region token",
        err,
    })?;
    Ok(buf)
}

/// The error for a blob that does not parse: a blob of another wire version says so, naming
/// both versions (agents of different tcpx-nixl versions refuse each other by version).
fn refused(what: &'static str, err: wire::Error) -> Error {
    match err {
        wire::Error::BadVersion(v) => Error::Mismatch(format!(
            "{what} of wire version {v}, this agent speaks version {}: every agent must run \
             the same tcpx-nixl wire version",
            wire::VERSION
        )),
        err => Error::Wire { what, err },
    }
}

/// Parses and validates a region token.
pub fn decode_token(bytes: &[u8]) -> Result<RegionToken, Error> {
    RegionToken::parse(bytes).map_err(|err| refused("region token", err))
}

/// Serialises our connection info.
pub fn encode_conn_info(agent: &str, addr: SocketAddr, channels: u16) -> Result<Vec<u8>, Error> {
    let info = ConnInfo {
        protocol: wire::VERSION,
        addr,
        channels,
        name: agent,
    };
    let mut buf = vec![0u8; info.buffer_len()];
    info.emit(&mut buf).map_err(|err| Error::Wire {
        what: "connection info",
        err,
    })?;
    Ok(buf)
}

/// Parses a peer's connection info; returns it with the agent name it carries.
pub fn decode_conn_info(bytes: &[u8]) -> Result<(PeerInfo, &str), Error> {
    let info = ConnInfo::parse(bytes).map_err(|err| refused("connection info", err))?;
    Ok((
        PeerInfo {
            protocol: info.protocol,
            addr: info.addr,
            channels: info.channels,
        },
        info.name,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpx_core::mem::MemKind;

    #[test]
    fn token_round_trips_and_rejects_damage() {
        let t = RegionToken {
            base: 0x7f00_0000_1000,
            len: 4096,
            mem: MemKind::Host,
            device: 0,
            region: 5,
            key: 0xdead_beef_cafe_f00d,
        };
        let bytes = encode_token(&t).unwrap();
        assert_eq!(decode_token(&bytes).unwrap(), t);
        assert!(decode_token(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[0] ^= 0xff;
        assert!(decode_token(&bad).is_err());
    }

    #[test]
    fn conn_info_round_trips() {
        let addr: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let bytes = encode_conn_info("agent-a", addr, 2).unwrap();
        let (peer, name) = decode_conn_info(&bytes).unwrap();
        assert_eq!(name, "agent-a");
        assert_eq!(peer.addr, addr);
        assert_eq!(peer.channels, 2);
        assert_eq!(peer.protocol, wire::VERSION);
        assert!(decode_conn_info(b"not a blob").is_err());
    }

    #[test]
    fn blobs_of_another_wire_version_are_refused_by_version() {
        let addr: SocketAddr = "10.1.2.3:4567".parse().unwrap();
        let mut info = encode_conn_info("agent-a", addr, 2).unwrap();
        info[4..6].copy_from_slice(&3u16.to_le_bytes());
        let e = decode_conn_info(&info).unwrap_err().to_string();
        assert!(
            e.contains("wire version 3") && e.contains(&format!("version {}", wire::VERSION)),
            "{e}"
        );
        let t = RegionToken {
            base: 0x1000,
            len: 64,
            mem: MemKind::Host,
            device: 0,
            region: 1,
            key: 2,
        };
        let mut token = encode_token(&t).unwrap();
        let newer = wire::VERSION + 1;
        token[4..6].copy_from_slice(&newer.to_le_bytes());
        assert!(decode_token(&token)
            .unwrap_err()
            .to_string()
            .contains(&format!("wire version {newer}")));
    }
}
