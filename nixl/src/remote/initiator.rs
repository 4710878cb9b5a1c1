//! Initiator side: prepared transfers, their flights and parts, posting, checking and releasing
//! them, and sending waiting parts as earlier ones settle.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tcpx::engine::{Copier, Direction, MemId, Progress, Segment as ESeg};
use tcpx_core::nixl::initiator::goes_inline;
use tcpx_core::nixl::{Completion, Op as ProtoOp};
use tcpx_core::wire::{Message, Notif, ReadRequest, Segment as WireSegment, WriteAnnounce};

use crate::error::{Arg, Error, Status};
use crate::registry::MdId;
use crate::xfer::{self, Far, Op, Segment};

use super::conn::{register_on, Conn, Scan, Writer};
use super::inline::gather_local;
use super::protocol::{FlightState, Part};
use super::{lock, RemotePath, Shared, PART_SEGMENTS};
use crate::blob::PeerInfo;

/// An initiator-side transfer once posted. One per prepared request, created by its first
/// post and reset in place by every repost, so a repost allocates nothing.
pub(super) struct Flight {
    /// Its parts and where the post stands (`tcpx_core::nixl::Flight`: part `k` has wire id
    /// `wire + k`; control messages name parts by it, one naming an earlier post is stale).
    pub(super) p: FlightState,
    pub(super) conn: Arc<Conn>,
    /// Our engine segments of every part, mapped for `conn`; capacity for all of them, refilled
    /// in place by each post.
    pub(super) segs: Vec<ESeg>,
    /// The target's ranges of every part, as announced (shared with the prepared request).
    pub(super) far: Arc<[WireSegment]>,
    /// The segment range of each part (shared with the prepared request).
    pub(super) ranges: Arc<[Range<usize>]>,
    /// READ that offered to take its data inline (empty otherwise): where the data goes (our
    /// addresses and lengths, request order, and the copier of device memory; capacity kept
    /// across reposts).
    pub(super) inline_dst: Vec<(u64, u64, Option<Arc<Copier>>)>,
    /// The post's notification (buffer reused by every post).
    pub(super) notif: Vec<u8>,
    /// When the current post was made, and its bytes (the cost model learns from them).
    posted_at: Instant,
    pub(super) bytes: u64,
}

impl Flight {
    /// Records the first failure of the post.
    pub(super) fn fail(&mut self, status: Status, why: String) {
        self.p.fail((status, why));
    }
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("op", &self.p.op())
            .field("wire", &self.p.wire())
            .field("sent", &self.p.sent())
            .field("done", &self.p.is_done())
            .finish_non_exhaustive()
    }
}

/// A prepared transfer to another agent. Everything a post needs is built here once, so
/// reposts (NIXL's steady state) allocate nothing.
#[derive(Debug)]
pub struct RemoteXfer {
    op: Op,
    /// The descriptors, neighbours joined.
    segments: Vec<Segment>,
    /// `segments` as the target names them (region id, key, address, length): fixed at
    /// prepare, each announce or request is encoded from it.
    wire: Arc<[WireSegment]>,
    /// The parts: ranges of `segments` of at most [`PART_SEGMENTS`].
    ranges: Arc<[Range<usize>]>,
    /// Our registrations the segments lie in (each registered on a conn's session at its first
    /// use there).
    mds: Vec<MdId>,
    bytes: u64,
    /// `Some` when small enough and all our side host memory or device memory with a copier:
    /// a READ offers to take the data inline (it goes to `segments`' local addresses, in
    /// request order), a WRITE carries it in the announce. Per segment, the copier of its
    /// device memory (`None`: host memory).
    inline: Option<Vec<Option<Arc<Copier>>>>,
    /// An inline WRITE's data, gathered at each post (reused).
    inline_data: Vec<u8>,
    /// The latest post's flight, reused by the next post.
    flight: Option<Arc<Mutex<Flight>>>,
    /// The latest post went out: before the first post, or after a post that failed,
    /// `checkXfer` says NOT_POSTED.
    posted: bool,
}

impl RemoteXfer {
    /// Bytes the transfer moves.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl RemotePath {
    /// `prepXfer` towards `agent`, with segments already validated: neighbours are joined
    /// and the list cut into parts, everything later posts need built here.
    pub fn prepare(
        &self,
        op: Op,
        _agent: &str,
        _peer: &PeerInfo,
        segments: Vec<Segment>,
    ) -> Result<RemoteXfer, Error> {
        let segments = xfer::merge(segments);
        let wire: Arc<[WireSegment]> = segments
            .iter()
            .map(|s| match s.far {
                Far::Peer { token, addr } => WireSegment::new(token.region, token.key, addr, s.len),
                Far::Own { addr, .. } => WireSegment::new(0, 0, addr, s.len),
            })
            .collect();
        let ranges: Arc<[Range<usize>]> = xfer::parts(segments.len(), PART_SEGMENTS).into();
        let mut mds: Vec<MdId> = segments.iter().map(|s| s.md).collect();
        mds.sort_unstable();
        mds.dedup();
        let bytes = segments
            .iter()
            .map(|s| s.len)
            .fold(0u64, u64::saturating_add);
        let limit = match op {
            Op::Read => self.shared.inline_read_bytes,
            Op::Write => self.shared.inline_write_bytes,
        };
        // A small transfer of one part goes inline when every local segment is host memory or
        // device memory with a copier: a READ offers to take its data in the answer, a WRITE
        // puts it in the announce.
        let inline = if goes_inline(limit, bytes, ranges.len()) {
            segments
                .iter()
                .map(|s| match s.dev {
                    None => Some(None),
                    Some(device) => self.shared.copier(device).map(Some),
                })
                .collect::<Option<Vec<_>>>()
        } else {
            None
        };
        Ok(RemoteXfer {
            op,
            segments,
            wire,
            ranges,
            mds,
            bytes,
            inline,
            inline_data: Vec::new(),
            flight: None,
            posted: false,
        })
    }

    /// `postXfer` of a prepared transfer; `notif` is delivered to the peer once every byte
    /// landed.
    ///
    /// A conn can die between being picked and being written to. Nothing of this post reached
    /// the peer then — a dead conn's peer discards everything — so the post is made once more
    /// on a fresh conn.
    pub fn post(
        &self,
        agent: &str,
        peer: &PeerInfo,
        x: &mut RemoteXfer,
        notif: Option<&[u8]>,
    ) -> Result<Status, Error> {
        let reused = self.shared.live_outgoing(agent).is_some();
        match self.post_once(agent, peer, x, notif) {
            Err(Error::Disconnected(_)) if reused => self.post_once(agent, peer, x, notif),
            r => r,
        }
    }

    fn post_once(
        &self,
        agent: &str,
        peer: &PeerInfo,
        x: &mut RemoteXfer,
        notif: Option<&[u8]>,
    ) -> Result<Status, Error> {
        if let Some(f) = &x.flight {
            let f = lock(f);
            let over = f.p.is_over() || f.conn.dead().is_some();
            if x.posted && !over {
                return Err(Error::RepostActive);
            }
        }
        x.posted = false;
        let conn = self.shared.outgoing(agent, peer)?;
        if let Some(msg) = notif {
            if msg.len() > conn.peer_max_notif {
                return Err(Error::invalid(
                    Arg::Notif,
                    format!(
                        "{} bytes, but agent {agent:?} takes notifications of at most {} bytes \
                         (its backend parameter max_notif_bytes)",
                        msg.len(),
                        conn.peer_max_notif
                    ),
                ));
            }
        }
        self.shared.ensure_registered(&conn, &x.mds)?;
        let n = x.ranges.len();
        let wire_id = self
            .shared
            .next_wire
            .fetch_add(n.max(1) as u64, Ordering::Relaxed);
        let flight = match &x.flight {
            Some(fl) => fl.clone(),
            None => {
                let op = match x.op {
                    Op::Read => ProtoOp::Read,
                    Op::Write => ProtoOp::Write,
                };
                let fl = Arc::new(Mutex::new(Flight {
                    p: FlightState::new(op, vec![Part::default(); n]),
                    conn: conn.clone(),
                    segs: Vec::with_capacity(x.segments.len()),
                    far: x.wire.clone(),
                    ranges: x.ranges.clone(),
                    inline_dst: Vec::with_capacity(if x.inline.is_some() {
                        x.segments.len()
                    } else {
                        0
                    }),
                    notif: Vec::new(),
                    posted_at: Instant::now(),
                    bytes: x.bytes,
                }));
                x.flight = Some(fl.clone());
                fl
            }
        };
        {
            // The previous post is over (done, failed and settled, or its conn died): reset
            // the flight for this one. Its parts, if its conn died, are never answered: the
            // dead conn is never serviced again. Then the conn's engine regions of our
            // segments (this conn may be new since the last post). Lock order: flight, then
            // session.
            let mut f = lock(&flight);
            let old = f.conn.clone();
            // A READ offering inline asks for all its bytes in the answer.
            let inline_read = x.inline.as_ref().map(|_| x.bytes);
            f.p.restart(wire_id, notif.is_some(), inline_read, |id| {
                lock(&old.engine).release(id)
            });
            f.conn = conn.clone();
            f.posted_at = Instant::now();
            f.notif.clear();
            f.notif.extend_from_slice(notif.unwrap_or(&[]));
            f.inline_dst.clear();
            if let (Some(copiers), Op::Read) = (&x.inline, x.op) {
                let dst = x
                    .segments
                    .iter()
                    .zip(copiers)
                    .map(|(s, c)| (s.local, s.len, c.clone()));
                f.inline_dst.extend(dst);
            }
            f.segs.clear();
            let e = lock(&conn.engine);
            for s in &x.segments {
                let mem = *e
                    .mems
                    .get(&s.md)
                    .ok_or_else(|| Error::invalid(Arg::Metadata, "registration is gone"))?;
                f.segs.push(ESeg {
                    mem,
                    offset: s.offset,
                    remote_offset: 0,
                    len: s.len,
                });
            }
        }
        // The clock of the no-progress timeout starts with the post.
        conn.heard();
        if n == 0 {
            // Nothing to move (every descriptor was empty): done now, the notification sent.
            lock(&flight).p.handle_empty();
            x.posted = true;
            if let Some(msg) = notif {
                conn.send(&Message::Notif(Notif { msg }))?;
            }
            return Ok(Status::Success);
        }
        if let (Some(copiers), Op::Write) = (&x.inline, x.op) {
            gather_local(&x.segments, copiers, &mut x.inline_data)?;
            // The data is in the announce: nothing for the data session, and no place among
            // the outstanding parts.
            let mut tx = lock(&conn.tx);
            {
                lock(&flight).p.handle_sent_inline();
            }
            lock(&conn.out)
                .parts
                .insert(wire_id, (flight.clone(), false));
            let sent = conn.send_on(
                &mut tx,
                &Message::WriteAnnounce(WriteAnnounce {
                    xfer: wire_id,
                    segments: &x.wire,
                    notif,
                    data: Some(&x.inline_data),
                }),
            );
            drop(tx);
            if let Err(e) = sent {
                lock(&conn.out).parts.remove(&wire_id);
                return Err(e);
            }
        } else {
            let mut tx = lock(&conn.tx);
            // Transfers waiting for room go first: a stream of small ones must not starve a
            // large one.
            let behind = !lock(&conn.out).waiting.is_empty();
            let all = !behind && self.shared.send_parts(&conn, &mut tx, &flight)?;
            if !all {
                lock(&conn.out).waiting.push_back(flight.clone());
            }
            conn.flush_on(&mut tx)?;
        }
        x.posted = true;
        if x.op == Op::Write && x.inline.is_none() {
            // Put the data on the wire now rather than at the first `checkXfer`. A session
            // error surfaces there (this post stands; the conn is then dead).
            let _ = lock(&conn.engine).progress();
        }
        Ok(Status::InProgress)
    }

    /// `checkXfer` of a posted transfer.
    pub fn check(&self, x: &mut RemoteXfer) -> Result<Status, Error> {
        let (Some(fl), true) = (&x.flight, x.posted) else {
            return Err(Error::NotPosted);
        };
        // Read the peer's answers and drive the session on this thread as well: leaving them
        // to the backend thread would put a thread hand-off into every transfer's latency. An
        // initiator conn carries nothing else, and everything `service` touches is behind the
        // conn's locks; no flight may be held here.
        let conn = {
            let f = lock(fl);
            (!f.p.is_done() && f.p.failure().is_none()).then(|| f.conn.clone())
        };
        if let Some(conn) = conn.filter(|c| c.initiator) {
            conn.checked.store(self.shared.now_ns(), Ordering::Relaxed);
            self.shared.service(&conn);
        }
        let mut f = lock(fl);
        if f.p.is_done() {
            return Ok(Status::Success);
        }
        if let Some(why) = f.conn.dead() {
            f.fail(Status::RemoteDisconnect, why.clone());
            let (status, reason) =
                f.p.failure()
                    .cloned()
                    .unwrap_or((Status::RemoteDisconnect, why));
            return Err(Error::Remote { status, reason });
        }
        // Settled since the service above (an answer read by the backend thread): complete
        // it here, as `drive` does.
        self.shared.complete(&mut f);
        match f.p.poll_complete() {
            Completion::Pending => {}
            Completion::AlreadyDone | Completion::Done { .. } => return Ok(Status::Success),
            Completion::Failed => {
                // `Failed` means a failure was recorded.
                let (status, reason) =
                    f.p.failure()
                        .cloned()
                        .unwrap_or((Status::Backend, String::new()));
                return Err(Error::Remote { status, reason });
            }
        }
        if f.conn.silent() {
            let why = format!("no progress from the peer for {:?}", f.conn.timeout);
            // Where the two sides stand is unknown now: the conn cannot be reused.
            f.conn.kill(&why);
            f.fail(Status::RemoteDisconnect, why.clone());
            return Err(Error::Disconnected(why));
        }
        Ok(Status::InProgress)
    }

    /// `releaseReqH`: abandons an in-flight transfer without blocking. Its engine transfers
    /// finish into memory on their own; parts still to be answered are answered and settled
    /// by whoever services the conn; parts not yet sent never are.
    pub fn abort(&self, x: RemoteXfer) {
        if let Some(fl) = x.flight {
            let conn = {
                let mut f = lock(&fl);
                let conn = f.conn.clone();
                f.p.handle_release(|id| lock(&conn.engine).release(id));
                conn
            };
            lock(&conn.out).waiting.retain(|w| !Arc::ptr_eq(w, &fl));
        }
    }
}

impl Shared {
    /// Registers our registrations `mds` on the conn's session where they are not yet (their
    /// first use there). The metadata table's read lock keeps them registered meanwhile.
    fn ensure_registered(&self, c: &Conn, mds: &[MdId]) -> Result<(), Error> {
        if mds.iter().all(|m| lock(&c.engine).mems.contains_key(m)) {
            return Ok(());
        }
        // Table, then session: the lock order.
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        let mut e = lock(&c.engine);
        for &md in mds {
            let region = table
                .local(md)
                .map_err(|_| Error::invalid(Arg::Metadata, "registration is gone"))?;
            register_on(&mut e, md, region)?;
        }
        Ok(())
    }

    /// Initiator: whether a part still to finish on `c` has data to move in engine region
    /// `id` (a READ whose announce has not come yet: its receives are still to be posted).
    pub(super) fn references(&self, c: &Conn, id: MemId) -> bool {
        let flights: Vec<Arc<Mutex<Flight>>> = lock(&c.out)
            .parts
            .values()
            .map(|(f, _)| f.clone())
            .collect();
        flights.iter().any(|fl| {
            let f = lock(fl);
            let uses =
                f.p.unsettled()
                    .any(|k| f.segs[f.ranges[k].clone()].iter().any(|s| s.mem == id));
            uses
        })
    }

    /// Initiator: sends the flight's next parts while the conn has room for them, each part's
    /// engine sends (WRITE) posted with its announce under the held writer. `Ok(true)` once
    /// nothing is left to send (all sent, or the flight failed or was released).
    fn send_parts(
        &self,
        c: &Conn,
        tx: &mut Writer,
        fl: &Arc<Mutex<Flight>>,
    ) -> Result<bool, Error> {
        let mut f = lock(fl);
        while let Some((k, xfer)) = f.p.next_part() {
            if c.outstanding.load(Ordering::Relaxed) >= self.max_outstanding() {
                return Ok(false);
            }
            let range = f.ranges[k].clone();
            if f.p.op() == ProtoOp::Write {
                let posted = lock(&c.engine).live().and_then(|s| {
                    s.post(Direction::Send, &f.segs[range.clone()])
                        .map_err(Error::Engine)
                });
                match posted {
                    Ok(id) => f.p.handle_posted(id),
                    // Nothing of this part went out: the post fails if it is the first, else
                    // the parts already sent finish and the transfer fails with this.
                    Err(e) if k == 0 => return Err(e),
                    Err(e) => {
                        f.fail(e.status(), format!("part {k}: {e}"));
                        break;
                    }
                }
            }
            let msg = match f.p.op() {
                ProtoOp::Write => Message::WriteAnnounce(WriteAnnounce {
                    xfer,
                    segments: &f.far[range],
                    notif: f.p.notif_in_announce().then_some(&f.notif[..]),
                    data: None,
                }),
                ProtoOp::Read => Message::ReadRequest(ReadRequest {
                    xfer,
                    segments: &f.far[range],
                    inline_ok: f.p.offers_inline(),
                }),
            };
            if let Some(why) = c.dead() {
                return Err(Error::Disconnected(why));
            }
            tx.push(&msg)?;
            lock(&c.out).parts.insert(xfer, (fl.clone(), true));
            c.outstanding.fetch_add(1, Ordering::Relaxed);
            f.p.handle_sent();
        }
        Ok(true)
    }

    /// Initiator: finds the parts that finished (their engine transfers done and their
    /// answers in), frees their places, completes the flights whose every part settled (so
    /// a notification sent after the data leaves now, whoever services the conn, not at the
    /// application's next `checkXfer`), and sends parts that waited for room.
    pub(super) fn drive(&self, c: &Conn) -> bool {
        let mut scan = lock(&c.scan);
        let Scan { listed: snap, gone } = &mut *scan;
        snap.clear();
        gone.clear();
        snap.extend(
            lock(&c.out)
                .parts
                .iter()
                .map(|(id, (f, _))| (*id, f.clone())),
        );
        for (id, fl) in snap.drain(..) {
            let mut f = lock(&fl);
            let Some(k) = f.p.index_of(id) else {
                // A part of an earlier post of a reposted request: nothing to wait for.
                gone.push(id);
                continue;
            };
            if let Some(xid) = f.p.engine(k) {
                let status = lock(&c.engine).status(xid);
                match status {
                    Ok(Progress::Done { .. }) => {
                        lock(&c.engine).release(xid);
                        f.p.handle_moved(k);
                    }
                    Ok(Progress::Pending { .. }) => {}
                    Err(err) => {
                        drop(f);
                        c.kill(&format!("data session: {err}"));
                        return true;
                    }
                }
            }
            if f.p.parts()[k].settled() {
                gone.push(id);
                self.complete(&mut f);
            }
        }
        let any = !gone.is_empty();
        if any {
            let mut out = lock(&c.out);
            for id in gone.iter() {
                if let Some((_, true)) = out.parts.remove(id) {
                    c.outstanding.fetch_sub(1, Ordering::Relaxed);
                }
            }
            drop(out);
            c.heard();
        }
        drop(scan);
        if lock(&c.out).waiting.is_empty()
            || c.outstanding.load(Ordering::Relaxed) >= self.max_outstanding()
        {
            return any;
        }
        let mut tx = lock(&c.tx);
        loop {
            let Some(fl) = lock(&c.out).waiting.front().cloned() else {
                break;
            };
            match self.send_parts(c, &mut tx, &fl) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let status = e.status();
                    lock(&fl).fail(status, e.to_string());
                }
            }
            lock(&c.out).waiting.pop_front();
        }
        let _ = c.flush_on(&mut tx);
        true
    }

    /// Completes a flight whose every part settled: its notification, if it goes after the
    /// data, is sent first (a failure to send fails the flight, so `checkXfer` reports it);
    /// then `checkXfer` finds it done. The flight stays locked throughout, so a repost (which
    /// needs it done) cannot reset its notification before it is sent.
    fn complete(&self, f: &mut Flight) {
        if !completes(f) {
            return; // parts still out, failed, released, or already completed
        }
        if f.p.notif_after() {
            let conn = f.conn.clone();
            if let Err(e) = conn.send(&Message::Notif(Notif { msg: &f.notif })) {
                f.fail(e.status(), format!("sending the notification: {e}"));
                return;
            }
        }
        if let Completion::Done { .. } = f.p.poll_complete() {
            self.cost.observe(f.bytes, f.posted_at.elapsed());
        }
    }

    /// The flight an answer names, if its part is still listed.
    pub(super) fn answered(&self, c: &Conn, xfer: u64) -> Option<Arc<Mutex<Flight>>> {
        lock(&c.out).parts.get(&xfer).map(|(f, _)| f.clone())
    }
}

/// Every part of the current post settled, without a failure, and nobody completed it yet
/// (a released request is not completed: its notification is not sent).
fn completes(f: &Flight) -> bool {
    f.p.settled() && !f.p.is_done() && f.p.failure().is_none() && !f.p.released()
}
