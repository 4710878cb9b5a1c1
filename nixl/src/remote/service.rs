//! One pass over a conn: read and handle its frames, drive its session, the role's own work, and
//! closing a conn whose peer stopped making progress.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tcpx::engine::Direction;
use tcpx_core::nixl::pace::{keepalive_due, target_pass};
use tcpx_core::nixl::{inbound, Inbound, Violation};
use tcpx_core::wire::{self, Keepalive, Message, ReadAnnounce, ReadData};

use crate::error::{Error, Status};

use super::conn::{Conn, Handled};
use super::inline::write_ours;
use super::protocol::{render, violation};
use super::{lock, now, Shared, READ_PER_PASS};

impl Shared {
    /// One pass over a conn: read and handle frames, drive the session, then the role's own
    /// work (initiator: settle parts, send waiting ones; target: finish jobs).
    pub(super) fn service(&self, c: &Arc<Conn>) -> bool {
        if c.dead().is_some() {
            return false;
        }
        let mut moved = false;
        // Whole frames handled: progress for a conn waiting on a partial frame, not for one
        // waiting on announced data (frames must not keep a stalled WRITE's conn open).
        let mut framed = false;
        let partial;
        // A frame waits for room: retried on every pass (room comes from the application
        // taking notifications, or from jobs finishing).
        let mut held = false;
        // EOF, or a frame that closes the conn, after frames: what those frames completed (a
        // last Notif, say) is still delivered, then the conn is closed.
        let mut eof = false;
        let mut fatal: Option<String> = None;
        {
            let mut rx = lock(&c.rx);
            let mut budget = READ_PER_PASS;
            loop {
                // Handle every whole frame, unless one waits for room.
                let mut off = 0;
                while !held {
                    match wire::next_frame_within(&rx.buf[off..], c.max_frame) {
                        Ok(Some(f)) => {
                            let n = f.len();
                            match self.handle(c, f) {
                                Ok(Handled::Done) => {
                                    off += n;
                                    framed = true;
                                }
                                Ok(Handled::Held) => held = true,
                                Err(e) => {
                                    fatal = Some(e.to_string());
                                    break;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            fatal = Some(format!("bad control frame: {e}"));
                            break;
                        }
                    }
                }
                rx.buf.drain(..off);
                if held || eof || budget == 0 || fatal.is_some() {
                    break;
                }
                match rx.read_from(&c.stream, budget) {
                    Ok(0) => eof = true,
                    Ok(n) => budget -= n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        fatal = Some(format!("control read: {e}"));
                        break;
                    }
                }
            }
            rx.held = held;
            // A frame waiting for room is not a peer stopping mid-frame.
            partial = !held && !rx.buf.is_empty();
        }
        if framed {
            c.heard();
        }
        match lock(&c.engine).progress() {
            Ok(m) => {
                if m {
                    c.heard();
                }
                moved |= m;
            }
            Err(e) => {
                c.kill(&format!("data session: {e}"));
                return true;
            }
        }
        if c.initiator {
            moved |= self.drive(c);
        } else {
            moved |= self.finish_jobs(c);
        }
        if let Some(why) = fatal {
            c.kill(&why);
            return true;
        }
        if eof {
            c.close("peer closed the control stream");
            return true;
        }
        {
            let mut tx = lock(&c.tx);
            // Holding the peer back: say we are alive, so its timeout measures a dead agent
            // and not a slow application here.
            if keepalive_due(held, tx.last_frame, now(), c.timeout) {
                let _ = c.send_on(&mut tx, &Message::Keepalive(Keepalive));
            } else if tx.pending() {
                let _ = c.flush_on(&mut tx);
            }
            if c.stuck(&tx) {
                drop(tx);
                c.kill(&format!(
                    "the peer took none of our control frames for {:?}",
                    c.timeout
                ));
                return true;
            }
        }
        if c.initiator {
            return moved || framed;
        }
        let jobs_waiting = !lock(&c.jobs).is_empty();
        let pass = target_pass(partial, jobs_waiting, moved, framed);
        moved |= framed;
        let mut stalled = lock(&c.stalled);
        if stalled.handle_pass(pass, now(), c.timeout) {
            drop(stalled);
            let what = if partial {
                "a partial frame"
            } else {
                "announced data"
            };
            c.kill(&format!(
                "no progress from the peer for {:?} ({what})",
                c.timeout
            ));
            return true;
        }
        moved || held
    }

    /// Acts on one control frame. An `Err` closes the conn.
    fn handle(&self, c: &Arc<Conn>, buf: &[u8]) -> Result<Handled, Error> {
        let msg = wire::parse(buf).map_err(|err| Error::Wire {
            what: "control frame",
            err,
        })?;
        match inbound(c.initiator, msg, self.max_notif).map_err(violation)? {
            Inbound::InlineWrite(w) => match self.take_inline_write(c, &w) {
                Ok(h) => return Ok(h),
                Err((status, why)) => {
                    c.log_repeated(
                        &c.refused_writes,
                        format_args!("refusing inline WRITE {}: {why}", w.xfer),
                    );
                    // Nothing else of it is on the wire: the conn stays usable.
                    c.send_error(status, w.xfer, &why)?;
                }
            },
            Inbound::Write(w) => {
                if !self.reserve(w.notif) {
                    return Ok(Handled::Held);
                }
                match self.resolve(c, w.segments) {
                    Ok(()) => {
                        let id = c.post_resolved(Direction::Recv)?;
                        // The one allocation serving a WRITE: the notification the app
                        // receives.
                        let notif = w.notif.map(<[u8]>::to_vec);
                        let _ = lock(&c.jobs).handle_write(Some(id), w.xfer, notif);
                    }
                    Err((status, why)) => {
                        self.unreserve(w.notif);
                        c.log_repeated(
                            &c.refused_writes,
                            format_args!("refusing WRITE {}: {why}", w.xfer),
                        );
                        // Its data is on the wire already: taken and dropped, so the session
                        // stays paired and the conn keeps serving; nothing of it is written.
                        self.drain(c, w.xfer, w.segments)?;
                        c.send_error(status, w.xfer, &why)?;
                    }
                }
            }
            Inbound::Read(r) => match self.answer_read(c, &r) {
                Err((status, why)) => {
                    c.log_repeated(
                        &c.refused_reads,
                        format_args!("refusing READ {}: {why}", r.xfer),
                    );
                    // Nothing was posted on either side: the conn stays usable.
                    c.send_error(status, r.xfer, &why)?;
                }
                Ok(true) => {
                    // One frame answers the READ; nothing is posted on either side.
                    // Counted before the answer can complete the READ at the initiator.
                    self.inline_answers.fetch_add(1, Ordering::Relaxed);
                    let data = lock(&c.inline_buf);
                    c.send(&Message::ReadData(ReadData {
                        xfer: r.xfer,
                        data: &data,
                    }))?;
                }
                Ok(false) => {
                    let mut tx = lock(&c.tx);
                    c.send_on(
                        &mut tx,
                        &Message::ReadAnnounce(ReadAnnounce { xfer: r.xfer }),
                    )?;
                    let id = c.post_resolved(Direction::Send)?;
                    drop(tx);
                    let _ = lock(&c.jobs).handle_read(id, r.xfer);
                }
            },
            Inbound::Notif(msg) => {
                // No room: the notification waits on this conn (and so does everything the
                // peer sends after it) until the application takes notifications.
                if self.jobs_full(c) || !self.reserve(Some(msg)) {
                    return Ok(Handled::Held);
                }
                // Queued behind the WRITEs that arrived before it (at once when none is still
                // landing). The allocation is the notification the app receives.
                let _ = lock(&c.jobs).handle_notif(msg.to_vec());
            }
            Inbound::Ack(a) => {
                let f = self.answered(c, a.xfer).ok_or_else(|| {
                    violation(Violation::UnknownAnswer {
                        what: "Ack",
                        xfer: a.xfer,
                    })
                })?;
                lock(&f)
                    .p
                    .handle_ack(a.xfer, a.status, render)
                    .map_err(violation)?;
            }
            Inbound::ReadData(d) => {
                let f = self.answered(c, d.xfer).ok_or_else(|| {
                    violation(Violation::UnknownAnswer {
                        what: "ReadData",
                        xfer: d.xfer,
                    })
                })?;
                let mut f = lock(&f);
                let copy =
                    f.p.handle_read_data(d.xfer, d.data.len() as u64, render)
                        .map_err(violation)?;
                // A released READ's memory is no longer ours to write.
                if copy {
                    let mut at = 0;
                    let mut failed = None;
                    for (addr, len, copier) in &f.inline_dst {
                        let src = &d.data[at..at + *len as usize];
                        at += *len as usize;
                        // SAFETY: `addr..addr+len` is a range of one of our registrations
                        // (device memory of the copier's device when there is one; checked at
                        // prepare, still registered at post: NIXL's contract keeps it so while
                        // the transfer is live); the frame buffer does not overlap it.
                        if let Err(e) = unsafe { write_ours(copier.as_deref(), *addr, src) } {
                            failed = Some(format!("writing device memory: {e}"));
                            break;
                        }
                    }
                    if let Some(why) = failed {
                        // The frame was whole: the conn stays usable, only this READ failed.
                        crate::log!(Warn, "READ {}: {why}", d.xfer);
                        f.fail(Status::Backend, why);
                    }
                }
            }
            Inbound::ReadAnnounce(r) => {
                let f = self.answered(c, r.xfer).ok_or_else(|| {
                    violation(Violation::UnknownAnswer {
                        what: "ReadAnnounce",
                        xfer: r.xfer,
                    })
                })?;
                let mut f = lock(&f);
                // A stale one cannot be paired (the flight's segments are the next post's):
                // the conn closes.
                let k = f.p.check_read_announce(r.xfer).map_err(violation)?;
                // Even a released READ must post its receives: the peer's data is coming and
                // later transfers pair by order.
                let range = f.ranges[k].clone();
                let mut e = lock(&c.engine);
                let id = e
                    .live()?
                    .post(Direction::Recv, &f.segs[range])
                    .map_err(Error::Engine)?;
                if let Some(abandoned) = f.p.handle_read_posted(k, id) {
                    e.release(abandoned);
                }
            }
            Inbound::Error(m) => {
                if let Some(f) = self.answered(c, m.xfer) {
                    lock(&f)
                        .p
                        .handle_error(m.xfer, m.code, m.text, render)
                        .map_err(violation)?;
                } else {
                    // Not about a transfer in flight: an answer to a released one.
                    c.log_repeated(&c.refused_notifs, format_args!("error: {}", m.text));
                }
            }
            Inbound::Keepalive => {}
        }
        Ok(Handled::Done)
    }
}
