//! Target side of a conn: the jobs (engine transfers in flight, WRITEs waiting for earlier ones),
//! validating announces and requests against our registrations, dropping a refused WRITE's data,
//! and finishing jobs in arrival order (`tcpx_core::nixl::Jobs` decides which: notifications
//! queued, Acks sent).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use tcpx::engine::{Direction, Memory, Progress, Segment as ESeg, XferId};
use tcpx_core::nixl::target::drain_chunks;
use tcpx_core::wire::{Ack, Message, ReadRequest, Segment as WireSegment};

use crate::error::{Error, Status};

use super::conn::{register_on, Conn, Engine};
use super::protocol::locate;
use super::{lock, Shared, PART_SEGMENTS};

impl Conn {
    /// Target side: posts the engine segments `Shared::resolve` left in the session.
    pub(super) fn post_resolved(&self, dir: Direction) -> Result<XferId, Error> {
        let mut e = lock(&self.engine);
        let Engine {
            session, resolved, ..
        } = &mut *e;
        let session = session
            .as_mut()
            .ok_or_else(|| Error::Disconnected("the connection was closed".into()))?;
        session.post(dir, resolved).map_err(Error::Engine)
    }
}

impl Shared {
    /// Target side: completed jobs, in arrival order (a job waits for every WRITE before it
    /// still landing), get their WRITE's notif queued and Ack sent.
    pub(super) fn finish_jobs(&self, c: &Arc<Conn>) -> bool {
        // Only target conns have jobs, and only the backend thread serves target conns.
        let mut finished = lock(&c.finished);
        finished.clear();
        {
            let mut jobs = lock(&c.jobs);
            if jobs.is_empty() {
                return false;
            }
            let mut e = lock(&c.engine);
            for i in 0..jobs.slots() {
                let Some(id) = jobs.engine(i) else { continue };
                match e.status(id) {
                    Ok(Progress::Done { .. }) => {
                        e.release(id);
                        jobs.handle_done(i);
                    }
                    Ok(Progress::Pending { .. }) => {}
                    Err(err) => {
                        drop(e);
                        c.kill(&format!("data session: {err}"));
                        return true;
                    }
                }
            }
            while let Some(j) = jobs.poll_finished() {
                finished.push(j);
            }
        }
        let any = !finished.is_empty();
        for j in finished.drain(..) {
            // Its room was reserved when it arrived: only now, with the data in place (its
            // own and that of every WRITE before it), may the application see it.
            if let Some(msg) = j.notif {
                lock(&self.notifs).push_reserved(c.peer.clone(), msg);
            }
            if j.ack {
                let acked = c.send(&Message::Ack(Ack {
                    xfer: j.wire,
                    status: 0,
                }));
                if acked.is_err() {
                    return true;
                }
            }
        }
        any
    }

    /// Whether the conn's jobs are at their bound, so a job that would wait behind a WRITE
    /// still landing must wait for room instead (see `Jobs::is_full`). Only the backend
    /// thread changes a target conn's jobs, so this holds until the caller's push.
    pub(super) fn jobs_full(&self, c: &Conn) -> bool {
        lock(&c.jobs).is_full()
    }

    /// Takes room for a WRITE's or a `Notif`'s notification; `false` when the queue has none
    /// (the frame waits).
    pub(super) fn reserve(&self, notif: Option<&[u8]>) -> bool {
        match notif {
            Some(m) => lock(&self.notifs).reserve(m.len()).is_ok(),
            None => true,
        }
    }

    pub(super) fn unreserve(&self, notif: Option<&[u8]>) {
        if let Some(m) = notif {
            lock(&self.notifs).unreserve(m.len());
        }
    }

    /// Checks announced target ranges against our registrations and leaves their engine
    /// segments in the session's `resolved` list, for the caller to post under a new lock of
    /// the session (only this thread touches that list, so it is still there). A registration
    /// used for the first time on this session is registered on it now.
    pub(super) fn resolve(&self, c: &Conn, segs: &[WireSegment]) -> Result<(), (Status, String)> {
        // Table, then session: the lock order.
        let table = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        // Every range is checked before any is mapped, so a refusal is INVALID_PARAM whatever
        // the session knows.
        let region = |i: usize, s: &WireSegment| locate(&table, i, s).map(|(md, off, _)| (md, off));
        for (i, s) in segs.iter().enumerate() {
            region(i, s)?;
        }
        let mut e = lock(&c.engine);
        e.resolved.clear();
        for (i, s) in segs.iter().enumerate() {
            let (md, offset) = region(i, s)?;
            let mem = match e.mems.get(&md) {
                Some(&m) => m,
                None => {
                    let r = table.local(md).map_err(|_| {
                        (Status::InvalidParam, format!("segment {i}: unknown region"))
                    })?;
                    register_on(&mut e, md, r).map_err(|err| {
                        (
                            Status::Backend,
                            format!("segment {i}: registering region {md:#x} here: {err}"),
                        )
                    })?
                }
            };
            e.resolved.push(ESeg {
                mem,
                offset,
                remote_offset: 0,
                len: s.len(),
            });
        }
        Ok(())
    }

    /// Target side: receives the data of a WRITE we refused into the sink and drops it: one
    /// receive per chunk the initiator's plan cuts (each segment from its start, in chunks of
    /// `chunk_bytes`), all at the sink's start. The chunks, their order and so their channels
    /// are those of the initiator's sends, so the session stays paired. `Err` when the
    /// receives cannot be posted (the conn must close then).
    pub(super) fn drain(&self, c: &Conn, wire: u64, segs: &[WireSegment]) -> Result<(), Error> {
        let cb = u64::from(self.engine_cfg.chunk_bytes);
        let mut posted = Vec::new();
        {
            let mut e = lock(&c.engine);
            let sink = match &e.sink {
                Some((id, _)) => *id,
                None => {
                    let mut buf = vec![0u8; cb as usize].into_boxed_slice();
                    let session = e.live()?;
                    // SAFETY: the boxed buffer moves into `e.sink`, in the same `Engine` as
                    // the session and declared after it, so its heap bytes are freed only once
                    // the session (and every receive it posted into them) is gone.
                    let id = unsafe {
                        session.register(buf.as_mut_ptr().cast(), buf.len(), Memory::Host)
                    }
                    .map_err(Error::Engine)?;
                    e.sink = Some((id, buf));
                    id
                }
            };
            let Engine {
                session, resolved, ..
            } = &mut *e;
            let session = session
                .as_mut()
                .ok_or_else(|| Error::Disconnected("the connection was closed".into()))?;
            resolved.clear();
            for len in drain_chunks(segs, cb) {
                resolved.push(ESeg {
                    mem: sink,
                    offset: 0,
                    remote_offset: 0,
                    len,
                });
                if resolved.len() == PART_SEGMENTS {
                    posted.push(
                        session
                            .post(Direction::Recv, resolved)
                            .map_err(Error::Engine)?,
                    );
                    resolved.clear();
                }
            }
            if !resolved.is_empty() {
                posted.push(
                    session
                        .post(Direction::Recv, resolved)
                        .map_err(Error::Engine)?,
                );
            }
        }
        let mut jobs = lock(&c.jobs);
        for id in posted {
            let _ = jobs.handle_drain(id, wire);
        }
        drop(jobs);
        self.drained.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Validates a READ and readies its answer: `Ok(true)` = gathered for a `ReadData`,
    /// `Ok(false)` = resolved for a `ReadAnnounce` and the data comms.
    pub(super) fn answer_read(
        &self,
        c: &Conn,
        r: &ReadRequest<'_>,
    ) -> Result<bool, (Status, String)> {
        if r.inline_ok && self.gather_inline(c, r.segments)? {
            return Ok(true);
        }
        self.resolve(c, r.segments).map(|()| false)
    }
}
