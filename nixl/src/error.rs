//! The backend's one error type and its single mapping onto `nixl_status_t`.
//!
//! Every failure inside the backend is an [`Error`] carrying enough context for one log line;
//! [`Error::status`] is the only place that decides which NIXL status a failure becomes.

use std::fmt;

use tcpx_core::wire;

/// NIXL's `nixl_status_t` values (negative = error).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The transfer is posted and still moving.
    InProgress = 1,
    /// Done.
    Success = 0,
    /// `checkXfer` on a request that was never posted.
    NotPosted = -1,
    /// Bad arguments.
    InvalidParam = -2,
    /// Internal failure of the backend.
    Backend = -3,
    /// Unknown peer agent.
    NotFound = -4,
    /// Inputs that disagree with each other.
    Mismatch = -5,
    /// Operation not allowed in the current state.
    NotAllowed = -6,
    /// Repost of a request that is still active.
    RepostActive = -7,
    /// Unknown failure.
    Unknown = -8,
    /// Not supported (yet) by this backend.
    NotSupported = -9,
    /// The peer went away.
    RemoteDisconnect = -10,
    /// The request was cancelled.
    Canceled = -11,
    /// No telemetry.
    NoTelemetry = -12,
}

impl Status {
    /// A peer's status code from the wire: a negative `nixl_status_t`, anything else is
    /// reported as `Backend` (the peer failed in a way NIXL has no name for).
    pub fn from_wire(v: i32) -> Status {
        use Status::*;
        [
            NotPosted,
            InvalidParam,
            Backend,
            NotFound,
            Mismatch,
            NotAllowed,
            RepostActive,
            Unknown,
            NotSupported,
            RemoteDisconnect,
            Canceled,
            NoTelemetry,
        ]
        .into_iter()
        .find(|s| *s as i32 == v)
        .unwrap_or(Backend)
    }
}

/// Which caller-supplied thing an argument error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// An agent name.
    Agent,
    /// A transfer operation value.
    Op,
    /// A descriptor list.
    Descs,
    /// A string or byte argument passed as pointer + length.
    Bytes,
    /// A metadata handle.
    Metadata,
    /// A request handle.
    Request,
    /// A notification message.
    Notif,
}

/// Why a backend operation failed.
#[derive(Debug)]
pub enum Error {
    /// A custom backend parameter has a bad value (or is unknown).
    Config {
        /// Parameter name.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A malformed argument.
    Invalid {
        /// Which argument.
        arg: Arg,
        /// What is wrong with it.
        reason: String,
    },
    /// A peer agent whose connection info was never loaded.
    UnknownAgent(String),
    /// Connection info for an agent that is already known, with different contents.
    AgentAlreadyLoaded(String),
    /// Inputs that disagree (token vs descriptor, conn info vs agent name).
    Mismatch(String),
    /// A byte range outside every registration it must lie in.
    OutOfRange {
        /// Descriptor index in its list.
        index: usize,
        /// Start of the rejected range.
        addr: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A metadata blob (region token, conn info) that does not parse.
    Wire {
        /// What was being parsed.
        what: &'static str,
        /// Why the parser rejected it.
        err: wire::Error,
    },
    /// A memory type this backend does not handle.
    UnsupportedMem(i32),
    /// A feature that needs the tcpx engine, which this build does not drive yet.
    NotSupported(&'static str),
    /// `checkXfer` on a request that was prepared but never posted.
    NotPosted,
    /// An operating-system failure.
    Io {
        /// What was being done.
        what: &'static str,
        /// The failure.
        err: std::io::Error,
    },
    /// The C++ side could not take an output value (allocation failure).
    Output(&'static str),
    /// A call on an engine whose backend failed to initialise.
    NoBackend,
    /// The tcpx engine failed (handshake, registration, post).
    Engine(tcpx::Error),
    /// The peer's control stream or data session is gone.
    Disconnected(String),
    /// The peer refused or failed the transfer; `status` is the negative `nixl_status_t` it
    /// sent (a rejected range is `InvalidParam`).
    Remote {
        /// Status reported by the peer.
        status: Status,
        /// What the peer said.
        reason: String,
    },
    /// `postXfer` on a request still in flight.
    RepostActive,
    /// The notification queue has no room: the application is not taking notifications.
    NotifQueueFull {
        /// Bytes queued now.
        held: u64,
        /// The `notif_queue_bytes` bound.
        limit: u64,
    },
}

impl Error {
    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(arg: Arg, reason: impl Into<String>) -> Self {
        Error::Invalid {
            arg,
            reason: reason.into(),
        }
    }

    /// The NIXL status this failure is reported as: the one mapping in the crate.
    pub fn status(&self) -> Status {
        match self {
            Error::Config { .. } | Error::Invalid { .. } | Error::OutOfRange { .. } => {
                Status::InvalidParam
            }
            Error::Wire { .. } => Status::InvalidParam,
            Error::UnknownAgent(_) => Status::NotFound,
            Error::AgentAlreadyLoaded(_) => Status::NotAllowed,
            Error::Mismatch(_) => Status::Mismatch,
            Error::UnsupportedMem(_) | Error::NotSupported(_) => Status::NotSupported,
            Error::NotPosted => Status::NotPosted,
            Error::Io { .. } | Error::Output(_) | Error::NoBackend | Error::Engine(_) => {
                Status::Backend
            }
            Error::Disconnected(_) => Status::RemoteDisconnect,
            Error::Remote { status, .. } => *status,
            Error::RepostActive => Status::RepostActive,
            Error::NotifQueueFull { .. } => Status::NotAllowed,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { key, reason } => write!(f, "backend parameter {key:?}: {reason}"),
            Error::Invalid { arg, reason } => write!(f, "bad {arg:?} argument: {reason}"),
            Error::UnknownAgent(a) => write!(f, "unknown agent {a:?} (no connection info loaded)"),
            Error::AgentAlreadyLoaded(a) => {
                write!(
                    f,
                    "agent {a:?} already has different connection info loaded"
                )
            }
            Error::Mismatch(what) => write!(f, "mismatch: {what}"),
            Error::OutOfRange { index, addr, len } => write!(
                f,
                "descriptor {index} [{addr:#x}, +{len}) lies outside its registered region"
            ),
            Error::Wire { what, err } => write!(f, "malformed {what}: {err}"),
            Error::UnsupportedMem(m) => write!(f, "memory type {m} is not supported"),
            Error::NotSupported(what) => write!(f, "{what} is not supported yet"),
            Error::NotPosted => write!(f, "request was never posted"),
            Error::Io { what, err } => write!(f, "{what}: {err}"),
            Error::Output(what) => write!(f, "could not hand {what} back to NIXL"),
            Error::NoBackend => write!(f, "the backend failed to initialise"),
            Error::Engine(e) => write!(f, "tcpx engine: {e}"),
            Error::Disconnected(why) => write!(f, "peer disconnected: {why}"),
            Error::Remote { status, reason } => {
                write!(f, "peer failed the transfer ({status:?}): {reason}")
            }
            Error::RepostActive => write!(f, "request is still in flight"),
            Error::NotifQueueFull { held, limit } => write!(
                f,
                "notification queue full ({held} bytes queued, notif_queue_bytes {limit}): \
                 the application must take notifications with getNotifs"
            ),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_nixl_values() {
        assert_eq!(Status::InProgress as i32, 1);
        assert_eq!(Status::InvalidParam as i32, -2);
        assert_eq!(Status::NotFound as i32, -4);
        assert_eq!(Status::NotSupported as i32, -9);
        assert_eq!(Status::NoTelemetry as i32, -12);
    }

    #[test]
    fn errors_map_to_the_documented_statuses() {
        assert_eq!(
            Error::invalid(Arg::Descs, "x").status(),
            Status::InvalidParam
        );
        assert_eq!(Error::UnknownAgent("b".into()).status(), Status::NotFound);
        assert_eq!(
            Error::OutOfRange {
                index: 0,
                addr: 0,
                len: 1
            }
            .status(),
            Status::InvalidParam
        );
        assert_eq!(Error::NotSupported("remote").status(), Status::NotSupported);
    }
}
