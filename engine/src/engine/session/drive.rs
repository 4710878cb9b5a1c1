//! Driving a session's channels: posting chunks of queued transfers while their windows have
//! room, completing them in order, launching the unpacks of device-memory receives, and
//! failing the session on a plugin error.

use tcpx_core::chunk::RecvAction;
use tcpx_core::mem::MemKind;
use tcpx_core::ring::TCPX_REQUESTS;

use super::{RxChunk, Session, TxChunk};
use crate::engine::transfer::State;
use crate::error::{Error, Result};
use crate::net::RecvBuf;

impl Session {
    /// Launches every unpack this poll queued in one kernel launch, then records one event
    /// per channel after it. Each chunk remembers its channel's event: the one of the
    /// channel's newest queued chunk, whose window slot cannot be reused before every older
    /// chunk (all of this batch) has been consumed.
    pub(super) fn launch_unpacks(&mut self) -> Result<()> {
        let Some(gpu) = self.gpu.as_mut().filter(|g| g.queued()) else {
            return Ok(());
        };
        gpu.launch()?;
        for (c, ch) in self.channels.iter_mut().enumerate() {
            let Some(last) = self.queued.iter().filter(|q| q.0 == c).map(|q| q.1).max() else {
                continue;
            };
            let ev = (last % TCPX_REQUESTS as u64) as u8;
            gpu.record(c, ev)?;
            for &(_, seq) in self.queued.iter().filter(|q| q.0 == c) {
                if let Some(p) = ch.rx.payload_mut(seq) {
                    p.ev = Some(ev);
                }
            }
        }
        self.queued.clear();
        Ok(())
    }

    pub(super) fn drive(&mut self, c: usize) -> Result<bool> {
        let mut moved = self.post_sends(c)?;
        moved |= self.post_recvs(c)?;
        moved |= self.complete_sends(c)?;
        moved |= self.complete_recvs(c)?;
        Ok(moved)
    }

    fn post_sends(&mut self, c: usize) -> Result<bool> {
        let mut moved = false;
        let ch = &mut self.channels[c];
        while ch.tx.len() < self.cfg.window {
            let Some(&x) = ch.tx_queue.front() else { break };
            let slot = &mut self.slots[x as usize];
            let Some(mut cur) = slot.cursors[c] else {
                ch.tx_queue.pop_front();
                continue;
            };
            let Some(chunk) = cur.next(&slot.segments) else {
                slot.cursors[c] = None;
                ch.tx_queue.pop_front();
                continue;
            };
            let ri = slot.regions[chunk.segment as usize];
            let region = self.registry.by_index(ri);
            // SAFETY: bounds were checked at post; the region stays registered while
            // `in_flight` > 0; the caller keeps the memory valid while registered.
            let data = unsafe { region.base.add(chunk.local_offset as usize) };
            // SAFETY: as above.
            let req = unsafe {
                self.net.isend(
                    &ch.send,
                    data.cast(),
                    chunk.len as usize,
                    0,
                    &region.regs_for(c, data as u64).0,
                )?
            };
            let Some(req) = req else { break };
            region.in_flight += 1;
            // A transfer leaves the queue with its last chunk: left at the front, its entry
            // would name whatever transfer reuses the slot once this one is released, and
            // post that one's chunks ahead of older ones (the peer would pair them wrongly).
            slot.cursors[c] = (cur.remaining() > 0).then_some(cur);
            if slot.cursors[c].is_none() {
                ch.tx_queue.pop_front();
            }
            let posted = ch.tx.post(
                chunk.len,
                TxChunk {
                    req,
                    xfer: x,
                    region: ri,
                },
            );
            debug_assert!(posted.is_ok(), "window length was checked");
            moved = true;
        }
        Ok(moved)
    }

    fn post_recvs(&mut self, c: usize) -> Result<bool> {
        let mut moved = false;
        let ch = &mut self.channels[c];
        while ch.rx.len() < self.cfg.window {
            let Some(&x) = ch.rx_queue.front() else { break };
            let slot = &mut self.slots[x as usize];
            let Some(mut cur) = slot.cursors[c] else {
                ch.rx_queue.pop_front();
                continue;
            };
            let Some(chunk) = cur.next(&slot.segments) else {
                slot.cursors[c] = None;
                ch.rx_queue.pop_front();
                continue;
            };
            let ri = slot.regions[chunk.segment as usize];
            let region = self.registry.by_index(ri);
            // SAFETY: see post_sends.
            let data = unsafe { region.base.add(chunk.local_offset as usize) };
            let buf = RecvBuf {
                data: data.cast(),
                size: chunk.len as usize,
                tag: 0,
                mr: &region.regs_for(c, data as u64).1,
            };
            let chunk_len = chunk.len;
            // SAFETY: see post_sends.
            let req = unsafe { self.net.irecv(&ch.recv, std::slice::from_ref(&buf))? };
            let Some(req) = req else { break };
            region.in_flight += 1;
            // As in post_sends: the queue entry goes with the last chunk.
            slot.cursors[c] = (cur.remaining() > 0).then_some(cur);
            if slot.cursors[c].is_none() {
                ch.rx_queue.pop_front();
            }
            // Device memory lands in bounce pages only on an UNPACK device.
            let memory = match (region.memory.kind(), ch.unpack) {
                (MemKind::Device, Some(_)) => MemKind::Device,
                _ => MemKind::Host,
            };
            let chunk = RxChunk {
                req,
                xfer: x,
                region: ri,
                dst: data as u64,
                ev: None,
            };
            let posted = ch.rx.post(chunk_len, memory, chunk);
            debug_assert!(posted.is_ok(), "window length was checked");
            moved = true;
        }
        Ok(moved)
    }

    fn complete_sends(&mut self, c: usize) -> Result<bool> {
        let mut moved = false;
        loop {
            let ch = &mut self.channels[c];
            let Some((_, head)) = ch.tx.head_payload_mut() else {
                break;
            };
            let Some(size) = self.net.test(&mut head.req)? else {
                break;
            };
            let (_, done) = ch.tx.net_done(size).map_err(chunk_err)?;
            self.retire(done.xfer, done.region, size as u64);
            moved = true;
        }
        Ok(moved)
    }

    fn complete_recvs(&mut self, c: usize) -> Result<bool> {
        let mut moved = false;
        loop {
            let ch = &mut self.channels[c];
            match ch.rx.poll() {
                RecvAction::Test { seq } => {
                    let head = ch
                        .rx
                        .payload_mut(seq)
                        .expect("the window names a live chunk");
                    if let Some(size) = self.net.test(&mut head.req)? {
                        let host = ch.rx.get(seq).map(|e| e.memory()) == Some(MemKind::Host);
                        if let (Some(src), true) = (&ch.unpack, host) {
                            src.check_host_receive(tcpx_core::unpack::slot_of(seq))?;
                        }
                        ch.rx.net_done(size).map_err(chunk_err)?;
                        continue;
                    }
                    // Nothing new from the network; an unpack may still have finished
                    // behind it (one stream: the oldest one finishes first).
                    let Some((useq, _)) = ch.rx.unpacking().next() else {
                        break;
                    };
                    let gpu = self.gpu.as_ref().expect("device chunks imply a GPU");
                    let ev = ch.rx.get(useq).and_then(|e| e.payload().ev);
                    if !matches!(ev, Some(ev) if gpu.done(c, ev)?) {
                        break;
                    }
                    ch.rx.unpack_done(useq).map_err(chunk_err)?;
                    moved = true;
                }
                RecvAction::Consume { .. } => {
                    let (_, done) = ch.rx.consume().map_err(chunk_err)?;
                    let len = done.req.size(0).unwrap_or(0) as u64;
                    if self.consumed_needed {
                        self.net.irecv_consumed(&ch.recv, done.req)?;
                    }
                    self.retire(done.xfer, done.region, len);
                    moved = true;
                }
                RecvAction::LaunchUnpack { seq, slot } => {
                    let (Some(src), Some(gpu)) = (&ch.unpack, self.gpu.as_mut()) else {
                        return Err(Error::Invalid(
                            "device chunk without a GPU or unpack source",
                        ));
                    };
                    let e = ch.rx.get(seq).expect("the window names a live chunk");
                    gpu.queue(src, slot, e.len(), e.payload().dst)?;
                    self.queued.push((c, seq));
                    ch.rx.unpack_launched(seq).map_err(chunk_err)?;
                    moved = true;
                }
                RecvAction::AwaitUnpack { seq } => {
                    let gpu = self.gpu.as_ref().expect("device chunks imply a GPU");
                    let ev = ch.rx.get(seq).and_then(|e| e.payload().ev);
                    if !matches!(ev, Some(ev) if gpu.done(c, ev)?) {
                        break;
                    }
                    ch.rx.unpack_done(seq).map_err(chunk_err)?;
                    moved = true;
                }
                RecvAction::Idle => break,
            }
        }
        Ok(moved)
    }

    fn retire(&mut self, xfer: u32, region: u32, bytes: u64) {
        self.registry.by_index(region).in_flight -= 1;
        let slot = &mut self.slots[xfer as usize];
        slot.bytes_done += bytes;
        slot.chunks_left -= 1;
        if slot.chunks_left == 0 && slot.state == State::Active {
            slot.state = State::Done;
            if slot.abandoned {
                slot.state = State::Free;
                self.free.push(xfer);
            }
        }
    }

    /// A plugin call failed (`why`): nothing more is posted; live transfers fail.
    pub(super) fn fail(&mut self, why: &str) {
        crate::log_error!("engine", "session broken: {why}");
        self.broken = Some(why.to_owned());
        if let Some(gpu) = self.gpu.as_mut() {
            gpu.discard();
        }
        self.queued.clear();
        for ch in &mut self.channels {
            ch.tx_queue.clear();
            ch.rx_queue.clear();
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.state == State::Active {
                slot.state = if slot.abandoned {
                    self.free.push(i as u32);
                    State::Free
                } else {
                    State::Failed
                };
            }
        }
    }
}

fn chunk_err(e: tcpx_core::chunk::ChunkError) -> Error {
    Error::Protocol(format!("chunk state machine: {e}"))
}
