//! Transfer messages on the control stream: announces and requests carrying segment lists,
//! their acknowledgements, notifications and errors.

use core::mem::{offset_of, size_of};

use static_assertions::const_assert_eq;
use zerocopy::little_endian::{I32, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{
    expect_len, impl_repr, in_range, open, out, put, Error, Field, Header, Kind, MAX_ERROR_TEXT,
    MAX_INLINE, MAX_INLINE_WRITE, MAX_NOTIF, MAX_SEGMENTS,
};

/// One remote range of a transfer, in the region owner's address space. Kept in wire form
/// (little-endian, alignment 1) so a parsed list is a view of the frame, not a copy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct Segment {
    region: U64,
    key: U64,
    addr: U64,
    len: U64,
}

const_assert_eq!(size_of::<Segment>(), 32);
const_assert_eq!(core::mem::align_of::<Segment>(), 1);
const_assert_eq!(offset_of!(Segment, region), 0);
const_assert_eq!(offset_of!(Segment, key), 8);
const_assert_eq!(offset_of!(Segment, addr), 16);
const_assert_eq!(offset_of!(Segment, len), 24);

impl Segment {
    /// `len` bytes at `addr` inside region `region`, whose token carried `key`.
    pub const fn new(region: u64, key: u64, addr: u64, len: u64) -> Self {
        Self {
            region: U64::new(region),
            key: U64::new(key),
            addr: U64::new(addr),
            len: U64::new(len),
        }
    }
    /// Region id from the owner's [`RegionToken`](super::RegionToken).
    pub fn region(&self) -> u64 {
        self.region.get()
    }
    /// Key from the owner's [`RegionToken`](super::RegionToken).
    pub fn key(&self) -> u64 {
        self.key.get()
    }
    /// Start address in the owner's address space.
    pub fn addr(&self) -> u64 {
        self.addr.get()
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len.get()
    }
    /// Whether the segment moves no bytes.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }
    /// One past the last address; `None` if that overflows (never for a parsed segment).
    pub fn end(&self) -> Option<u64> {
        self.addr.get().checked_add(self.len.get())
    }
}

/// Checks a segment count against [`MAX_SEGMENTS`].
fn segment_count(count: u32) -> Result<usize, Error> {
    in_range(Field::Segments, count.into(), 0, MAX_SEGMENTS)
}

/// Rejects any segment whose end overflows.
fn check_segments(segs: &[Segment]) -> Result<(), Error> {
    match segs.iter().position(|s| s.end().is_none()) {
        None => Ok(()),
        Some(index) => Err(Error::RangeOverflow {
            field: Field::Segments,
            index,
        }),
    }
}

/// Views the first `count` segments of `rest` (the caller has checked the length).
fn segment_view(rest: &[u8], count: usize) -> Result<(&[Segment], &[u8]), Error> {
    let (segs, tail) =
        <[Segment]>::ref_from_prefix_with_elems(rest, count).map_err(|_| Error::Truncated {
            need: count * size_of::<Segment>(),
            have: rest.len(),
        })?;
    check_segments(segs)?;
    Ok((segs, tail))
}

/// `WriteAnnounce::flags` bit: a notification is attached (it may be empty).
const FLAG_NOTIF: u32 = 1;
/// `WriteAnnounce::flags` bit: the data follows the notification in this frame instead of
/// travelling on the data comms.
const FLAG_INLINE: u32 = 2;

/// Total bytes of `segs`, saturating (a parsed list's total is checked against a bound).
fn total_len(segs: &[Segment]) -> u64 {
    segs.iter().fold(0u64, |a, s| a.saturating_add(s.len()))
}

/// Fixed part of [`WriteAnnounce`]; the segments, then the notification, then inline data,
/// follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct WriteAnnounceFixed {
    hdr: Header,
    xfer: U64,
    count: U32,
    notif_len: U32,
    flags: U32,
}

const_assert_eq!(size_of::<WriteAnnounceFixed>(), 32);
const_assert_eq!(offset_of!(WriteAnnounceFixed, xfer), 12);
const_assert_eq!(offset_of!(WriteAnnounceFixed, count), 20);
const_assert_eq!(offset_of!(WriteAnnounceFixed, notif_len), 24);
const_assert_eq!(offset_of!(WriteAnnounceFixed, flags), 28);

/// The initiator of a WRITE tells the target what the next sends on its data comms carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteAnnounce<'a> {
    /// Initiator's transfer id, echoed in the [`Ack`].
    pub xfer: u64,
    /// Target ranges in send order, at most [`MAX_SEGMENTS`](super::MAX_SEGMENTS).
    pub segments: &'a [Segment],
    /// Notification to queue once the data landed; `Some(&[])` is an empty one.
    pub notif: Option<&'a [u8]>,
    /// The data itself, when it travels in this frame: the segments' bytes concatenated in
    /// order, at most [`MAX_INLINE_WRITE`](super::MAX_INLINE_WRITE). `None`: it follows on
    /// the data comms.
    pub data: Option<&'a [u8]>,
}

impl<'a> WriteAnnounce<'a> {
    /// Parses one whole `WriteAnnounce` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<WriteAnnounceFixed>(buf, Kind::WriteAnnounce)?;
        let count = segment_count(f.count.get())?;
        let notif_len = in_range(Field::Notif, f.notif_len.get().into(), 0, MAX_NOTIF)?;
        let flags = f.flags.get();
        if flags & !(FLAG_NOTIF | FLAG_INLINE) != 0 {
            return Err(Error::NonZeroReserved(Field::Flags));
        }
        let fixed = size_of::<WriteAnnounceFixed>();
        let segs_len = count * size_of::<Segment>();
        // Inline data is as long as the segments say, so they are read first.
        if rest.len() < segs_len {
            return Err(Error::LengthMismatch {
                declared: buf.len(),
                expected: fixed + segs_len + notif_len,
            });
        }
        let (segments, tail) = segment_view(rest, count)?;
        let data_len = if flags & FLAG_INLINE != 0 {
            in_range(Field::Data, total_len(segments), 0, MAX_INLINE_WRITE)?
        } else {
            0
        };
        expect_len(buf, fixed, segs_len + notif_len + data_len)?;
        if flags & FLAG_NOTIF == 0 && notif_len != 0 {
            return Err(Error::OutOfRange {
                field: Field::Notif,
                value: notif_len as u64,
                min: 0,
                max: 0,
            });
        }
        let (notif, data) = tail.split_at(notif_len);
        Ok(Self {
            xfer: f.xfer.get(),
            segments,
            notif: (flags & FLAG_NOTIF != 0).then_some(notif),
            data: (flags & FLAG_INLINE != 0).then_some(data),
        })
    }

    /// Bytes [`WriteAnnounce::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<WriteAnnounceFixed>()
            + size_of_val(self.segments)
            + self.notif.map_or(0, <[u8]>::len)
            + self.data.map_or(0, <[u8]>::len)
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Segments, self.segments.len() as u64, 0, MAX_SEGMENTS)?;
        let notif = self.notif.unwrap_or(&[]);
        in_range(Field::Notif, notif.len() as u64, 0, MAX_NOTIF)?;
        check_segments(self.segments)?;
        let data = self.data.unwrap_or(&[]);
        if self.data.is_some() {
            let total = in_range(Field::Data, total_len(self.segments), 0, MAX_INLINE_WRITE)?;
            if data.len() != total {
                return Err(Error::OutOfRange {
                    field: Field::Data,
                    value: data.len() as u64,
                    min: total as u64,
                    max: total as u64,
                });
            }
        }
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let mut flags = 0;
        if self.notif.is_some() {
            flags |= FLAG_NOTIF;
        }
        if self.data.is_some() {
            flags |= FLAG_INLINE;
        }
        let fixed = WriteAnnounceFixed {
            hdr: Header::new(Kind::WriteAnnounce, len as u32),
            xfer: U64::new(self.xfer),
            count: U32::new(self.segments.len() as u32),
            notif_len: U32::new(notif.len() as u32),
            flags: U32::new(flags),
        };
        let (head, tail) = dst.split_at_mut(len - data.len());
        put(head, fixed.as_bytes(), self.segments.as_bytes(), notif);
        tail.copy_from_slice(data);
        Ok(len)
    }
}
impl_repr!(WriteAnnounce<'a>, Kind::WriteAnnounce);

/// `ReadRequest::flags` bit: the initiator takes the data inline, as a [`ReadData`].
const FLAG_INLINE_OK: u32 = 1;

/// Fixed part of [`ReadRequest`]; the segments follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ReadRequestFixed {
    hdr: Header,
    xfer: U64,
    count: U32,
    flags: U32,
}

const_assert_eq!(size_of::<ReadRequestFixed>(), 28);
const_assert_eq!(offset_of!(ReadRequestFixed, xfer), 12);
const_assert_eq!(offset_of!(ReadRequestFixed, count), 20);
const_assert_eq!(offset_of!(ReadRequestFixed, flags), 24);

/// The initiator of a READ asks the target to send these ranges, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest<'a> {
    /// Initiator's transfer id, echoed in the [`ReadAnnounce`] or [`ReadData`].
    pub xfer: u64,
    /// Target ranges in send order, at most [`MAX_SEGMENTS`](super::MAX_SEGMENTS).
    pub segments: &'a [Segment],
    /// The initiator accepts the data inline in a [`ReadData`] (its side is host memory and
    /// the total is at most [`MAX_INLINE`](super::MAX_INLINE)); the target may still answer
    /// with a [`ReadAnnounce`] and the data comms.
    pub inline_ok: bool,
}

impl<'a> ReadRequest<'a> {
    /// Parses one whole `ReadRequest` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<ReadRequestFixed>(buf, Kind::ReadRequest)?;
        let count = segment_count(f.count.get())?;
        expect_len(
            buf,
            size_of::<ReadRequestFixed>(),
            count * size_of::<Segment>(),
        )?;
        let flags = f.flags.get();
        if flags & !FLAG_INLINE_OK != 0 {
            return Err(Error::NonZeroReserved(Field::Flags));
        }
        let (segments, _) = segment_view(rest, count)?;
        Ok(Self {
            xfer: f.xfer.get(),
            segments,
            inline_ok: flags & FLAG_INLINE_OK != 0,
        })
    }

    /// Bytes [`ReadRequest::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ReadRequestFixed>() + size_of_val(self.segments)
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Segments, self.segments.len() as u64, 0, MAX_SEGMENTS)?;
        check_segments(self.segments)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = ReadRequestFixed {
            hdr: Header::new(Kind::ReadRequest, len as u32),
            xfer: U64::new(self.xfer),
            count: U32::new(self.segments.len() as u32),
            flags: U32::new(if self.inline_ok { FLAG_INLINE_OK } else { 0 }),
        };
        put(dst, fixed.as_bytes(), self.segments.as_bytes(), &[]);
        Ok(len)
    }
}
impl_repr!(ReadRequest<'a>, Kind::ReadRequest);

/// Fixed (and only) part of [`ReadAnnounce`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ReadAnnounceFixed {
    hdr: Header,
    xfer: U64,
}

const_assert_eq!(size_of::<ReadAnnounceFixed>(), 20);
const_assert_eq!(offset_of!(ReadAnnounceFixed, xfer), 12);

/// The target of a READ accepted the request: the data of `xfer` follows on its data comms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAnnounce {
    /// The id from the [`ReadRequest`].
    pub xfer: u64,
}

impl ReadAnnounce {
    /// Parses one whole `ReadAnnounce` frame.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (f, _) = open::<ReadAnnounceFixed>(buf, Kind::ReadAnnounce)?;
        expect_len(buf, size_of::<ReadAnnounceFixed>(), 0)?;
        Ok(Self { xfer: f.xfer.get() })
    }

    /// Bytes [`ReadAnnounce::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ReadAnnounceFixed>()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = ReadAnnounceFixed {
            hdr: Header::new(Kind::ReadAnnounce, len as u32),
            xfer: U64::new(self.xfer),
        };
        put(dst, fixed.as_bytes(), &[], &[]);
        Ok(len)
    }
}
impl_repr!(ReadAnnounce, Kind::ReadAnnounce);

/// Fixed part of [`ReadData`]; the data follows.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ReadDataFixed {
    hdr: Header,
    xfer: U64,
    data_len: U32,
    reserved: U32,
}

const_assert_eq!(size_of::<ReadDataFixed>(), 28);
const_assert_eq!(offset_of!(ReadDataFixed, xfer), 12);
const_assert_eq!(offset_of!(ReadDataFixed, data_len), 20);
const_assert_eq!(offset_of!(ReadDataFixed, reserved), 24);

/// The target of a READ that allowed it answers with the data itself: the requested ranges
/// concatenated in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadData<'a> {
    /// The id from the [`ReadRequest`].
    pub xfer: u64,
    /// At most [`MAX_INLINE`](super::MAX_INLINE) bytes.
    pub data: &'a [u8],
}

impl<'a> ReadData<'a> {
    /// Parses one whole `ReadData` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<ReadDataFixed>(buf, Kind::ReadData)?;
        let n = in_range(Field::Data, f.data_len.get().into(), 0, MAX_INLINE)?;
        expect_len(buf, size_of::<ReadDataFixed>(), n)?;
        if f.reserved.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        Ok(Self {
            xfer: f.xfer.get(),
            data: rest,
        })
    }

    /// Bytes [`ReadData::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ReadDataFixed>() + self.data.len()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Data, self.data.len() as u64, 0, MAX_INLINE)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = ReadDataFixed {
            hdr: Header::new(Kind::ReadData, len as u32),
            xfer: U64::new(self.xfer),
            data_len: U32::new(self.data.len() as u32),
            reserved: U32::new(0),
        };
        put(dst, fixed.as_bytes(), self.data, &[]);
        Ok(len)
    }
}
impl_repr!(ReadData<'a>, Kind::ReadData);

/// Fixed (and only) part of [`Ack`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct AckFixed {
    hdr: Header,
    xfer: U64,
    status: I32,
}

const_assert_eq!(size_of::<AckFixed>(), 24);
const_assert_eq!(offset_of!(AckFixed, xfer), 12);
const_assert_eq!(offset_of!(AckFixed, status), 20);

/// The target of a WRITE finished (or refused) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The id from the [`WriteAnnounce`].
    pub xfer: u64,
    /// 0 on success, otherwise a negative `nixl_status_t`.
    pub status: i32,
}

impl Ack {
    /// Parses one whole `Ack` frame.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (f, _) = open::<AckFixed>(buf, Kind::Ack)?;
        expect_len(buf, size_of::<AckFixed>(), 0)?;
        Ok(Self {
            xfer: f.xfer.get(),
            status: f.status.get(),
        })
    }

    /// Bytes [`Ack::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<AckFixed>()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = AckFixed {
            hdr: Header::new(Kind::Ack, len as u32),
            xfer: U64::new(self.xfer),
            status: I32::new(self.status),
        };
        put(dst, fixed.as_bytes(), &[], &[]);
        Ok(len)
    }
}
impl_repr!(Ack, Kind::Ack);

/// Fixed part of [`Notif`]; the message bytes follow.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct NotifFixed {
    hdr: Header,
    msg_len: U32,
}

const_assert_eq!(size_of::<NotifFixed>(), 16);
const_assert_eq!(offset_of!(NotifFixed, msg_len), 12);

/// A notification for the receiver's `getNotifs` (`genNotif`, or the tail of a READ). The
/// sender's agent name is known from the stream's [`Hello`](super::Hello).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notif<'a> {
    /// Opaque bytes (NIXL strings need not be UTF-8), at most [`MAX_NOTIF`](super::MAX_NOTIF).
    pub msg: &'a [u8],
}

impl<'a> Notif<'a> {
    /// Parses one whole `Notif` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<NotifFixed>(buf, Kind::Notif)?;
        let n = in_range(Field::Notif, f.msg_len.get().into(), 0, MAX_NOTIF)?;
        expect_len(buf, size_of::<NotifFixed>(), n)?;
        Ok(Self { msg: rest })
    }

    /// Bytes [`Notif::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<NotifFixed>() + self.msg.len()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::Notif, self.msg.len() as u64, 0, MAX_NOTIF)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = NotifFixed {
            hdr: Header::new(Kind::Notif, len as u32),
            msg_len: U32::new(self.msg.len() as u32),
        };
        put(dst, fixed.as_bytes(), self.msg, &[]);
        Ok(len)
    }
}
impl_repr!(Notif<'a>, Kind::Notif);

/// Fixed part of [`ErrorMsg`]; the text follows.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct ErrorMsgFixed {
    hdr: Header,
    code: U32,
    text_len: U32,
    xfer: U64,
}

const_assert_eq!(size_of::<ErrorMsgFixed>(), 28);
const_assert_eq!(offset_of!(ErrorMsgFixed, code), 12);
const_assert_eq!(offset_of!(ErrorMsgFixed, text_len), 16);
const_assert_eq!(offset_of!(ErrorMsgFixed, xfer), 20);

/// The peer refused a message or failed a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMsg<'a> {
    /// Error code; its meanings belong to the control protocol, not to this format.
    pub code: u32,
    /// The transfer concerned, or [`ErrorMsg::NO_XFER`].
    pub xfer: u64,
    /// Human-readable UTF-8, at most [`MAX_ERROR_TEXT`](super::MAX_ERROR_TEXT) bytes.
    pub text: &'a str,
}

impl<'a> ErrorMsg<'a> {
    /// `xfer` value of an error about the stream rather than one transfer.
    pub const NO_XFER: u64 = u64::MAX;

    /// Parses one whole `Error` frame.
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        let (f, rest) = open::<ErrorMsgFixed>(buf, Kind::Error)?;
        let n = in_range(Field::ErrorText, f.text_len.get().into(), 0, MAX_ERROR_TEXT)?;
        expect_len(buf, size_of::<ErrorMsgFixed>(), n)?;
        let text = core::str::from_utf8(rest).map_err(|_| Error::BadUtf8(Field::ErrorText))?;
        Ok(Self {
            code: f.code.get(),
            xfer: f.xfer.get(),
            text,
        })
    }

    /// Bytes [`ErrorMsg::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<ErrorMsgFixed>() + self.text.len()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        in_range(Field::ErrorText, self.text.len() as u64, 0, MAX_ERROR_TEXT)?;
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = ErrorMsgFixed {
            hdr: Header::new(Kind::Error, len as u32),
            code: U32::new(self.code),
            text_len: U32::new(self.text.len() as u32),
            xfer: U64::new(self.xfer),
        };
        put(dst, fixed.as_bytes(), self.text.as_bytes(), &[]);
        Ok(len)
    }
}
impl_repr!(ErrorMsg<'a>, Kind::Error);

/// Fixed (and only) part of [`Keepalive`].
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
pub(super) struct KeepaliveFixed {
    hdr: Header,
    reserved: U32,
}

const_assert_eq!(size_of::<KeepaliveFixed>(), 16);
const_assert_eq!(offset_of!(KeepaliveFixed, reserved), 12);

/// The sender is alive: sent while it holds the receiver's transfers back on purpose (its
/// notification queue is full until its application takes notifications), so the receiver's
/// no-progress timeout measures a dead peer, not a slow consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Keepalive;

impl Keepalive {
    /// Parses one whole `Keepalive` frame.
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        let (f, _) = open::<KeepaliveFixed>(buf, Kind::Keepalive)?;
        expect_len(buf, size_of::<KeepaliveFixed>(), 0)?;
        if f.reserved.get() != 0 {
            return Err(Error::NonZeroReserved(Field::Reserved));
        }
        Ok(Self)
    }

    /// Bytes [`Keepalive::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        size_of::<KeepaliveFixed>()
    }

    /// Writes the frame into the front of `buf`; returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let len = self.buffer_len();
        let dst = out(buf, len)?;
        let fixed = KeepaliveFixed {
            hdr: Header::new(Kind::Keepalive, len as u32),
            reserved: U32::new(0),
        };
        put(dst, fixed.as_bytes(), &[], &[]);
        Ok(len)
    }
}
impl_repr!(Keepalive, Kind::Keepalive);
