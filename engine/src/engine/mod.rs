//! The engine: a [`Session`] of C channels to one peer, [`Transfer`]s planned into chunks,
//! and polling progress that never allocates after setup.
//!
//! `tcpx-core` decides (plan, windows, chunk state machines); this module performs the
//! ncclNet calls those decisions ask for. See ARCHITECTURE.md for the data path.

pub mod bootstrap;
pub mod config;
mod gpu;
mod registry;
mod session;
pub mod topology;
mod transfer;

pub use config::{default_split_chunks, Config};
pub use gpu::{check_registration, current_device, Copier};
pub use registry::{MemId, Memory};
pub use session::{Listener, Rendezvous, Session};
pub use tcpx_core::topology::Devices;
pub use transfer::{Direction, Progress, Segment, XferId};
