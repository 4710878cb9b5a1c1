//! Wire formats: the NIXL backend's metadata blobs and its control-stream messages.
//!
//! Every message is one little-endian frame that starts with a [`Header`]; parsing checks it
//! and every count against a fixed maximum, then hands out borrowed, validated views. Emitting
//! writes into a caller's buffer. Nothing here allocates, panics or reads past its input.
//!
//! # Layout (little-endian, no padding, byte offsets)
//!
//! | kind | fixed part after the 12-byte header | then |
//! |---|---|---|
//! | 1 `ConnInfo` (40) | protocol u16 @12, channels u16 @14, family u8 @16 (4/6), 0 u8, port u16 @18, addr [u8;16] @20, name_len u16 @36, 0 u16 | name |
//! | 2 `RegionToken` (52) | base u64 @12, len u64 @20, region u64 @28, key u64 @36, device u32 @44, mem u16 @48, 0 u16 | — |
//! | 3 `Hello` (16) | channels u16 @12, name_len u16 @14 | name |
//! | 4 `ListenHandles` (20) | count u16 @12, 0 u16, chunk_bytes u32 @16 | count × 128-byte handle |
//! | 5 `WriteAnnounce` (32) | xfer u64 @12, count u32 @20, notif_len u32 @24, flags u32 @28 (bit 0: notif attached, bit 1: data inline) | count × [`Segment`], notif, inline data (the segments' total, at most [`MAX_INLINE_WRITE`]) |
//! | 6 `ReadRequest` (28) | xfer u64 @12, count u32 @20, flags u32 @24 (bit 0: data inline OK) | count × [`Segment`] |
//! | 7 `ReadAnnounce` (20) | xfer u64 @12 | — |
//! | 8 `Ack` (24) | xfer u64 @12, status i32 @20 | — |
//! | 9 `Notif` (16) | msg_len u32 @12 | msg |
//! | 10 `Error` (28) | code u32 @12, text_len u32 @16, xfer u64 @20 | text |
//! | 11 `ReadData` (28) | xfer u64 @12, data_len u32 @20, 0 u32 | data |
//! | 12 `Limits` (20) | max_notif u32 @12, 0 u32 | — |
//! | 13 `Keepalive` (16) | 0 u32 @12 | — |
//!
//! [`Segment`] (32): region u64, key u64, addr u64, len u64. Reserved fields must be zero, so
//! every accepted frame re-emits to the same bytes.
//!
//! tcpxsock's own formats (listen handle, per-socket hello, request header) have no common
//! header; they are in [`sock`], checked the same way and with the same [`Error`].

use core::fmt;

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

mod control;
mod meta;
pub mod sock;
#[cfg(test)]
mod tests;

pub use control::{
    Ack, ErrorMsg, Keepalive, Notif, ReadAnnounce, ReadData, ReadRequest, Segment, WriteAnnounce,
};
pub use meta::{ConnInfo, Hello, Limits, ListenHandle, ListenHandles, RegionToken};

/// `b"TCPX"` read as a little-endian `u32`: the first four bytes of every frame are "TCPX".
pub const MAGIC: u32 = u32::from_le_bytes(*b"TCPX");
/// Wire format version this code emits and the only one it accepts. 2: `ReadRequest` flags
/// and `ReadData` (inline READs). 3: `WriteAnnounce` inline data (inline WRITEs),
/// `ListenHandles` chunk size. 4: notifications up to [`MAX_NOTIF`] (16 MiB), `Limits` (what
/// the answering side of a handshake accepts), `Keepalive`. 5: `ListenHandles` split (what
/// was a reserved zero): a transfer shorter than `split` chunks is cut into smaller ones
/// (`plan::PlanConfig::sized_for`), both peers using the smaller of their two values.
pub const VERSION: u16 = 5;
/// Bytes of the common [`Header`].
pub const HEADER_LEN: usize = 12;
/// Longest agent name (bytes of UTF-8) in [`ConnInfo`] and [`Hello`].
pub const MAX_NAME: usize = 256;
/// Most data channels (and so listen handles) per peer.
pub const MAX_CHANNELS: usize = 16;
/// Most segments in one [`WriteAnnounce`] or [`ReadRequest`].
pub const MAX_SEGMENTS: usize = 1024;
/// Longest notification payload in [`WriteAnnounce`] and [`Notif`] the format carries; each
/// agent announces its own bound (at most this) in [`Limits`].
pub const MAX_NOTIF: usize = 16 << 20;
/// Most bytes a [`ReadData`] carries (a READ this small may be answered inline).
pub const MAX_INLINE: usize = 32 * 1024;
/// Most bytes of data a [`WriteAnnounce`] carries inline (with the largest segment list and
/// notification it still fits [`MAX_FRAME`]).
pub const MAX_INLINE_WRITE: usize = 16 * 1024;
/// Longest error text in [`ErrorMsg`].
pub const MAX_ERROR_TEXT: usize = 512;
/// Largest frame without a notification: every other kind, and every announce's fixed part,
/// segments and inline data, fits it.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Largest frame any reader accepts (the largest notification and an announce around it);
/// [`peek_frame`] rejects bigger declared lengths before a single body byte is buffered, and
/// [`peek_frame_within`] a reader's own smaller bound.
pub const MAX_FRAME: usize = MAX_NOTIF + MAX_CONTROL_FRAME;

/// The common frame header. `len` counts the whole frame, header included.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: U32,
    /// Always [`VERSION`].
    pub version: U16,
    /// A [`Kind`] value.
    pub kind: U16,
    /// Whole frame length in bytes, this header included.
    pub len: U32,
}

static_assertions::const_assert_eq!(core::mem::size_of::<Header>(), HEADER_LEN);
static_assertions::const_assert_eq!(core::mem::offset_of!(Header, magic), 0);
static_assertions::const_assert_eq!(core::mem::offset_of!(Header, version), 4);
static_assertions::const_assert_eq!(core::mem::offset_of!(Header, kind), 6);
static_assertions::const_assert_eq!(core::mem::offset_of!(Header, len), 8);

impl Header {
    /// A header for a frame of `kind` that is `len` bytes long in total.
    pub const fn new(kind: Kind, len: u32) -> Self {
        Self {
            magic: U32::new(MAGIC),
            version: U16::new(VERSION),
            kind: U16::new(kind as u16),
            len: U32::new(len),
        }
    }
}

/// Message kinds, as carried in [`Header::kind`].
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`ConnInfo`]: the `getConnInfo` blob.
    ConnInfo = 1,
    /// [`RegionToken`]: the `getPublicData` blob.
    RegionToken = 2,
    /// [`Hello`]: a peer asks for data comms.
    Hello = 3,
    /// [`ListenHandles`]: the answer to a hello.
    ListenHandles = 4,
    /// [`WriteAnnounce`]: data for a WRITE follows on the data comms.
    WriteAnnounce = 5,
    /// [`ReadRequest`]: the initiator asks the target to send.
    ReadRequest = 6,
    /// [`ReadAnnounce`]: data for a READ follows on the data comms.
    ReadAnnounce = 7,
    /// [`Ack`]: a WRITE landed (or failed).
    Ack = 8,
    /// [`Notif`]: a notification for `getNotifs`.
    Notif = 9,
    /// [`ErrorMsg`]: the peer refused something.
    Error = 10,
    /// [`ReadData`]: a READ's data, inline.
    ReadData = 11,
    /// [`Limits`]: what the answering side of a handshake accepts.
    Limits = 12,
    /// [`Keepalive`]: the sender is alive (and holding something back).
    Keepalive = 13,
}

impl Kind {
    /// Every kind, in wire-value order.
    pub const ALL: [Kind; 13] = [
        Kind::ConnInfo,
        Kind::RegionToken,
        Kind::Hello,
        Kind::ListenHandles,
        Kind::WriteAnnounce,
        Kind::ReadRequest,
        Kind::ReadAnnounce,
        Kind::Ack,
        Kind::Notif,
        Kind::Error,
        Kind::ReadData,
        Kind::Limits,
        Kind::Keepalive,
    ];

    /// The kind with wire value `v`, if any.
    pub const fn from_u16(v: u16) -> Option<Kind> {
        if v >= 1 && v as usize <= Self::ALL.len() {
            Some(Self::ALL[v as usize - 1])
        } else {
            None
        }
    }
}

/// A field named in an [`Error`], so a rejection says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Agent name (`ConnInfo`, `Hello`).
    AgentName,
    /// Channel count (`ConnInfo`, `Hello`).
    Channels,
    /// Control address family tag (`ConnInfo`).
    Family,
    /// Control address bytes (`ConnInfo`).
    Address,
    /// Memory kind (`RegionToken`).
    MemKind,
    /// Region base + length (`RegionToken`).
    Region,
    /// Listen handle count (`ListenHandles`).
    Handles,
    /// Chunk size (`ListenHandles`).
    ChunkBytes,
    /// Most chunks a short transfer is cut into (`ListenHandles`).
    Split,
    /// Segment list (`WriteAnnounce`, `ReadRequest`).
    Segments,
    /// Flag bits (`WriteAnnounce`, `ReadRequest`).
    Flags,
    /// Inline data (`ReadData`, `WriteAnnounce`).
    Data,
    /// Notification bytes (`WriteAnnounce`, `Notif`).
    Notif,
    /// Error text (`ErrorMsg`).
    ErrorText,
    /// A reserved field that must be zero.
    Reserved,
    /// Data sockets per comm (tcpxsock [`sock::SockHello`]).
    Sockets,
    /// A socket's index within its comm (tcpxsock [`sock::SockHello`]).
    SocketIndex,
    /// A request's payload size (tcpxsock [`sock::SockRequestHeader`]).
    Size,
}

/// Why bytes were not accepted as a message, or a message could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The input ends before the header or before the declared length.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The input continues after the declared length.
    TrailingBytes {
        /// Declared frame length.
        declared: usize,
        /// Bytes present.
        have: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    BadMagic(u32),
    /// A version other than [`VERSION`].
    BadVersion(u16),
    /// A kind value no [`Kind`] has.
    BadKind(u16),
    /// A valid kind, but not the one the per-kind parser reads.
    UnexpectedKind {
        /// Kind the parser reads.
        expected: Kind,
        /// Kind in the header.
        found: Kind,
    },
    /// Declared length above the reader's bound ([`MAX_FRAME`] at most).
    FrameTooLarge {
        /// Declared frame length.
        len: u32,
        /// The bound it exceeds.
        max: u32,
    },
    /// Declared length disagrees with what the fixed part and its counts add up to.
    LengthMismatch {
        /// Length in the header.
        declared: usize,
        /// Length implied by the message's own fields.
        expected: usize,
    },
    /// A count or size outside its allowed range.
    OutOfRange {
        /// Which field.
        field: Field,
        /// The value found.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// `base + len` (or `addr + len` of segment `index`) overflows `u64`.
    RangeOverflow {
        /// Which field.
        field: Field,
        /// Segment index; 0 for a single region.
        index: usize,
    },
    /// Text that must be UTF-8 is not.
    BadUtf8(Field),
    /// An enum field holds a value with no meaning.
    BadEnum {
        /// Which field.
        field: Field,
        /// The value found.
        value: u32,
    },
    /// A reserved field or padding byte is not zero.
    NonZeroReserved(Field),
    /// A size that must be a multiple of `align` is not.
    Unaligned {
        /// Which field.
        field: Field,
        /// The value found.
        value: u64,
        /// The multiple it must be.
        align: u64,
    },
    /// The emit buffer is shorter than [`Message::buffer_len`].
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes offered.
        have: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { need, have } => {
                write!(f, "truncated: need {need} bytes, have {have}")
            }
            Error::TrailingBytes { declared, have } => {
                write!(f, "{have} bytes for a {declared}-byte frame")
            }
            Error::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            Error::BadVersion(v) => write!(f, "unsupported wire version {v}"),
            Error::BadKind(k) => write!(f, "unknown message kind {k}"),
            Error::UnexpectedKind { expected, found } => {
                write!(f, "expected {expected:?}, found {found:?}")
            }
            Error::FrameTooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the {max}-byte bound")
            }
            Error::LengthMismatch { declared, expected } => {
                write!(f, "declared length {declared}, contents need {expected}")
            }
            Error::OutOfRange {
                field,
                value,
                min,
                max,
            } => write!(f, "{field:?} = {value}, allowed {min}..={max}"),
            Error::RangeOverflow { field, index } => {
                write!(f, "{field:?}[{index}]: end overflows u64")
            }
            Error::BadUtf8(field) => write!(f, "{field:?} is not UTF-8"),
            Error::BadEnum { field, value } => write!(f, "{field:?} has no value {value}"),
            Error::NonZeroReserved(field) => write!(f, "{field:?}: reserved bits set"),
            Error::Unaligned {
                field,
                value,
                align,
            } => write!(f, "{field:?} = {value}, not a multiple of {align}"),
            Error::BufferTooSmall { need, have } => {
                write!(f, "emit needs {need} bytes, buffer has {have}")
            }
        }
    }
}

impl core::error::Error for Error {}

/// Checks the header of a buffer holding one whole frame; returns its kind.
///
/// The buffer must be exactly the declared length: shorter is [`Error::Truncated`], longer is
/// [`Error::TrailingBytes`].
pub fn check_header(buf: &[u8]) -> Result<Kind, Error> {
    let (kind, len) = header_fields(buf, MAX_FRAME)?;
    if buf.len() < len {
        return Err(Error::Truncated {
            need: len,
            have: buf.len(),
        });
    }
    if buf.len() > len {
        return Err(Error::TrailingBytes {
            declared: len,
            have: buf.len(),
        });
    }
    Ok(kind)
}

/// Validates the header fields that do not depend on the rest of the buffer; `max` bounds the
/// declared length.
fn header_fields(buf: &[u8], max: usize) -> Result<(Kind, usize), Error> {
    let (hdr, _) = Header::ref_from_prefix(buf).map_err(|_| Error::Truncated {
        need: HEADER_LEN,
        have: buf.len(),
    })?;
    if hdr.magic.get() != MAGIC {
        return Err(Error::BadMagic(hdr.magic.get()));
    }
    if hdr.version.get() != VERSION {
        return Err(Error::BadVersion(hdr.version.get()));
    }
    let kind = Kind::from_u16(hdr.kind.get()).ok_or(Error::BadKind(hdr.kind.get()))?;
    let len = hdr.len.get();
    if len as usize > max.min(MAX_FRAME) {
        return Err(Error::FrameTooLarge {
            len,
            max: max.min(MAX_FRAME) as u32,
        });
    }
    if (len as usize) < HEADER_LEN {
        return Err(Error::LengthMismatch {
            declared: len as usize,
            expected: HEADER_LEN,
        });
    }
    Ok((kind, len as usize))
}

/// How long the frame at the start of a stream buffer is.
///
/// `Ok(None)`: fewer than [`HEADER_LEN`] bytes so far, read more. `Ok(Some(n))`: the frame is
/// `n` bytes (header included); wait until that many are buffered. Bad magic is reported as
/// soon as the bytes present disagree with it, and a length above [`MAX_FRAME`] before any of
/// the body is read, so a corrupt stream cannot make the reader buffer without bound.
pub fn peek_frame(buf: &[u8]) -> Result<Option<usize>, Error> {
    peek_frame_within(buf, MAX_FRAME)
}

/// [`peek_frame`] for a reader that takes frames of at most `max` bytes (a bound of its own,
/// below [`MAX_FRAME`]: a peer that announces more is refused before anything is buffered).
pub fn peek_frame_within(buf: &[u8], max: usize) -> Result<Option<usize>, Error> {
    let have = buf.len().min(4);
    if buf[..have] != MAGIC.to_le_bytes()[..have] {
        let mut m = [0u8; 4];
        m[..have].copy_from_slice(&buf[..have]);
        return Err(Error::BadMagic(u32::from_le_bytes(m)));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    header_fields(buf, max).map(|(_, len)| Some(len))
}

/// The whole frame at the front of a stream buffer once all of it is there (`Ok(None)` while
/// more bytes are needed); the next frame starts at `frame.len()`.
pub fn next_frame(buf: &[u8]) -> Result<Option<&[u8]>, Error> {
    next_frame_within(buf, MAX_FRAME)
}

/// [`next_frame`] for a reader whose frames are at most `max` bytes ([`peek_frame_within`]).
pub fn next_frame_within(buf: &[u8], max: usize) -> Result<Option<&[u8]>, Error> {
    match peek_frame_within(buf, max)? {
        Some(n) => Ok(buf.get(..n)),
        None => Ok(None),
    }
}

/// Opens a frame of `kind` whose fixed part (header included) is `T`: checks the header and
/// that the declared length covers `T`, returns `T` and the variable part after it.
fn open<T>(buf: &[u8], kind: Kind) -> Result<(&T, &[u8]), Error>
where
    T: FromBytes + KnownLayout + Immutable,
{
    let found = check_header(buf)?;
    if found != kind {
        return Err(Error::UnexpectedKind {
            expected: kind,
            found,
        });
    }
    T::ref_from_prefix(buf).map_err(|_| Error::LengthMismatch {
        declared: buf.len(),
        expected: core::mem::size_of::<T>(),
    })
}

/// Checks that the variable part is exactly `expected` bytes long.
fn expect_len(buf: &[u8], fixed: usize, var: usize) -> Result<(), Error> {
    let expected = fixed + var;
    if buf.len() != expected {
        return Err(Error::LengthMismatch {
            declared: buf.len(),
            expected,
        });
    }
    Ok(())
}

/// Rejects `value` outside `min..=max`.
fn in_range(field: Field, value: u64, min: usize, max: usize) -> Result<usize, Error> {
    if value < min as u64 || value > max as u64 {
        return Err(Error::OutOfRange {
            field,
            value,
            min: min as u64,
            max: max as u64,
        });
    }
    Ok(value as usize)
}

/// The emit destination: `need` bytes of `buf`, or [`Error::BufferTooSmall`].
fn out(buf: &mut [u8], need: usize) -> Result<&mut [u8], Error> {
    let have = buf.len();
    buf.get_mut(..need)
        .ok_or(Error::BufferTooSmall { need, have })
}

/// Writes a fixed part followed by up to two variable parts into `dst` (already sized).
fn put(dst: &mut [u8], fixed: &[u8], a: &[u8], b: &[u8]) {
    let (f, rest) = dst.split_at_mut(fixed.len());
    f.copy_from_slice(fixed);
    let (x, y) = rest.split_at_mut(a.len());
    x.copy_from_slice(a);
    y.copy_from_slice(b);
}

/// Parse, size and emit, shared by every message so generic code (tests, fuzzing) can drive
/// them all the same way.
pub trait Repr<'a>: Sized {
    /// The kind in this message's header.
    const KIND: Kind;
    /// Parses one whole frame of this kind.
    fn parse(buf: &'a [u8]) -> Result<Self, Error>;
    /// Bytes [`Repr::emit`] writes.
    fn buffer_len(&self) -> usize;
    /// Writes the frame into the front of `buf`; returns its length.
    fn emit(&self, buf: &mut [u8]) -> Result<usize, Error>;
}

/// Implements [`Repr`] for a type whose inherent `parse`/`buffer_len`/`emit` do the work.
macro_rules! impl_repr {
    ($ty:ident $(<$lt:lifetime>)?, $kind:expr) => {
        impl<'a> $crate::wire::Repr<'a> for $ty $(<$lt>)? {
            const KIND: $crate::wire::Kind = $kind;
            fn parse(buf: &'a [u8]) -> Result<Self, $crate::wire::Error> {
                $ty::parse(buf)
            }
            fn buffer_len(&self) -> usize {
                $ty::buffer_len(self)
            }
            fn emit(&self, buf: &mut [u8]) -> Result<usize, $crate::wire::Error> {
                $ty::emit(self, buf)
            }
        }
    };
}
use impl_repr;

/// Any message, as returned by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// See [`ConnInfo`].
    ConnInfo(ConnInfo<'a>),
    /// See [`RegionToken`].
    RegionToken(RegionToken),
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// See [`ListenHandles`].
    ListenHandles(ListenHandles<'a>),
    /// See [`WriteAnnounce`].
    WriteAnnounce(WriteAnnounce<'a>),
    /// See [`ReadRequest`].
    ReadRequest(ReadRequest<'a>),
    /// See [`ReadAnnounce`].
    ReadAnnounce(ReadAnnounce),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Notif`].
    Notif(Notif<'a>),
    /// See [`ErrorMsg`].
    Error(ErrorMsg<'a>),
    /// See [`ReadData`].
    ReadData(ReadData<'a>),
    /// See [`Limits`].
    Limits(Limits),
    /// See [`Keepalive`].
    Keepalive(Keepalive),
}

/// Parses one whole frame of any kind.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, Error> {
    let kind = check_header(buf)?;
    Ok(match kind {
        Kind::ConnInfo => Message::ConnInfo(ConnInfo::parse(buf)?),
        Kind::RegionToken => Message::RegionToken(RegionToken::parse(buf)?),
        Kind::Hello => Message::Hello(Hello::parse(buf)?),
        Kind::ListenHandles => Message::ListenHandles(ListenHandles::parse(buf)?),
        Kind::WriteAnnounce => Message::WriteAnnounce(WriteAnnounce::parse(buf)?),
        Kind::ReadRequest => Message::ReadRequest(ReadRequest::parse(buf)?),
        Kind::ReadAnnounce => Message::ReadAnnounce(ReadAnnounce::parse(buf)?),
        Kind::Ack => Message::Ack(Ack::parse(buf)?),
        Kind::Notif => Message::Notif(Notif::parse(buf)?),
        Kind::Error => Message::Error(ErrorMsg::parse(buf)?),
        Kind::ReadData => Message::ReadData(ReadData::parse(buf)?),
        Kind::Limits => Message::Limits(Limits::parse(buf)?),
        Kind::Keepalive => Message::Keepalive(Keepalive::parse(buf)?),
    })
}

impl<'a> Message<'a> {
    /// Parses one whole frame of any kind (same as [`parse`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        parse(buf)
    }

    /// This message's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Message::ConnInfo(_) => Kind::ConnInfo,
            Message::RegionToken(_) => Kind::RegionToken,
            Message::Hello(_) => Kind::Hello,
            Message::ListenHandles(_) => Kind::ListenHandles,
            Message::WriteAnnounce(_) => Kind::WriteAnnounce,
            Message::ReadRequest(_) => Kind::ReadRequest,
            Message::ReadAnnounce(_) => Kind::ReadAnnounce,
            Message::Ack(_) => Kind::Ack,
            Message::Notif(_) => Kind::Notif,
            Message::Error(_) => Kind::Error,
            Message::ReadData(_) => Kind::ReadData,
            Message::Limits(_) => Kind::Limits,
            Message::Keepalive(_) => Kind::Keepalive,
        }
    }

    /// Bytes [`Message::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            Message::ConnInfo(m) => m.buffer_len(),
            Message::RegionToken(m) => m.buffer_len(),
            Message::Hello(m) => m.buffer_len(),
            Message::ListenHandles(m) => m.buffer_len(),
            Message::WriteAnnounce(m) => m.buffer_len(),
            Message::ReadRequest(m) => m.buffer_len(),
            Message::ReadAnnounce(m) => m.buffer_len(),
            Message::Ack(m) => m.buffer_len(),
            Message::Notif(m) => m.buffer_len(),
            Message::Error(m) => m.buffer_len(),
            Message::ReadData(m) => m.buffer_len(),
            Message::Limits(m) => m.buffer_len(),
            Message::Keepalive(m) => m.buffer_len(),
        }
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self {
            Message::ConnInfo(m) => m.emit(buf),
            Message::RegionToken(m) => m.emit(buf),
            Message::Hello(m) => m.emit(buf),
            Message::ListenHandles(m) => m.emit(buf),
            Message::WriteAnnounce(m) => m.emit(buf),
            Message::ReadRequest(m) => m.emit(buf),
            Message::ReadAnnounce(m) => m.emit(buf),
            Message::Ack(m) => m.emit(buf),
            Message::Notif(m) => m.emit(buf),
            Message::Error(m) => m.emit(buf),
            Message::ReadData(m) => m.emit(buf),
            Message::Limits(m) => m.emit(buf),
            Message::Keepalive(m) => m.emit(buf),
        }
    }
}

// The largest legal frame of every kind must fit MAX_FRAME, so emit never builds a frame a
// reader would refuse and `len` always fits its u32.
// Every frame but a notification's fits MAX_CONTROL_FRAME, and an announce carrying a
// notification fits MAX_CONTROL_FRAME more than the notification.
static_assertions::const_assert!(40 + MAX_NAME <= MAX_CONTROL_FRAME);
static_assertions::const_assert!(
    20 + MAX_CHANNELS * crate::abi::HANDLE_MAX_SIZE <= MAX_CONTROL_FRAME
);
static_assertions::const_assert!(32 + MAX_SEGMENTS * 32 + MAX_INLINE_WRITE <= MAX_CONTROL_FRAME);
static_assertions::const_assert!(28 + MAX_ERROR_TEXT <= MAX_CONTROL_FRAME);
static_assertions::const_assert!(28 + MAX_INLINE <= MAX_CONTROL_FRAME);
static_assertions::const_assert!(MAX_NOTIF <= u32::MAX as usize);
static_assertions::const_assert!(MAX_FRAME <= u32::MAX as usize);
static_assertions::const_assert!(MAX_NAME <= u16::MAX as usize);
// A transfer the planner accepts must fit one announce, and the handshake must carry a handle
// for every channel the planner can use.
static_assertions::const_assert_eq!(MAX_SEGMENTS, crate::plan::MAX_SEGMENTS);
static_assertions::const_assert_eq!(MAX_CHANNELS, crate::plan::MAX_CHANNELS as usize);
