//! Setup messages: the metadata blobs NIXL carries between agents (`ConnInfo`,
//! `RegionToken`) and the control-stream handshake that creates data comms (`Hello`,
//! `ListenHandles`, `Limits`).

use core::mem::{offset_of, size_of};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    expect_len, impl_repr, in_range, open, out, put, Error, Field, Header, Kind, MAX_CHANNELS,
    MAX_NAME, MAX_NOTIF,
};
use crate::abi::HANDLE_MAX_SIZE;
use crate::mem::MemKind;

/// Address family tag for IPv4 in [`ConnInfo`].
const FAMILY_V4: u8 = 4;
/// Address family tag for IPv6 in [`ConnInfo`].
const FAMILY_V6: u8 = 6;

/// Fixed part of [`ConnInfo`]; the agent name follows.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ConnInfoFixed {
    hdr: Header,
    protocol: U16,
    channels: U16,
    family: u8,
    reserved0: u8,
    port: U16,
    /// IPv4 uses the first 4 bytes; the rest must be zero.
    addr: [u8; 16],
    name_len: U16,
    reserved1: U16,
}

const_assert_eq!(size_of::<ConnInfoFixed>(), 40);
const_assert_eq!(offset_of!(ConnInfoFixed, protocol), 12);
const_assert_eq!(offset_of!(ConnInfoFixed, channels), 14);
const_assert_eq!(offset_of!(ConnInfoFixed, family), 16);
const_assert_eq!(offset_of!(ConnInfoFixed, port), 18);
const_assert_eq!(offset_of!(ConnInfoFixed, addr), 20);
const_assert_eq!(offset_of!(ConnInfoFixed, name_len), 36);

/// Validates an agent name's bytes (length already range-checked).
fn agent_name(bytes: &[u8]) -> Result<&str, Error> {
    core::str::from_utf8(bytes).map_err(|_| Error::BadUtf8(Field::AgentName))
}

/// The `getConnInfo` blob: how to reach an agent's backend and what it speaks.
///
/// IPv6 flow info and scope id are not carried: they mean nothing on another host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo<'a> {
    /// Control protocol version the agent speaks (negotiated by the backend, not checked here).
    pub protocol: u16,
    /// The backend's control-stream TCP listener.
    pub addr: SocketAddr,
    /// Data channels per peer, `1..=MAX_CHANNELS`.
    pub channels: u16,
    /// NIXL agent name, `1..=MAX_NAME` bytes.
    pub name: &'a str,
}

impl<'a> ConnInfo<'a> {
    /// Parses one whole `ConnInfo` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<ConnInfoFixed>(buf, Kind::ConnInfo)?;
        let channels = in_range(Field::Channels, f.channels.get().into(), 1, MAX_CHANNELS)?;
        let name_len = in_range(Field::AgentName, f.name_len.get().into(), 1, MAX_NAME)?;
        expect_len(buf, size_of::<ConnInfoFixed>(), name_len)?;
        if f.reserved0 != 0 || f.reserved1.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        let ip = match f.family {
            FAMILY_V4 => {
                if f.addr[4..].iter().any(|&b| b != 0) {
                    return Err(Error::NonZeroReserved(Field::Address));
                }
                IpAddr::V4(Ipv4Addr::new(f.addr[0], f.addr[1], f.addr[2], f.addr[3]))
            }
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(f.addr)),
            other => {
                return Err(Error::BadEnum {
                    field: Field::Family,
                    value: other.into(),
                })
            }
        };
        Ok(Self {
            protocol: f.protocol.get(),
            addr: SocketAddr::new(ip, f.port.get()),
            channels: channels as u16,
            name: agent_name(rest)?,
        })
    }

    /// Bytes [`ConnInfo::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ConnInfoFixed>() + self.name.len()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Channels, self.channels.into(), 1, MAX_CHANNELS)?;
        in_range(Field::AgentName, self.name.len() as u64, 1, MAX_NAME)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let (family, addr) = match self.addr.ip() {
            IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (FAMILY_V4, a)
            }
            IpAddr::V6(v6) => (FAMILY_V6, v6.octets()),
        };
        let fixed = ConnInfoFixed {
            hdr: Header::new(Kind::ConnInfo, len as u32),
            protocol: U16::new(self.protocol),
            channels: U16::new(self.channels),
            family,
            reserved0: 0,
            port: U16::new(self.addr.port()),
            addr,
            name_len: U16::new(self.name.len() as u16),
            reserved1: U16::ZERO,
        };
        put(dst, fixed.as_bytes(), self.name.as_bytes(), &[]);
        Ok(len)
    }
}
impl_repr!(ConnInfo<'a>, Kind::ConnInfo);

/// Fixed (and only) part of [`RegionToken`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct RegionTokenFixed {
    hdr: Header,
    base: U64,
    len: U64,
    region: U64,
    key: U64,
    device: U32,
    mem: U16,
    reserved: U16,
}

const_assert_eq!(size_of::<RegionTokenFixed>(), 52);
const_assert_eq!(offset_of!(RegionTokenFixed, base), 12);
const_assert_eq!(offset_of!(RegionTokenFixed, len), 20);
const_assert_eq!(offset_of!(RegionTokenFixed, region), 28);
const_assert_eq!(offset_of!(RegionTokenFixed, key), 36);
const_assert_eq!(offset_of!(RegionTokenFixed, device), 44);
const_assert_eq!(offset_of!(RegionTokenFixed, mem), 48);

/// The `getPublicData` blob: a registered region as a peer may name it in segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionToken {
    /// Start address in the owner's address space.
    pub base: u64,
    /// Length in bytes; `base + len` never overflows.
    pub len: u64,
    /// Host or GPU memory (on the wire: [`MemKind::to_wire`], NIXL's values).
    pub mem: MemKind,
    /// CUDA device ordinal for VRAM (NIXL's `devId`).
    pub device: u32,
    /// The owner's id for the registration.
    pub region: u64,
    /// Random key the owner checks on every segment naming this region.
    pub key: u64,
}

impl RegionToken {
    /// Parses one whole `RegionToken` frame.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (f, _) = open::<RegionTokenFixed>(buf, Kind::RegionToken)?;
        expect_len(buf, size_of::<RegionTokenFixed>(), 0)?;
        if f.reserved.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        let mem = MemKind::from_wire(f.mem.get()).ok_or(Error::BadEnum {
            field: Field::MemKind,
            value: f.mem.get().into(),
        })?;
        let t = Self {
            base: f.base.get(),
            len: f.len.get(),
            mem,
            device: f.device.get(),
            region: f.region.get(),
            key: f.key.get(),
        };
        t.check_range()?;
        Ok(t)
    }

    fn check_range(&self) -> Result<(), Error> {
        match self.base.checked_add(self.len) {
            Some(_) => Ok(()),
            None => Err(Error::RangeOverflow {
                field: Field::Region,
                index: 0,
            }),
        }
    }

    /// Bytes [`RegionToken::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<RegionTokenFixed>()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        self.check_range()?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = RegionTokenFixed {
            hdr: Header::new(Kind::RegionToken, len as u32),
            base: U64::new(self.base),
            len: U64::new(self.len),
            region: U64::new(self.region),
            key: U64::new(self.key),
            device: U32::new(self.device),
            mem: U16::new(self.mem.to_wire()),
            reserved: U16::ZERO,
        };
        put(dst, fixed.as_bytes(), &[], &[]);
        Ok(len)
    }
}
impl_repr!(RegionToken, Kind::RegionToken);

/// Fixed part of [`Hello`]; the agent name follows.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct HelloFixed {
    hdr: Header,
    channels: U16,
    name_len: U16,
}

const_assert_eq!(size_of::<HelloFixed>(), 16);
const_assert_eq!(offset_of!(HelloFixed, channels), 12);
const_assert_eq!(offset_of!(HelloFixed, name_len), 14);

/// First message on a control stream: the sender names itself and asks the receiver to open
/// `channels` listen comms for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Data channels wanted, `1..=MAX_CHANNELS`.
    pub channels: u16,
    /// The sender's NIXL agent name, `1..=MAX_NAME` bytes.
    pub name: &'a str,
}

impl<'a> Hello<'a> {
    /// Parses one whole `Hello` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<HelloFixed>(buf, Kind::Hello)?;
        let channels = in_range(Field::Channels, f.channels.get().into(), 1, MAX_CHANNELS)?;
        let name_len = in_range(Field::AgentName, f.name_len.get().into(), 1, MAX_NAME)?;
        expect_len(buf, size_of::<HelloFixed>(), name_len)?;
        Ok(Self {
            channels: channels as u16,
            name: agent_name(rest)?,
        })
    }

    /// Bytes [`Hello::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<HelloFixed>() + self.name.len()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Channels, self.channels.into(), 1, MAX_CHANNELS)?;
        in_range(Field::AgentName, self.name.len() as u64, 1, MAX_NAME)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = HelloFixed {
            hdr: Header::new(Kind::Hello, len as u32),
            channels: U16::new(self.channels),
            name_len: U16::new(self.name.len() as u16),
        };
        put(dst, fixed.as_bytes(), self.name.as_bytes(), &[]);
        Ok(len)
    }
}
impl_repr!(Hello<'a>, Kind::Hello);

/// One opaque ncclNet listen handle, as `listen` filled it.
pub type ListenHandle = [u8; HANDLE_MAX_SIZE];

/// Fixed part of [`ListenHandles`]; `count` handles follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ListenHandlesFixed {
    hdr: Header,
    count: U16,
    split: U16,
    chunk_bytes: U32,
}

const_assert_eq!(size_of::<ListenHandlesFixed>(), 20);
const_assert_eq!(offset_of!(ListenHandlesFixed, count), 12);
const_assert_eq!(offset_of!(ListenHandlesFixed, chunk_bytes), 16);
const_assert_eq!(size_of::<ListenHandle>(), 128);

/// Answer to a [`Hello`]: one listen handle per channel, in channel order, and the chunk size
/// the sender's plans use (both sides must plan alike: the receiver posts the same chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenHandles<'a> {
    /// Bytes per chunk, `1..=MAX_CHUNK_BYTES`.
    pub chunk_bytes: u32,
    /// Most chunks the sender cuts a short transfer into, `1..=MAX_SPLIT_CHUNKS` (1: never
    /// cut below `chunk_bytes`); a session uses the smaller of its two ends' values.
    pub split: u16,
    /// `1..=MAX_CHANNELS` handles.
    pub handles: &'a [ListenHandle],
}

impl<'a> ListenHandles<'a> {
    /// Parses one whole `ListenHandles` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<ListenHandlesFixed>(buf, Kind::ListenHandles)?;
        let count = in_range(Field::Handles, f.count.get().into(), 1, MAX_CHANNELS)?;
        expect_len(
            buf,
            size_of::<ListenHandlesFixed>(),
            count * HANDLE_MAX_SIZE,
        )?;
        let split = in_range(
            Field::Split,
            f.split.get().into(),
            1,
            crate::plan::MAX_SPLIT_CHUNKS.into(),
        )? as u16;
        let chunk_bytes = in_range(
            Field::ChunkBytes,
            f.chunk_bytes.get().into(),
            1,
            crate::plan::MAX_CHUNK_BYTES as usize,
        )? as u32;
        let handles =
            <[ListenHandle]>::ref_from_bytes(rest).map_err(|_| Error::LengthMismatch {
                declared: buf.len(),
                expected: size_of::<ListenHandlesFixed>() + count * HANDLE_MAX_SIZE,
            })?;
        Ok(Self {
            chunk_bytes,
            split,
            handles,
        })
    }

    /// Bytes [`ListenHandles::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ListenHandlesFixed>() + self.handles.len() * HANDLE_MAX_SIZE
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Handles, self.handles.len() as u64, 1, MAX_CHANNELS)?;
        in_range(
            Field::Split,
            self.split.into(),
            1,
            crate::plan::MAX_SPLIT_CHUNKS.into(),
        )?;
        in_range(
            Field::ChunkBytes,
            self.chunk_bytes.into(),
            1,
            crate::plan::MAX_CHUNK_BYTES as usize,
        )?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = ListenHandlesFixed {
            hdr: Header::new(Kind::ListenHandles, len as u32),
            count: U16::new(self.handles.len() as u16),
            split: U16::new(self.split),
            chunk_bytes: U32::new(self.chunk_bytes),
        };
        put(dst, fixed.as_bytes(), self.handles.as_bytes(), &[]);
        Ok(len)
    }
}
impl_repr!(ListenHandles<'a>, Kind::ListenHandles);

/// Fixed (and only) part of [`Limits`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct LimitsFixed {
    hdr: Header,
    max_notif: U32,
    reserved: U32,
}

const_assert_eq!(size_of::<LimitsFixed>(), 20);
const_assert_eq!(offset_of!(LimitsFixed, max_notif), 12);
const_assert_eq!(offset_of!(LimitsFixed, reserved), 16);

/// What the answering side of a handshake accepts, sent after its [`ListenHandles`]: the
/// initiator refuses to send more, with a message naming the bound, rather than have the
/// stream closed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest notification taken, at most [`MAX_NOTIF`](super::MAX_NOTIF).
    pub max_notif: u32,
}

impl Limits {
    /// Parses one whole `Limits` frame.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (f, _) = open::<LimitsFixed>(buf, Kind::Limits)?;
        expect_len(buf, size_of::<LimitsFixed>(), 0)?;
        if f.reserved.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        let max_notif = in_range(Field::Notif, f.max_notif.get().into(), 0, MAX_NOTIF)? as u32;
        Ok(Self { max_notif })
    }

    /// Bytes [`Limits::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<LimitsFixed>()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Notif, self.max_notif.into(), 0, MAX_NOTIF)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = LimitsFixed {
            hdr: Header::new(Kind::Limits, len as u32),
            max_notif: U32::new(self.max_notif),
            reserved: U32::ZERO,
        };
        put(dst, fixed.as_bytes(), &[], &[]);
        Ok(len)
    }
}
impl_repr!(Limits, Kind::Limits);
