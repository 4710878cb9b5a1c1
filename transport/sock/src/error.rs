//! The crate's one error type and its single mapping to `ncclResult_t`.
//!
//! Every failure carries a static context string; the FFI layer logs it and returns
//! [`Error::code`].

use core::fmt;

use tcpx_core::abi::{result, NcclResult};

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A TCPX rule was broken (request limit, test/consume order, `n != 1`) or an internal
    /// invariant failed. TCPX answers these with `ncclInternalError`.
    Internal(&'static str),
    /// A bad argument (unknown device, negative size, NULL out-pointer).
    InvalidArgument(&'static str),
    /// A socket call failed with `errno`.
    System(&'static str, i32),
    /// The peer went away (EOF, reset, broken pipe) or spoke an unexpected protocol.
    Remote(&'static str),
    /// A CUDA driver call failed with this `CUresult`.
    Cuda(&'static str, i32),
}

impl Error {
    /// The `ncclResult_t` this error is reported as.
    pub const fn code(&self) -> NcclResult {
        match self {
            Error::Internal(_) => result::INTERNAL_ERROR,
            Error::InvalidArgument(_) => result::INVALID_ARGUMENT,
            Error::System(..) => result::SYSTEM_ERROR,
            Error::Remote(_) => result::REMOTE_ERROR,
            Error::Cuda(..) => result::UNHANDLED_CUDA_ERROR,
        }
    }

    /// Classifies an `errno` from a socket call: peer-caused errors become [`Error::Remote`].
    pub fn from_errno(ctx: &'static str, errno: i32) -> Self {
        match errno {
            libc::EPIPE | libc::ECONNRESET | libc::ECONNABORTED | libc::ENOTCONN => {
                Error::Remote(ctx)
            }
            _ => Error::System(ctx, errno),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Internal(c) => write!(f, "internal error: {c}"),
            Error::InvalidArgument(c) => write!(f, "invalid argument: {c}"),
            Error::System(c, e) => {
                write!(f, "{c}: {}", std::io::Error::from_raw_os_error(*e))
            }
            Error::Remote(c) => write!(f, "remote error: {c}"),
            Error::Cuda(c, r) => write!(f, "{c}: CUresult {r}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias of this crate.
pub type Result<T> = core::result::Result<T, Error>;
