//! tcpx: the std layer — ncclNet plugin loader, engine (Session/Transfer), CUDA layer and C API.
//!
//! `net` loads any ncclNet plugin (v7 … v10) behind one interface, `log` is the crate's
//! logger (plugin lines included), `error` its one error type. The `tcpx` command is the
//! `tcpx-cli` crate.

pub mod engine;
pub mod error;
pub mod log;
pub mod net;

pub use engine::{Config, Direction, MemId, Memory, Progress, Segment, Session, XferId};
pub use error::{Error, Result};
