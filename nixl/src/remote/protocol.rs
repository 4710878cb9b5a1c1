//! The backend's side of the control protocol's rules, which live in `tcpx_core::nixl`
//! (sans-IO: parts and flights, the target's jobs, frame checks, pacing): the types this
//! backend instantiates them with, and the checks that need its metadata table.

use std::collections::VecDeque;

use tcpx::engine::XferId;
use tcpx_core::nixl::{self as proto, check_segment, Failure, RegionView, SegmentFault};
use tcpx_core::wire::Segment as WireSegment;

pub(super) use tcpx_core::nixl::{error_text, log_refusal};

use crate::error::{Error, Status};
use crate::registry::MemTable;

/// Where one part of a posted transfer stands (its engine transfer: our sends or receives).
pub(super) type Part = proto::Part<XferId>;

/// Why a flight failed: the status NIXL gets and the reason logged and reported.
pub(super) type Reason = (Status, String);

/// The protocol state of one posted transfer.
pub(super) type FlightState = proto::Flight<XferId, Reason, Vec<Part>>;

/// A target's jobs, notifications owned as the application will receive them.
pub(super) type Jobs = proto::Jobs<XferId, Vec<u8>, JobQueue>;

/// A finished target job.
pub(super) type Finished = proto::Finished<Vec<u8>>;

/// The storage of a conn's jobs: a deque that grows to the most jobs the conn had at once
/// (its capacity kept, so steady state allocates nothing).
pub(super) struct JobQueue(pub(super) VecDeque<proto::Job<XferId, Vec<u8>>>);

impl proto::JobStore<proto::Job<XferId, Vec<u8>>> for JobQueue {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, i: usize) -> Option<&proto::Job<XferId, Vec<u8>>> {
        self.0.get(i)
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut proto::Job<XferId, Vec<u8>>> {
        self.0.get_mut(i)
    }
    fn push_back(
        &mut self,
        j: proto::Job<XferId, Vec<u8>>,
    ) -> Result<(), proto::Job<XferId, Vec<u8>>> {
        self.0.push_back(j);
        Ok(())
    }
    fn pop_front(&mut self) -> Option<proto::Job<XferId, Vec<u8>>> {
        self.0.pop_front()
    }
}

/// The backend's reason for a failure the protocol found.
pub(super) fn render(f: Failure<'_>) -> Reason {
    match f {
        Failure::Refused {
            part,
            parts,
            code,
            text,
        } => {
            let status = Status::from_wire(-(code.min(i32::MAX as u32) as i32));
            let why = if parts > 1 {
                format!("part {part} of {parts}: {text}")
            } else {
                text.to_owned()
            };
            (status, why)
        }
        Failure::NegativeAck(s) => (
            Status::from_wire(s),
            format!("peer refused the WRITE ({s})"),
        ),
        Failure::ReadDataSize(v) => (Status::Mismatch, v.to_string()),
    }
}

/// A frame the protocol does not allow: the conn closes with this error.
pub(super) fn violation(v: proto::Violation) -> Error {
    Error::Mismatch(v.to_string())
}

/// Where wire segment `i` of a peer's request lies in our registrations: (md, offset inside
/// it, CUDA device of the memory or `None` for host memory), or the refusal to answer with.
pub(super) fn locate(
    table: &MemTable,
    i: usize,
    s: &WireSegment,
) -> Result<(usize, u64, Option<u32>), (Status, String)> {
    let refuse = |e: proto::SegmentRefused| (Status::InvalidParam, e.to_string());
    let found = usize::try_from(s.region())
        .ok()
        .and_then(|md| table.local(md).ok().map(|r| (md, r)));
    let view = found.map(|(_, r)| RegionView {
        key: r.key,
        span: r.span,
    });
    let offset = check_segment(i, s, view).map_err(refuse)?;
    let (md, r) = found.ok_or_else(|| {
        refuse(proto::SegmentRefused {
            index: i,
            fault: SegmentFault::UnknownRegion,
        })
    })?;
    Ok((md, offset, r.cuda_device()))
}
