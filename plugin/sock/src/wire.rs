//! The plugin's own tiny wire formats: the listen handle, the per-socket hello and the
//! per-request header on the control socket. Little-endian, fixed size, checked on parse.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tcpx_core::abi::HANDLE_MAX_SIZE;

/// Identifies tcpxsock handles and hellos ("TXSK").
pub const MAGIC: u32 = 0x4b53_5854;
/// Protocol version; both ends must agree.
pub const VERSION: u16 = 1;
/// Bytes of the listen handle we use (the rest of the 128 are zero).
pub const HANDLE_LEN: usize = 48;
/// Offset of the connect-in-progress pointer inside the handle.
pub const HANDLE_STAGE_OFF: usize = 40;
/// Hello size.
pub const HELLO_LEN: usize = 32;
/// Request header size.
pub const HDR_LEN: usize = 8;
/// Header flag: the payload follows inline on the control socket.
pub const HDR_INLINE: u32 = 1 << 31;

const _: () = assert!(HANDLE_LEN <= HANDLE_MAX_SIZE);

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// What a listen handle says: where to connect and the nonce that proves we were invited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    pub addr: SocketAddr,
    pub nonce: u64,
}

impl Handle {
    /// Writes the handle into the start of `out` (which must be ≥ [`HANDLE_LEN`] bytes),
    /// zeroing the connect-stage field.
    pub fn emit(&self, out: &mut [u8]) {
        out[..HANDLE_LEN].fill(0);
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[8..10].copy_from_slice(&self.addr.port().to_le_bytes());
        match self.addr.ip() {
            IpAddr::V4(a) => {
                out[6] = 4;
                out[12..16].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out[6] = 6;
                out[12..28].copy_from_slice(&a.octets());
            }
        }
        out[32..40].copy_from_slice(&self.nonce.to_le_bytes());
    }

    /// Parses a handle; `None` if it is not one of ours.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < HANDLE_LEN || u32_at(b, 0) != MAGIC || u16_at(b, 4) != VERSION {
            return None;
        }
        let port = u16_at(b, 8);
        let ip = match b[6] {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&b[12..16]).ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[12..28]).ok()?)),
            _ => return None,
        };
        Some(Handle {
            addr: SocketAddr::new(ip, port),
            nonce: u64_at(b, 32),
        })
    }
}

/// First bytes on every socket of a comm, sender to receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// 0 = control socket, 1..=nsocks = data sockets.
    pub index: u8,
    pub nsocks: u8,
    /// The listen handle's nonce.
    pub nonce: u64,
    /// Random per connecting comm: groups the sockets of one comm.
    pub conn_id: u64,
    /// The sender's chunk size; the receiver splits with the same value.
    pub chunk_bytes: u32,
}

impl Hello {
    /// Serialises the hello.
    pub fn emit(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.index;
        b[7] = self.nsocks;
        b[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        b[16..24].copy_from_slice(&self.conn_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.chunk_bytes.to_le_bytes());
        b
    }

    /// Parses and sanity-checks a hello (not the nonce: the listener compares that).
    pub fn parse(b: &[u8; HELLO_LEN]) -> Option<Self> {
        if u32_at(b, 0) != MAGIC || u16_at(b, 4) != VERSION {
            return None;
        }
        let h = Hello {
            index: b[6],
            nsocks: b[7],
            nonce: u64_at(b, 8),
            conn_id: u64_at(b, 16),
            chunk_bytes: u32_at(b, 24),
        };
        let chunk_ok = h.chunk_bytes > 0 && h.chunk_bytes % 4096 == 0;
        let socks_ok = (1..=crate::config::MAX_NSOCKS as u8).contains(&h.nsocks);
        (chunk_ok && socks_ok && h.index <= h.nsocks).then_some(h)
    }
}

/// Per-request header: payload size, inline flag, low 32 bits of the request sequence.
pub fn emit_header(size: u32, inline: bool, seq: u64) -> [u8; HDR_LEN] {
    let mut b = [0u8; HDR_LEN];
    let v = size | if inline { HDR_INLINE } else { 0 };
    b[0..4].copy_from_slice(&v.to_le_bytes());
    b[4..8].copy_from_slice(&(seq as u32).to_le_bytes());
    b
}

/// Parses a header into `(size, inline, seq_low)`.
pub fn parse_header(b: &[u8]) -> (u32, bool, u32) {
    let v = u32_at(b, 0);
    (v & !HDR_INLINE, v & HDR_INLINE != 0, u32_at(b, 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_round_trips_and_rejects_garbage() {
        let h = Handle {
            addr: "127.0.0.1:4242".parse().unwrap(),
            nonce: 0xdead_beef_0102_0304,
        };
        let mut b = [0xffu8; 128];
        h.emit(&mut b);
        assert_eq!(Handle::parse(&b), Some(h));
        assert_eq!(u64_at(&b, HANDLE_STAGE_OFF), 0);
        b[0] ^= 1;
        assert_eq!(Handle::parse(&b), None);
    }

    #[test]
    fn hello_round_trips_and_checks_ranges() {
        let h = Hello {
            index: 2,
            nsocks: 4,
            nonce: 7,
            conn_id: 9,
            chunk_bytes: 512 << 10,
        };
        assert_eq!(Hello::parse(&h.emit()), Some(h));
        let bad = Hello { index: 5, ..h };
        assert_eq!(Hello::parse(&bad.emit()), None);
        let bad = Hello {
            chunk_bytes: 100,
            ..h
        };
        assert_eq!(Hello::parse(&bad.emit()), None);
    }

    #[test]
    fn header_round_trips() {
        let b = emit_header(4097, true, 0x1_0000_0003);
        assert_eq!(parse_header(&b), (4097, true, 3));
    }
}
