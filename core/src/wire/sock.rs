//! tcpxsock's wire formats: the listen handle, the per-socket hello and the per-request header
//! on the control socket.
//!
//! Little-endian, fixed size, no common header. Parsing checks every field and hands out plain
//! values; emitting writes into a caller's buffer. Reserved bytes must be zero, so every
//! accepted hello and header re-emits to the same bytes (a handle to the same first
//! [`HANDLE_STAGE_OFF`] bytes: the 8 after them belong to the connecting side).
//!
//! # Layout (byte offsets)
//!
//! | format | fields |
//! |---|---|
//! | [`SockHandle`] (48 of NCCL's 128) | magic u32 @0, version u16 @4, family u8 @6 (4/6), 0 u8, port u16 @8, 0 u16, addr [u8;16] @12 (IPv4: first 4, rest 0), 0 u32, nonce u64 @32, connect stage u64 @40 (not parsed) |
//! | [`SockHello`] (32) | magic u32 @0, version u16 @4, index u8 @6, nsocks u8 @7, nonce u64 @8, conn_id u64 @16, chunk_bytes u32 @24, 0 u32 |
//! | [`SockRequestHeader`] (8) | size u32 @0 (bit 31: [`INLINE`]), seq u32 @4 (low 32 bits) |

use core::mem::{offset_of, size_of};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{in_range, out, Error, Field};
use crate::abi::HANDLE_MAX_SIZE;

/// Identifies tcpxsock handles and hellos: `b"TXSK"` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TXSK");
/// tcpxsock's protocol version; both ends must agree.
pub const VERSION: u16 = 1;
/// Bytes of NCCL's listen handle tcpxsock uses (the rest of the 128 are not read).
pub const HANDLE_LEN: usize = 48;
/// Offset of the connect-in-progress field inside the handle: the connecting side's own
/// 8 bytes, zero in an emitted handle and never parsed.
pub const HANDLE_STAGE_OFF: usize = 40;
/// Hello size.
pub const HELLO_LEN: usize = 32;
/// Request header size.
pub const HEADER_LEN: usize = 8;
/// Header flag: the payload follows the header inline on the control socket.
pub const INLINE: u32 = 1 << 31;
/// Largest request size a header carries.
pub const MAX_SIZE: u32 = INLINE - 1;
/// Most data sockets per comm (a hello's `nsocks`).
pub const MAX_SOCKETS: usize = 16;
/// A hello's chunk size is a positive multiple of this.
pub const CHUNK_ALIGN: u32 = 4096;

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// The handle's bytes, as laid out in NCCL's handle.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
struct HandleRepr {
    magic: U32,
    version: U16,
    family: u8,
    reserved0: u8,
    port: U16,
    reserved1: U16,
    addr: [u8; 16],
    reserved2: U32,
    nonce: U64,
    stage: U64,
}

const_assert_eq!(size_of::<HandleRepr>(), HANDLE_LEN);
const_assert_eq!(offset_of!(HandleRepr, family), 6);
const_assert_eq!(offset_of!(HandleRepr, port), 8);
const_assert_eq!(offset_of!(HandleRepr, addr), 12);
const_assert_eq!(offset_of!(HandleRepr, nonce), 32);
const_assert_eq!(offset_of!(HandleRepr, stage), HANDLE_STAGE_OFF);
static_assertions::const_assert!(HANDLE_LEN <= HANDLE_MAX_SIZE);

/// The hello's bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
struct HelloRepr {
    magic: U32,
    version: U16,
    index: u8,
    nsocks: u8,
    nonce: U64,
    conn_id: U64,
    chunk_bytes: U32,
    reserved: U32,
}

const_assert_eq!(size_of::<HelloRepr>(), HELLO_LEN);
const_assert_eq!(offset_of!(HelloRepr, index), 6);
const_assert_eq!(offset_of!(HelloRepr, nsocks), 7);
const_assert_eq!(offset_of!(HelloRepr, nonce), 8);
const_assert_eq!(offset_of!(HelloRepr, conn_id), 16);
const_assert_eq!(offset_of!(HelloRepr, chunk_bytes), 24);

/// The request header's bytes.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
struct HeaderRepr {
    size: U32,
    seq: U32,
}

const_assert_eq!(size_of::<HeaderRepr>(), HEADER_LEN);

/// `buf` as `T`, which must be exactly its length.
fn exact<T: FromBytes + KnownLayout + Immutable>(buf: &[u8]) -> Result<&T, Error> {
    let need = size_of::<T>();
    if buf.len() < need {
        return Err(Error::Truncated {
            need,
            have: buf.len(),
        });
    }
    if buf.len() > need {
        return Err(Error::TrailingBytes {
            declared: need,
            have: buf.len(),
        });
    }
    T::ref_from_bytes(buf).map_err(|_| Error::Truncated {
        need,
        have: buf.len(),
    })
}

/// Checks the magic and version both the handle and the hello start with.
fn check_magic_version(magic: u32, version: u16) -> Result<(), Error> {
    if magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    if version != VERSION {
        return Err(Error::BadVersion(version));
    }
    Ok(())
}

/// What a listen handle says: where to connect, and the nonce that proves the connector was
/// handed the handle.
///
/// IPv6 flow info and scope id are not carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockHandle {
    /// The listen comm's address.
    pub addr: SocketAddr,
    /// Random per listen comm; every hello repeats it.
    pub nonce: u64,
}

impl SockHandle {
    /// Parses the handle at the start of `buf` (NCCL's 128-byte handle: only its first
    /// [`HANDLE_LEN`] bytes are read, and of those the connect stage is not).
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let Some(head) = buf.get(..HANDLE_LEN) else {
            return Err(Error::Truncated {
                need: HANDLE_LEN,
                have: buf.len(),
            });
        };
        let h: &HandleRepr = exact(head)?;
        check_magic_version(h.magic.get(), h.version.get())?;
        if h.reserved0 != 0 || h.reserved1.get() != 0 || h.reserved2.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        let ip = match h.family {
            FAMILY_V4 => {
                if h.addr[4..].iter().any(|&b| b != 0) {
                    return Err(Error::NonZeroReserved(Field::Address));
                }
                IpAddr::V4(Ipv4Addr::new(h.addr[0], h.addr[1], h.addr[2], h.addr[3]))
            }
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(h.addr)),
            other => {
                return Err(Error::BadEnum {
                    field: Field::Family,
                    value: other.into(),
                })
            }
        };
        Ok(Self {
            addr: SocketAddr::new(ip, h.port.get()),
            nonce: h.nonce.get(),
        })
    }

    /// Bytes [`SockHandle::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HANDLE_LEN
    }

    /// Writes the handle into the front of `buf` with a zero connect stage; returns its
    /// length. Bytes after it are left alone.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let dst = out(buf, HANDLE_LEN)?;
        let (family, addr) = match self.addr.ip() {
            IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, a)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        };
        let h = HandleRepr {
            magic: U32::new(MAGIC),
            version: U16::new(VERSION),
            family,
            reserved0: 0,
            port: U16::new(self.addr.port()),
            reserved1: U16::ZERO,
            addr,
            reserved2: U32::ZERO,
            nonce: U64::new(self.nonce),
            stage: U64::ZERO,
        };
        dst.copy_from_slice(h.as_bytes());
        Ok(HANDLE_LEN)
    }

    /// The connect-stage field of the handle at the start of `buf`.
    pub fn stage(buf: &[u8]) -> Result<u64, Error> {
        let b = buf
            .get(HANDLE_STAGE_OFF..HANDLE_LEN)
            .ok_or(Error::Truncated {
                need: HANDLE_LEN,
                have: buf.len(),
            })?;
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        Ok(u64::from_le_bytes(v))
    }

    /// Sets the connect-stage field of the handle at the start of `buf`.
    pub fn set_stage(buf: &mut [u8], stage: u64) -> Result<(), Error> {
        let have = buf.len();
        let b = buf
            .get_mut(HANDLE_STAGE_OFF..HANDLE_LEN)
            .ok_or(Error::Truncated {
                need: HANDLE_LEN,
                have,
            })?;
        b.copy_from_slice(&stage.to_le_bytes());
        Ok(())
    }
}

/// The first bytes on every socket of a comm, sender to receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockHello {
    /// 0: the control socket; `1..=nsocks`: the data sockets.
    pub index: u8,
    /// Data sockets of the comm, `1..=MAX_SOCKETS`.
    pub nsocks: u8,
    /// The listen handle's nonce (checked by the listener, not here).
    pub nonce: u64,
    /// Random per connecting comm: groups the sockets of one comm.
    pub conn_id: u64,
    /// The sender's chunk size, a positive multiple of [`CHUNK_ALIGN`]; the receiver splits
    /// requests over the data sockets with the same value.
    pub chunk_bytes: u32,
}

impl SockHello {
    /// Checks the fields a hello must satisfy.
    fn check(index: u8, nsocks: u8, chunk_bytes: u32) -> Result<(), Error> {
        in_range(Field::Sockets, nsocks.into(), 1, MAX_SOCKETS)?;
        in_range(Field::SocketIndex, index.into(), 0, nsocks.into())?;
        if chunk_bytes == 0 {
            return Err(Error::OutOfRange {
                field: Field::ChunkBytes,
                value: 0,
                min: CHUNK_ALIGN.into(),
                max: u32::MAX.into(),
            });
        }
        if chunk_bytes % CHUNK_ALIGN != 0 {
            return Err(Error::Unaligned {
                field: Field::ChunkBytes,
                value: chunk_bytes.into(),
                align: CHUNK_ALIGN.into(),
            });
        }
        Ok(())
    }

    /// Parses exactly [`HELLO_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let h: &HelloRepr = exact(buf)?;
        check_magic_version(h.magic.get(), h.version.get())?;
        if h.reserved.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        Self::check(h.index, h.nsocks, h.chunk_bytes.get())?;
        Ok(Self {
            index: h.index,
            nsocks: h.nsocks,
            nonce: h.nonce.get(),
            conn_id: h.conn_id.get(),
            chunk_bytes: h.chunk_bytes.get(),
        })
    }

    /// Bytes [`SockHello::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HELLO_LEN
    }

    /// Writes the hello into the front of `buf`; returns its length. A hello that would not
    /// parse is refused.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        Self::check(self.index, self.nsocks, self.chunk_bytes)?;
        let dst = out(buf, HELLO_LEN)?;
        let h = HelloRepr {
            magic: U32::new(MAGIC),
            version: U16::new(VERSION),
            index: self.index,
            nsocks: self.nsocks,
            nonce: U64::new(self.nonce),
            conn_id: U64::new(self.conn_id),
            chunk_bytes: U32::new(self.chunk_bytes),
            reserved: U32::ZERO,
        };
        dst.copy_from_slice(h.as_bytes());
        Ok(HELLO_LEN)
    }

    /// The hello's bytes.
    pub fn to_bytes(&self) -> Result<[u8; HELLO_LEN], Error> {
        let mut b = [0u8; HELLO_LEN];
        self.emit(&mut b)?;
        Ok(b)
    }
}

/// What precedes every request on the control socket: its size, whether its payload follows
/// inline, and the low 32 bits of its sequence number (a check that both ends agree on which
/// request this is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockRequestHeader {
    /// Payload bytes, at most [`MAX_SIZE`].
    pub size: u32,
    /// The payload follows on the control socket (else on the data sockets).
    pub inline: bool,
    /// Low 32 bits of the request's sequence number.
    pub seq: u32,
}

impl SockRequestHeader {
    /// The header of request `seq` carrying `size` bytes; sizes above [`MAX_SIZE`] are
    /// refused.
    pub fn new(size: usize, inline: bool, seq: u64) -> Result<Self, Error> {
        let size = in_range(Field::Size, size as u64, 0, MAX_SIZE as usize)?;
        Ok(Self {
            size: size as u32,
            inline,
            seq: seq as u32,
        })
    }

    /// Whether this header is request `seq`'s (by its low 32 bits).
    pub const fn is_for(&self, seq: u64) -> bool {
        self.seq == seq as u32
    }

    /// Parses exactly [`HEADER_LEN`] bytes (every such input is a header).
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let h: &HeaderRepr = exact(buf)?;
        let v = h.size.get();
        Ok(Self {
            size: v & !INLINE,
            inline: v & INLINE != 0,
            seq: h.seq.get(),
        })
    }

    /// Bytes [`SockRequestHeader::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Size, self.size.into(), 0, MAX_SIZE as usize)?;
        let dst = out(buf, HEADER_LEN)?;
        let h = HeaderRepr {
            size: U32::new(self.size | if self.inline { INLINE } else { 0 }),
            seq: U32::new(self.seq),
        };
        dst.copy_from_slice(h.as_bytes());
        Ok(HEADER_LEN)
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> Result<[u8; HEADER_LEN], Error> {
        let mut b = [0u8; HEADER_LEN];
        self.emit(&mut b)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> SockHandle {
        SockHandle {
            addr: "127.0.0.1:4242".parse().unwrap(),
            nonce: 0xdead_beef_0102_0304,
        }
    }

    fn handle_bytes(h: &SockHandle) -> [u8; HANDLE_MAX_SIZE] {
        let mut b = [0xa5u8; HANDLE_MAX_SIZE];
        assert_eq!(h.emit(&mut b), Ok(HANDLE_LEN));
        b
    }

    #[test]
    fn handle_bytes_are_the_documented_layout() {
        let b = handle_bytes(&v4());
        let mut want = [0u8; HANDLE_LEN];
        want[0..4].copy_from_slice(b"TXSK");
        want[4] = 1;
        want[6] = 4;
        want[8..10].copy_from_slice(&4242u16.to_le_bytes());
        want[12..16].copy_from_slice(&[127, 0, 0, 1]);
        want[32..40].copy_from_slice(&0xdead_beef_0102_0304u64.to_le_bytes());
        assert_eq!(b[..HANDLE_LEN], want);
        assert_eq!(MAGIC, 0x4b53_5854);
        // Bytes after ours are the caller's.
        assert!(b[HANDLE_LEN..].iter().all(|&x| x == 0xa5));
    }

    #[test]
    fn handle_round_trips_v4_and_v6() {
        let h6 = SockHandle {
            addr: "[fe80::1:2]:65535".parse().unwrap(),
            nonce: 1,
        };
        for h in [v4(), h6] {
            let b = handle_bytes(&h);
            assert_eq!(SockHandle::parse(&b), Ok(h));
            assert_eq!(SockHandle::parse(&b[..HANDLE_LEN]), Ok(h));
        }
    }

    #[test]
    fn handle_stage_is_the_connectors_and_not_parsed() {
        let mut b = handle_bytes(&v4());
        assert_eq!(SockHandle::stage(&b), Ok(0));
        SockHandle::set_stage(&mut b, 0x1122_3344_5566_7788).unwrap();
        assert_eq!(SockHandle::stage(&b), Ok(0x1122_3344_5566_7788));
        assert_eq!(b[40], 0x88);
        assert_eq!(SockHandle::parse(&b), Ok(v4()));
        let short = [0u8; HANDLE_LEN - 1];
        let need = Error::Truncated {
            need: HANDLE_LEN,
            have: HANDLE_LEN - 1,
        };
        assert_eq!(SockHandle::stage(&short), Err(need));
        assert_eq!(SockHandle::set_stage(&mut [0u8; 47], 1), Err(need));
    }

    #[test]
    fn handle_rejections() {
        let good = handle_bytes(&v4());
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            SockHandle::parse(&b)
        };
        assert_eq!(
            SockHandle::parse(&good[..HANDLE_LEN - 1]),
            Err(Error::Truncated {
                need: HANDLE_LEN,
                have: HANDLE_LEN - 1
            })
        );
        assert_eq!(with(0, b'X'), Err(Error::BadMagic(0x4b53_5858)));
        assert_eq!(with(4, 2), Err(Error::BadVersion(2)));
        assert_eq!(
            with(6, 5),
            Err(Error::BadEnum {
                field: Field::Family,
                value: 5
            })
        );
        for i in [7, 10, 11, 28, 29, 30, 31] {
            assert_eq!(
                with(i, 1),
                Err(Error::NonZeroReserved(Field::Reserved)),
                "{i}"
            );
        }
        for i in 16..28 {
            assert_eq!(
                with(i, 1),
                Err(Error::NonZeroReserved(Field::Address)),
                "{i}"
            );
        }
        let mut small = [0u8; HANDLE_LEN - 1];
        assert_eq!(
            v4().emit(&mut small),
            Err(Error::BufferTooSmall {
                need: HANDLE_LEN,
                have: HANDLE_LEN - 1
            })
        );
    }

    fn hello() -> SockHello {
        SockHello {
            index: 2,
            nsocks: 4,
            nonce: 7,
            conn_id: 0x0102_0304_0506_0708,
            chunk_bytes: 512 << 10,
        }
    }

    #[test]
    fn hello_bytes_are_the_documented_layout() {
        let b = hello().to_bytes().unwrap();
        let mut want = [0u8; HELLO_LEN];
        want[0..4].copy_from_slice(b"TXSK");
        want[4] = 1;
        want[6] = 2;
        want[7] = 4;
        want[8] = 7;
        want[16..24].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        want[24..28].copy_from_slice(&(512u32 << 10).to_le_bytes());
        assert_eq!(b, want);
        assert_eq!(SockHello::parse(&b), Ok(hello()));
    }

    #[test]
    fn hello_round_trips_at_the_bounds() {
        for (index, nsocks) in [(0, 1), (1, 1), (0, 16), (16, 16)] {
            for chunk_bytes in [CHUNK_ALIGN, u32::MAX - (CHUNK_ALIGN - 1)] {
                let h = SockHello {
                    index,
                    nsocks,
                    chunk_bytes,
                    ..hello()
                };
                let mut b = [0u8; 40];
                assert_eq!(h.emit(&mut b), Ok(HELLO_LEN));
                assert_eq!(SockHello::parse(&b[..HELLO_LEN]), Ok(h));
            }
        }
    }

    #[test]
    fn hello_rejections() {
        let good = hello().to_bytes().unwrap();
        let with = |i: usize, v: &[u8]| {
            let mut b = good;
            b[i..i + v.len()].copy_from_slice(v);
            SockHello::parse(&b)
        };
        assert_eq!(
            SockHello::parse(&good[..31]),
            Err(Error::Truncated { need: 32, have: 31 })
        );
        assert_eq!(
            SockHello::parse(&[0u8; 33]),
            Err(Error::TrailingBytes {
                declared: 32,
                have: 33
            })
        );
        assert_eq!(with(3, b"X"), Err(Error::BadMagic(0x5853_5854)));
        assert_eq!(with(4, &[0, 1]), Err(Error::BadVersion(0x100)));
        for i in 28..32 {
            assert_eq!(with(i, &[1]), Err(Error::NonZeroReserved(Field::Reserved)));
        }
        let socks = |v: u64| Error::OutOfRange {
            field: Field::Sockets,
            value: v,
            min: 1,
            max: 16,
        };
        assert_eq!(with(7, &[0]), Err(socks(0)));
        assert_eq!(with(7, &[17]), Err(socks(17)));
        assert_eq!(
            with(6, &[5]),
            Err(Error::OutOfRange {
                field: Field::SocketIndex,
                value: 5,
                min: 0,
                max: 4
            })
        );
        assert_eq!(
            with(24, &0u32.to_le_bytes()),
            Err(Error::OutOfRange {
                field: Field::ChunkBytes,
                value: 0,
                min: 4096,
                max: u32::MAX.into()
            })
        );
        let unaligned = Error::Unaligned {
            field: Field::ChunkBytes,
            value: 100,
            align: 4096,
        };
        assert_eq!(with(24, &100u32.to_le_bytes()), Err(unaligned));
        // Emit refuses what parse would.
        let bad = SockHello {
            chunk_bytes: 100,
            ..hello()
        };
        assert_eq!(bad.to_bytes(), Err(unaligned));
        let bad = SockHello {
            index: 5,
            ..hello()
        };
        assert!(matches!(bad.to_bytes(), Err(Error::OutOfRange { .. })));
        assert_eq!(
            hello().emit(&mut [0u8; 31]),
            Err(Error::BufferTooSmall { need: 32, have: 31 })
        );
    }

    #[test]
    fn header_round_trips_and_keeps_the_low_seq_bits() {
        let h = SockRequestHeader::new(4097, true, 0x1_0000_0003).unwrap();
        assert_eq!(h.seq, 3);
        assert!(h.is_for(3) && h.is_for(0x1_0000_0003) && !h.is_for(4));
        let b = h.to_bytes().unwrap();
        let mut want = [0u8; 8];
        want[..4].copy_from_slice(&(4097u32 | 1 << 31).to_le_bytes());
        want[4] = 3;
        assert_eq!(b, want);
        assert_eq!(SockRequestHeader::parse(&b), Ok(h));
        for (size, inline) in [(0, false), (0, true), (MAX_SIZE, false), (MAX_SIZE, true)] {
            let h = SockRequestHeader::new(size as usize, inline, u64::MAX).unwrap();
            assert_eq!(SockRequestHeader::parse(&h.to_bytes().unwrap()), Ok(h));
        }
    }

    #[test]
    fn header_rejections() {
        let too_big = Error::OutOfRange {
            field: Field::Size,
            value: 1 << 31,
            min: 0,
            max: MAX_SIZE.into(),
        };
        assert_eq!(SockRequestHeader::new(1 << 31, false, 0), Err(too_big));
        let h = SockRequestHeader {
            size: 1 << 31,
            inline: false,
            seq: 0,
        };
        assert_eq!(h.to_bytes(), Err(too_big));
        assert_eq!(
            SockRequestHeader::parse(&[0; 7]),
            Err(Error::Truncated { need: 8, have: 7 })
        );
        assert_eq!(
            SockRequestHeader::parse(&[0; 9]),
            Err(Error::TrailingBytes {
                declared: 8,
                have: 9
            })
        );
        let ok = SockRequestHeader::new(1, false, 0).unwrap();
        assert_eq!(
            ok.emit(&mut [0u8; 7]),
            Err(Error::BufferTooSmall { need: 8, have: 7 })
        );
    }
}
