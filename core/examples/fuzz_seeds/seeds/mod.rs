//! The committed seed inputs of the cargo-fuzz targets (`fuzz/seeds/<target>/<name>`), built
//! with the wire format's own emitters so every frame carries the current [`VERSION`].
//!
//! Names say what a seed promises, and `tests/fuzz_seeds.rs` checks it on the committed
//! files: a `valid-*` wire seed parses whole (a `valid-*` stream: every frame in it); an
//! `edge-*` wire seed passes the header's magic and version checks and is refused later (a
//! bad count, length, reserved field, …). The same holds for tcpxsock's formats (`sock_*`),
//! which have no common header: a handle or hello `edge-*` seed keeps the current magic and
//! version, a request header one (any 8 bytes are a header) has the wrong length. The
//! `machines`, `control` and `handshake` seeds are byte streams
//! decoded by their targets; their builders below assert what each one means (a plan the
//! planner accepts or refuses, frames that parse), so a format change fails the generator
//! and the test that runs it.

mod control;
mod frames;
mod handshake;
mod machines;
mod tcpxsock;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tcpx_core::abi::HANDLE_MAX_SIZE;
use tcpx_core::mem::MemKind;
use tcpx_core::plan::{Plan, PlanConfig, Segment as PlanSegment, MAX_CHUNK_BYTES};
use tcpx_core::wire::sock::{
    self, SockHandle, SockHello, SockRequestHeader, CHUNK_ALIGN, HANDLE_LEN, HANDLE_STAGE_OFF,
    HELLO_LEN, MAX_SIZE, MAX_SOCKETS,
};
use tcpx_core::wire::{
    self, Ack, ConnInfo, ErrorMsg, Hello, Keepalive, Kind, Limits, ListenHandle, ListenHandles,
    Message, Notif, ReadAnnounce, ReadData, ReadRequest, RegionToken, Segment, WriteAnnounce,
    HEADER_LEN, MAX_CHANNELS, MAX_ERROR_TEXT, MAX_INLINE, MAX_INLINE_WRITE, MAX_NAME, MAX_NOTIF,
    MAX_SEGMENTS, VERSION,
};

/// One seed file.
pub struct Seed {
    /// The fuzz target (folder under `fuzz/seeds/`).
    pub target: &'static str,
    /// File name: `valid-*` or `edge-*` for wire targets.
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The per-kind wire targets and the kind each one parses.
pub const KIND_TARGETS: [(&str, Kind); 11] = [
    ("conn_info", Kind::ConnInfo),
    ("region_token", Kind::RegionToken),
    ("hello", Kind::Hello),
    ("listen_handles", Kind::ListenHandles),
    ("write_announce", Kind::WriteAnnounce),
    ("read_request", Kind::ReadRequest),
    ("read_announce", Kind::ReadAnnounce),
    ("ack", Kind::Ack),
    ("notif", Kind::Notif),
    ("error_msg", Kind::Error),
    ("read_data", Kind::ReadData),
];

/// Every seed of every target, in a fixed order.
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut parse_seeds = Vec::new();
    for (kind, named) in wire_seeds() {
        let target = KIND_TARGETS
            .iter()
            .find(|(_, k)| *k == kind)
            .map(|(t, _)| *t);
        for (name, bytes) in named {
            // The dispatcher gets one valid frame and the first edge of each kind.
            let first_of_its_sort = !parse_seeds.iter().any(|(k, n): &(Kind, String)| {
                *k == kind && n.split('-').next() == name.split('-').next()
            });
            if first_of_its_sort {
                parse_seeds.push((kind, name.clone()));
                out.push(Seed {
                    target: "parse",
                    name: format!("{}-{}", name, kind_slug(kind)),
                    bytes: bytes.clone(),
                });
            }
            if let Some(target) = target {
                out.push(Seed {
                    target,
                    name,
                    bytes,
                });
            }
        }
    }
    for (name, bytes) in unknown_kinds() {
        out.push(Seed {
            target: "parse",
            name,
            bytes,
        });
    }
    for (name, bytes) in streams() {
        out.push(Seed {
            target: "frame",
            name,
            bytes,
        });
    }
    for (name, bytes) in machines() {
        out.push(Seed {
            target: "machines",
            name,
            bytes,
        });
    }
    // `control` (the core machines) and `control_backend` (a real backend) read the same
    // operation streams.
    for target in ["control", "control_backend"] {
        for (name, bytes) in control() {
            out.push(Seed {
                target,
                name,
                bytes,
            });
        }
    }
    for (name, bytes) in handshake() {
        out.push(Seed {
            target: "handshake",
            name,
            bytes,
        });
    }
    for (target, named) in sock_seeds() {
        for (name, bytes) in named {
            out.push(Seed {
                target,
                name,
                bytes,
            });
        }
    }
    out
}

fn kind_slug(kind: Kind) -> &'static str {
    match kind {
        Kind::Limits => "limits",
        Kind::Keepalive => "keepalive",
        k => {
            KIND_TARGETS
                .iter()
                .find(|(_, x)| *x == k)
                .expect("every other kind has a target")
                .0
        }
    }
}

use control::*;
use frames::*;
use handshake::*;
use machines::*;
use tcpxsock::*;
