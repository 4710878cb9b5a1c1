//! The handshake that opens a connection, sans-IO: which frames each role sends, in which
//! order, and what it takes from the peer.
//!
//! The initiator sends `Hello` (its channel count and agent name) and then its engine's
//! `ListenHandles` frame; the target answers with its own `ListenHandles` frame and then
//! `Limits` (the longest notification it takes). The `ListenHandles` frames are the engines'
//! conn info: opaque here (only their header is checked), the engine parses them when it
//! connects.
//!
//! Each role is one machine ([`InitiatorHandshake`], [`TargetHandshake`]). The driver reads a
//! frame's header and asks [`frame_len`] how long it is (a frame of another wire version, or
//! longer than a handshake frame can be, is refused before its body is read), reads the rest
//! and hands the whole frame to `handle_frame`; it asks `poll_transmit` what to send next (a
//! frame written into its buffer, or its engine's `ListenHandles` bytes, which the machine
//! never sees) until it answers `None`, and reads the next frame while the handshake waits
//! for one. What the driver needs to connect its engine comes out at the end: for a target the
//! initiator's agent name and channels ([`Opened`], once both its frames are in), for an
//! initiator the target's `Limits` ([`Answered`]), and for both the peer's `ListenHandles`
//! frame as a position in the bytes received on the stream, counted from the first byte handed
//! to `handle_frame`: a driver that keeps every handshake frame it read in one buffer, in
//! order, slices that buffer with it. Nothing here allocates or keeps a borrow of a frame (the
//! name is copied into a fixed string).

use core::fmt;
use core::ops::Range;

use heapless::String;

use crate::wire::{self, Hello, Kind, Limits, Message, MAX_CONTROL_FRAME, MAX_NAME, VERSION};

/// Bytes of the largest frame a handshake machine writes (a `Hello` with the longest name): a
/// buffer of this size always takes what `poll_transmit` writes.
pub const EMIT_BUF: usize = 16 + MAX_NAME;

/// A handshake refused: the connection is not opened. `Display` is the reason the backend
/// reports, except for [`HandshakeError::Unanswered`], whose text says what the peer did not
/// do and follows the peer's name ("agent "b" did not answer …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// A frame of another wire version.
    Version(u16),
    /// A frame that does not parse, or declares more bytes than a handshake frame has.
    Frame(wire::Error),
    /// Target: the stream's first frame is not a well-formed `Hello` (the kind it has).
    NoHello(Kind),
    /// Target: the frame after the `Hello` is not `ListenHandles` (the kind it has).
    NoHandles(Kind),
    /// Initiator: an answer that is not the frame due (its `ListenHandles`, then a
    /// well-formed `Limits`).
    Unanswered {
        /// The frame due.
        expected: Kind,
        /// The kind the peer sent.
        found: Kind,
    },
    /// A frame while the machine expects none (it still has frames to send, or the
    /// handshake is over).
    Unexpected(Kind),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HandshakeError::Version(v) => write!(
                f,
                "the peer speaks wire version {v}, this agent {VERSION}: every agent must run \
                 the same tcpx-nixl wire version"
            ),
            HandshakeError::Frame(e) => write!(f, "{e}"),
            HandshakeError::NoHello(_) => write!(f, "control stream did not open with Hello"),
            HandshakeError::NoHandles(kind) => write!(
                f,
                "control stream's Hello was followed by {kind:?}, not ListenHandles"
            ),
            HandshakeError::Unanswered { expected, found } => {
                write!(f, "did not answer the handshake with its {expected:?}")?;
                if found != expected {
                    write!(f, " (it sent {found:?})")?;
                }
                Ok(())
            }
            HandshakeError::Unexpected(kind) => {
                write!(
                    f,
                    "unexpected {kind:?} while the handshake waits for no frame"
                )
            }
        }
    }
}

/// How long the handshake frame whose header starts `header` is (header included): `Ok(None)`
/// while fewer than a header's bytes are there. A header of another wire version is
/// [`HandshakeError::Version`]; a length above what a control frame may have (or any other
/// fault of the header) is [`HandshakeError::Frame`], before any of the body is read.
pub fn frame_len(header: &[u8]) -> Result<Option<usize>, HandshakeError> {
    wire::peek_frame_within(header, MAX_CONTROL_FRAME).map_err(refusal)
}

fn refusal(e: wire::Error) -> HandshakeError {
    match e {
        wire::Error::BadVersion(v) => HandshakeError::Version(v),
        e => HandshakeError::Frame(e),
    }
}

/// Checks a whole frame as [`frame_len`] and [`wire::check_header`] do: its kind.
fn check(frame: &[u8]) -> Result<Kind, HandshakeError> {
    frame_len(frame)?;
    wire::check_header(frame).map_err(refusal)
}

/// What the driver sends next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// The frame written at the front of the buffer, of this many bytes.
    Frame(usize),
    /// Our engine's `ListenHandles` frame (its conn info), as it is.
    ListenHandles,
}

/// An initiator's finished handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// Where the target's `ListenHandles` frame lies in the bytes received.
    pub handles: Range<usize>,
    /// What the target takes.
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Initiating {
    Hello,
    Handles,
    AwaitHandles,
    AwaitLimits(Range<usize>),
    Done(Answered),
    Failed(HandshakeError),
}

/// The initiator's side of the handshake: `Hello` and our `ListenHandles` out, the target's
/// `ListenHandles` and `Limits` in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorHandshake<'a> {
    hello: Hello<'a>,
    state: Initiating,
    received: usize,
}

impl<'a> InitiatorHandshake<'a> {
    /// An initiator with `channels` data channels whose agent is `name`.
    pub fn new(channels: u16, name: &'a str) -> Self {
        InitiatorHandshake {
            hello: Hello { channels, name },
            state: Initiating::Hello,
            received: 0,
        }
    }

    /// The next thing to send, the frames written into `buf` ([`EMIT_BUF`] bytes take any):
    /// `Hello`, then our `ListenHandles`; `None` once both are out. An error (a name or channel
    /// count the wire cannot carry, a buffer too short) sends nothing.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, wire::Error> {
        Ok(match self.state {
            Initiating::Hello => {
                let n = Message::Hello(self.hello).emit(buf)?;
                self.state = Initiating::Handles;
                Some(Transmit::Frame(n))
            }
            Initiating::Handles => {
                self.state = Initiating::AwaitHandles;
                Some(Transmit::ListenHandles)
            }
            _ => None,
        })
    }

    /// Takes the target's next whole frame. Any error ends the handshake (and is returned
    /// again for every later frame).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        if let Initiating::Failed(e) = self.state {
            return Err(e);
        }
        let r = self.take(frame);
        if let Err(e) = r {
            self.state = Initiating::Failed(e);
        }
        r
    }

    fn take(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        let kind = check(frame)?;
        let at = self.received..self.received + frame.len();
        self.received = at.end;
        self.state = match &self.state {
            Initiating::AwaitHandles if kind == Kind::ListenHandles => Initiating::AwaitLimits(at),
            Initiating::AwaitHandles => {
                return Err(HandshakeError::Unanswered {
                    expected: Kind::ListenHandles,
                    found: kind,
                })
            }
            Initiating::AwaitLimits(handles) => match Limits::parse(frame) {
                Ok(limits) => Initiating::Done(Answered {
                    handles: handles.clone(),
                    limits,
                }),
                Err(_) => {
                    return Err(HandshakeError::Unanswered {
                        expected: Kind::Limits,
                        found: kind,
                    })
                }
            },
            _ => return Err(HandshakeError::Unexpected(kind)),
        };
        Ok(())
    }

    /// The finished handshake, once the target's `Limits` came.
    pub fn outcome(&self) -> Option<&Answered> {
        match &self.state {
            Initiating::Done(a) => Some(a),
            _ => None,
        }
    }
}

/// Who opened a target's stream: its `Hello` and where its `ListenHandles` frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The initiator's channel count.
    pub channels: u16,
    /// The initiator's agent name (a copy: the machine keeps no borrow of a frame).
    pub name: String<MAX_NAME>,
    /// Where the initiator's `ListenHandles` frame lies in the bytes received.
    pub handles: Range<usize>,
}

impl Opened {
    /// The initiator's `ListenHandles` frame in `received` (the bytes received on the stream,
    /// from its first): `None` if those are not the bytes the machine was handed.
    pub fn handles<'r>(&self, received: &'r [u8]) -> Option<&'r [u8]> {
        received.get(self.handles.clone())
    }
}

impl Answered {
    /// The target's `ListenHandles` frame in `received` (the bytes received on the stream,
    /// from its first): `None` if those are not the bytes the machine was handed.
    pub fn handles<'r>(&self, received: &'r [u8]) -> Option<&'r [u8]> {
        received.get(self.handles.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Accepting {
    AwaitHello,
    AwaitHandles {
        channels: u16,
        name: String<MAX_NAME>,
    },
    Handles(Opened),
    Limits(Opened),
    Done(Opened),
    Failed(HandshakeError),
}

/// The target's side of the handshake: the initiator's `Hello` and `ListenHandles` in, our
/// `ListenHandles` and `Limits` out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHandshake {
    limits: Limits,
    state: Accepting,
    received: usize,
}

impl TargetHandshake {
    /// A target that takes notifications of up to `max_notif` bytes.
    pub fn new(max_notif: u32) -> Self {
        TargetHandshake {
            limits: Limits { max_notif },
            state: Accepting::AwaitHello,
            received: 0,
        }
    }

    /// Takes the initiator's next whole frame. Any error ends the handshake (and is returned
    /// again for every later frame).
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        if let Accepting::Failed(e) = self.state {
            return Err(e);
        }
        let r = self.take(frame);
        if let Err(e) = r {
            self.state = Accepting::Failed(e);
        }
        r
    }

    fn take(&mut self, frame: &[u8]) -> Result<(), HandshakeError> {
        let kind = check(frame)?;
        let start = self.received;
        self.received += frame.len();
        self.state = match &self.state {
            Accepting::AwaitHello => {
                let h = Hello::parse(frame).map_err(|_| HandshakeError::NoHello(kind))?;
                let mut name = String::new();
                // A parsed name is at most `MAX_NAME` bytes: it always fits.
                name.push_str(h.name)
                    .map_err(|()| HandshakeError::NoHello(kind))?;
                Accepting::AwaitHandles {
                    channels: h.channels,
                    name,
                }
            }
            Accepting::AwaitHandles { channels, name } if kind == Kind::ListenHandles => {
                Accepting::Handles(Opened {
                    channels: *channels,
                    name: name.clone(),
                    handles: start..self.received,
                })
            }
            Accepting::AwaitHandles { .. } => return Err(HandshakeError::NoHandles(kind)),
            _ => return Err(HandshakeError::Unexpected(kind)),
        };
        Ok(())
    }

    /// The next thing to send once the initiator's frames are in, the frames written into
    /// `buf` ([`EMIT_BUF`] bytes take any): our `ListenHandles`, then `Limits`; `None` before
    /// and after. An error (a buffer too short) sends nothing.
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, wire::Error> {
        Ok(match &self.state {
            Accepting::Handles(o) => {
                self.state = Accepting::Limits(o.clone());
                Some(Transmit::ListenHandles)
            }
            Accepting::Limits(o) => {
                let n = Message::Limits(self.limits).emit(buf)?;
                self.state = Accepting::Done(o.clone());
                Some(Transmit::Frame(n))
            }
            _ => None,
        })
    }

    /// Who opened the stream, once its `Hello` and `ListenHandles` are in: the driver then
    /// opens its engine and sends what [`TargetHandshake::poll_transmit`] says.
    pub fn peer(&self) -> Option<&Opened> {
        match &self.state {
            Accepting::Handles(o) | Accepting::Limits(o) | Accepting::Done(o) => Some(o),
            _ => None,
        }
    }

    /// The finished handshake, once our `Limits` is out.
    pub fn outcome(&self) -> Option<&Opened> {
        match &self.state {
            Accepting::Done(o) => Some(o),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
