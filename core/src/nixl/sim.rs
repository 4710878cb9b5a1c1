//! A simulated pair for the control protocol: an initiator and a target driver over the
//! sans-IO machines, driven against each other in memory. Frames cross as wire bytes (emitted
//! and parsed by `wire`); a data session pairs each direction's sends and receives in posting
//! order (as the engine does) and completes them once both sides posted; time passes only when
//! a caller says so. No sockets, sleeps or threads.
//!
//! Used by the unit tests (`nixl/tests.rs`) and by the `control` fuzz target, which include this
//! file; the including module provides `std`, `proto` (this crate's `nixl` module) and `wire`.

#![allow(dead_code)]

use super::std::collections::VecDeque;
use super::std::string::{String, ToString};
use super::std::vec::Vec;
use super::std::{format, vec};
use core::time::Duration;

use super::proto::pace::{self, Stall};
use super::proto::target::answers_inline;
use super::proto::{
    check_segment, error_text, inbound, Completion, Failure, FixedStore, Flight, Inbound, Jobs, Op,
    Part, RegionView, SegmentRefused, Violation,
};
use super::wire::{
    self, Ack, ErrorMsg, Message, Notif, ReadAnnounce, ReadData, ReadRequest, Segment,
    WriteAnnounce,
};

pub const MS: Duration = Duration::from_millis(1);
pub const TIMEOUT: Duration = Duration::from_millis(100);
/// Region 7 of the target: 64 KiB at 0x10000, key 0xabc.
pub const REGION: u64 = 7;
pub const KEY: u64 = 0xabc;
pub const BASE: u64 = 0x10000;
pub const LEN: u64 = 0x4000;
pub const INLINE: u64 = 16 * 1024;

pub type Reason = (i32, String);

pub fn render(f: Failure<'_>) -> Reason {
    match f {
        Failure::Refused {
            part,
            parts,
            code,
            text,
        } => (-(code as i32), format!("part {part} of {parts}: {text}")),
        Failure::NegativeAck(s) => (s, format!("peer refused the WRITE ({s})")),
        Failure::ReadDataSize(v) => (-5, v.to_string()),
    }
}

pub fn frame(m: &Message<'_>) -> Vec<u8> {
    let mut b = vec![0; m.buffer_len()];
    m.emit(&mut b).unwrap();
    b
}

pub fn seg(addr: u64, len: u64) -> Segment {
    Segment::new(REGION, KEY, BASE + addr, len)
}

pub const I2T: usize = 0;
pub const T2I: usize = 1;

/// The data session: per direction, sends and receives paired in posting order.
#[derive(Default)]
pub struct Data {
    pub sends: [VecDeque<(u32, u64)>; 2],
    pub recvs: [VecDeque<(u32, u64)>; 2],
    pub done: Vec<u32>,
    pub next: u32,
    /// The initiator's sends are held back (a WRITE's data still on its way).
    pub paused: bool,
    /// The peer is gone: nothing moves any more.
    pub dead: bool,
}

impl Data {
    pub fn post(&mut self, dir: usize, send: bool, bytes: u64) -> u32 {
        self.next += 1;
        let q = if send {
            &mut self.sends[dir]
        } else {
            &mut self.recvs[dir]
        };
        q.push_back((self.next, bytes));
        self.next
    }
    pub fn step(&mut self) {
        for dir in [I2T, T2I] {
            if self.dead || (self.paused && dir == I2T) {
                continue;
            }
            while !self.sends[dir].is_empty() && !self.recvs[dir].is_empty() {
                let (s, r) = (self.sends[dir].pop_front(), self.recvs[dir].pop_front());
                self.done.extend([s.unwrap().0, r.unwrap().0]);
            }
        }
    }
    pub fn is_done(&self, id: u32) -> bool {
        self.done.contains(&id)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    Done,
    Held,
}

/// The target's driver: our memory, the notification queue's room, the jobs.
pub struct Target {
    pub jobs: Jobs<u32, Vec<u8>, FixedStore<u32, Vec<u8>, 64>>,
    pub mem: Vec<u8>,
    pub room: u64,
    pub max_notif: u32,
    /// Bytes from the peer, as they arrive.
    pub inbox: VecDeque<Vec<u8>>,
    /// Bytes read and not yet handled (a held frame at the front).
    pub rx: Vec<u8>,
    pub out: VecDeque<Vec<u8>>,
    pub held: bool,
    pub delivered: Vec<Vec<u8>>,
    pub acked: Vec<u64>,
    /// Engine transfers of announced WRITEs, by wire id (data landed = done).
    pub writes: Vec<(u64, Option<u32>)>,
    pub stall: Stall,
    pub closed: Option<String>,
}

impl Target {
    pub fn new(max_jobs: usize) -> Self {
        Target {
            jobs: Jobs::new(FixedStore::new(), max_jobs),
            mem: vec![0; LEN as usize],
            room: 1 << 20,
            max_notif: 4999,
            inbox: VecDeque::new(),
            rx: Vec::new(),
            out: VecDeque::new(),
            held: false,
            delivered: Vec::new(),
            acked: Vec::new(),
            writes: Vec::new(),
            stall: Stall::new(),
            closed: None,
        }
    }

    pub fn region(&self, id: u64) -> Option<RegionView> {
        RegionView::new(KEY, BASE, LEN).filter(|_| id == REGION)
    }

    /// Every segment checked before anything is done: offsets, or the refusal.
    pub fn check(&self, segs: &[Segment]) -> Result<Vec<u64>, SegmentRefused> {
        let mut offs = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            offs.push(check_segment(i, s, self.region(s.region()))?);
        }
        Ok(offs)
    }

    pub fn reserve(&mut self, notif: Option<&[u8]>) -> bool {
        let need = notif.map_or(0, |m| m.len() as u64 + 64);
        if need > self.room {
            return false;
        }
        self.room -= need;
        true
    }

    pub fn unreserve(&mut self, notif: Option<&[u8]>) {
        self.room += notif.map_or(0, |m| m.len() as u64 + 64);
    }

    pub fn refuse(&mut self, xfer: u64, why: &dyn core::fmt::Display) {
        let text = why.to_string();
        self.out.push_back(frame(&Message::Error(ErrorMsg {
            code: 2,
            xfer,
            text: error_text(&text),
        })));
    }

    pub fn handle(&mut self, f: &[u8], data: &mut Data) -> Result<Handled, String> {
        let msg = wire::parse(f).map_err(|e| format!("bad control frame: {e:?}"))?;
        match inbound(false, msg, self.max_notif).map_err(|v| v.to_string())? {
            Inbound::InlineWrite(w) => {
                if self.jobs.is_full() || !self.reserve(w.notif) {
                    return Ok(Handled::Held);
                }
                let bytes = w.data.unwrap();
                let total: u64 = w
                    .segments
                    .iter()
                    .map(|s| s.len())
                    .fold(0, u64::saturating_add);
                if total != bytes.len() as u64 {
                    return Err("inline data disagrees with its segments".into());
                }
                match self.check(w.segments) {
                    Err(e) => {
                        self.unreserve(w.notif);
                        self.refuse(w.xfer, &e);
                    }
                    Ok(offs) => {
                        let mut at = 0;
                        for (s, off) in w.segments.iter().zip(offs) {
                            let (o, n) = (off as usize, s.len() as usize);
                            self.mem[o..o + n].copy_from_slice(&bytes[at..at + n]);
                            at += n;
                        }
                        let notif = w.notif.map(<[u8]>::to_vec);
                        self.jobs.handle_write(None, w.xfer, notif).unwrap();
                        self.writes.push((w.xfer, None));
                    }
                }
            }
            Inbound::Write(w) => {
                if !self.jobs.has_slot() || !self.reserve(w.notif) {
                    return Ok(Handled::Held);
                }
                let bytes = w
                    .segments
                    .iter()
                    .map(|s| s.len())
                    .fold(0, u64::saturating_add);
                match self.check(w.segments) {
                    Ok(_) => {
                        let id = data.post(I2T, false, bytes);
                        let notif = w.notif.map(<[u8]>::to_vec);
                        self.jobs.handle_write(Some(id), w.xfer, notif).unwrap();
                        self.writes.push((w.xfer, Some(id)));
                    }
                    Err(e) => {
                        self.unreserve(w.notif);
                        // Its data is on the wire: received and dropped.
                        let id = data.post(I2T, false, bytes);
                        self.jobs.handle_drain(id, w.xfer).unwrap();
                        self.refuse(w.xfer, &e);
                    }
                }
            }
            Inbound::Read(_) if !self.jobs.has_slot() => return Ok(Handled::Held),
            Inbound::Read(r) => match self.check(r.segments) {
                Err(e) => self.refuse(r.xfer, &e),
                Ok(offs) => {
                    let total: u64 = r
                        .segments
                        .iter()
                        .map(|s| s.len())
                        .fold(0, u64::saturating_add);
                    if r.inline_ok && answers_inline(INLINE, total) {
                        let mut bytes = Vec::new();
                        for (s, off) in r.segments.iter().zip(offs) {
                            bytes.extend_from_slice(&self.mem[off as usize..][..s.len() as usize]);
                        }
                        let m = Message::ReadData(ReadData {
                            xfer: r.xfer,
                            data: &bytes,
                        });
                        self.out.push_back(frame(&m));
                    } else {
                        let m = Message::ReadAnnounce(ReadAnnounce { xfer: r.xfer });
                        self.out.push_back(frame(&m));
                        let id = data.post(T2I, true, total);
                        self.jobs.handle_read(id, r.xfer).unwrap();
                    }
                }
            },
            Inbound::Notif(m) => {
                if self.jobs.is_full() || !self.reserve(Some(m)) {
                    return Ok(Handled::Held);
                }
                self.jobs.handle_notif(m.to_vec()).unwrap();
            }
            other => unreachable!("inbound gave a target {other:?}"),
        }
        Ok(Handled::Done)
    }

    /// Whole frames read and not handled yet (held behind one that waits for room).
    pub fn waiting_frames(&self) -> usize {
        let mut n = 0;
        let mut at = 0;
        while let Ok(Some(f)) = wire::next_frame_within(&self.rx[at..], usize::MAX) {
            at += f.len();
            n += 1;
        }
        n
    }

    /// The application takes the notifications delivered: their room comes back.
    pub fn take_notifs(&mut self) -> Vec<Vec<u8>> {
        for n in &self.delivered {
            self.room += n.len() as u64 + 64;
        }
        core::mem::take(&mut self.delivered)
    }

    /// One pass at `now`: frames (until one is held), the data session, finished jobs.
    pub fn pass(&mut self, now: Duration, data: &mut Data) {
        if self.closed.is_some() {
            return;
        }
        let mut framed = false;
        self.held = false;
        for bytes in self.inbox.drain(..) {
            self.rx.extend_from_slice(&bytes);
        }
        let max = wire::MAX_CONTROL_FRAME + self.max_notif as usize;
        let mut off = 0;
        loop {
            let f = match wire::next_frame_within(&self.rx[off..], max) {
                Ok(Some(f)) => f.to_vec(),
                Ok(None) => break,
                Err(e) => {
                    self.closed = Some(format!("bad control frame: {e:?}"));
                    return;
                }
            };
            match self.handle(&f, data) {
                Ok(Handled::Done) => {
                    off += f.len();
                    framed = true;
                }
                Ok(Handled::Held) => {
                    self.held = true;
                    break;
                }
                Err(why) => {
                    self.closed = Some(why);
                    return;
                }
            }
        }
        self.rx.drain(..off);
        let partial = !self.held && !self.rx.is_empty();
        data.step();
        let mut moved = false;
        for i in 0..self.jobs.slots() {
            if let Some(id) = self.jobs.engine(i) {
                if data.is_done(id) {
                    self.jobs.handle_done(i);
                    moved = true;
                }
            }
        }
        while let Some(f) = self.jobs.poll_finished() {
            moved = true;
            if f.ack {
                // Every WRITE up to this one landed.
                let upto = self.writes.iter().position(|w| w.0 == f.wire).unwrap();
                for (w, id) in &self.writes[..=upto] {
                    assert!(
                        id.is_none_or(|id| data.is_done(id)),
                        "Ack {} before {w} landed",
                        f.wire
                    );
                }
                self.acked.push(f.wire);
                let m = Message::Ack(Ack {
                    xfer: f.wire,
                    status: 0,
                });
                self.out.push_back(frame(&m));
            }
            if let Some(n) = f.notif {
                self.delivered.push(n);
            }
        }
        let pass = pace::target_pass(partial, !self.jobs.is_empty(), moved, framed);
        if self.stall.handle_pass(pass, now, TIMEOUT) {
            self.closed = Some("no progress from the peer".into());
        }
    }
}

/// One request of the initiator's application: its parts' far segments, its flight.
pub struct Req {
    pub parts: Vec<Vec<Segment>>,
    pub notif: Option<Vec<u8>>,
    /// An inline WRITE's data; where an inline READ's data went.
    pub bytes: Vec<u8>,
    pub flight: Flight<u32, Reason, Vec<Part<u32>>>,
    /// What the application was told last.
    pub result: Option<Result<(), Reason>>,
}

/// The initiator's driver: requests, parts listed until settled, parts waiting for room.
pub struct Initiator {
    pub reqs: Vec<Req>,
    /// Parts sent and not settled: (wire id, request).
    pub listed: Vec<(u64, usize)>,
    pub waiting: VecDeque<usize>,
    pub max_outstanding: usize,
    pub next_wire: u64,
    pub inbox: VecDeque<Vec<u8>>,
    pub out: VecDeque<Vec<u8>>,
    pub heard: Duration,
    pub closed: Option<String>,
}

impl Initiator {
    pub fn new(max_outstanding: usize) -> Self {
        Initiator {
            reqs: Vec::new(),
            listed: Vec::new(),
            waiting: VecDeque::new(),
            max_outstanding,
            next_wire: 1,
            inbox: VecDeque::new(),
            out: VecDeque::new(),
            heard: Duration::ZERO,
            closed: None,
        }
    }

    /// Prepares and posts a request; its index.
    pub fn post(
        &mut self,
        op: Op,
        parts: Vec<Vec<Segment>>,
        inline: bool,
        notif: Option<&[u8]>,
        data: &mut Data,
    ) -> usize {
        let n = parts.len();
        let total: u64 = parts
            .iter()
            .flatten()
            .map(|s| s.len())
            .fold(0, u64::saturating_add);
        let r = self.reqs.len();
        let bytes = if op == Op::Write && inline {
            (0..total).map(|i| (i * 7 + r as u64) as u8).collect()
        } else {
            Vec::new()
        };
        let mut flight = Flight::new(op, vec![Part::default(); n]);
        let wire = self.next_wire;
        self.next_wire += n as u64;
        flight.restart(
            wire,
            notif.is_some(),
            inline.then_some(total),
            |_| unreachable!(),
        );
        self.reqs.push(Req {
            parts,
            notif: notif.map(<[u8]>::to_vec),
            bytes,
            flight,
            result: None,
        });
        if op == Op::Write && inline {
            let q = &mut self.reqs[r];
            q.flight.handle_sent_inline();
            let m = Message::WriteAnnounce(WriteAnnounce {
                xfer: wire,
                segments: &q.parts[0],
                notif: q.notif.as_deref(),
                data: Some(&q.bytes),
            });
            self.out.push_back(frame(&m));
            self.listed.push((wire, r));
        } else if !self.waiting.is_empty() || !self.send_parts(r, data) {
            self.waiting.push_back(r);
        }
        r
    }

    /// Sends the request's next parts while there is room; `true` once none is left.
    pub fn send_parts(&mut self, r: usize, data: &mut Data) -> bool {
        while let Some((k, xfer)) = self.reqs[r].flight.next_part() {
            if self.listed.len() >= self.max_outstanding {
                return false;
            }
            let q = &mut self.reqs[r];
            let len = q.parts[k]
                .iter()
                .map(|s| s.len())
                .fold(0, u64::saturating_add);
            let m = match q.flight.op() {
                Op::Write => {
                    q.flight.handle_posted(data.post(I2T, true, len));
                    let notif = q.notif.as_deref().filter(|_| q.flight.notif_in_announce());
                    Message::WriteAnnounce(WriteAnnounce {
                        xfer,
                        segments: &q.parts[k],
                        notif,
                        data: None,
                    })
                }
                Op::Read => Message::ReadRequest(ReadRequest {
                    xfer,
                    segments: &q.parts[k],
                    inline_ok: q.flight.offers_inline(),
                }),
            };
            self.out.push_back(frame(&m));
            self.reqs[r].flight.handle_sent();
            self.listed.push((xfer, r));
        }
        true
    }

    pub fn find(&self, xfer: u64) -> Option<usize> {
        self.listed.iter().find(|l| l.0 == xfer).map(|l| l.1)
    }

    pub fn handle(&mut self, f: &[u8], data: &mut Data) -> Result<(), Violation> {
        let msg = wire::parse(f).expect("the target sends whole frames");
        let unknown = |what, xfer| Violation::UnknownAnswer { what, xfer };
        match inbound(true, msg, 0)? {
            Inbound::Ack(a) => {
                let r = self.find(a.xfer).ok_or(unknown("Ack", a.xfer))?;
                self.reqs[r].flight.handle_ack(a.xfer, a.status, render)?;
            }
            Inbound::ReadAnnounce(a) => {
                let r = self.find(a.xfer).ok_or(unknown("ReadAnnounce", a.xfer))?;
                let q = &mut self.reqs[r];
                let k = q.flight.check_read_announce(a.xfer)?;
                let id = data.post(
                    T2I,
                    false,
                    q.parts[k]
                        .iter()
                        .map(|s| s.len())
                        .fold(0, u64::saturating_add),
                );
                q.flight.handle_read_posted(k, id);
            }
            Inbound::ReadData(d) => {
                let r = self.find(d.xfer).ok_or(unknown("ReadData", d.xfer))?;
                let q = &mut self.reqs[r];
                if q.flight
                    .handle_read_data(d.xfer, d.data.len() as u64, render)?
                {
                    q.bytes = d.data.to_vec();
                }
            }
            Inbound::Error(e) => {
                if let Some(r) = self.find(e.xfer) {
                    self.reqs[r]
                        .flight
                        .handle_error(e.xfer, e.code, e.text, render)?;
                }
            }
            Inbound::Keepalive => {}
            other => unreachable!("inbound gave an initiator {other:?}"),
        }
        Ok(())
    }

    /// One pass at `now`: answers, the data session, settled parts, waiting parts, and what
    /// the application's checks see.
    pub fn pass(&mut self, now: Duration, data: &mut Data) {
        if let Some(why) = &self.closed {
            // A dead conn fails whatever is still waiting on it.
            for q in self.reqs.iter_mut().filter(|q| q.result.is_none()) {
                q.flight.fail((-8, why.clone()));
                q.result = Some(Err(q.flight.failure().unwrap().clone()));
            }
            return;
        }
        while let Some(f) = self.inbox.pop_front() {
            self.heard = now;
            if let Err(v) = self.handle(&f, data) {
                self.closed = Some(v.to_string());
                return;
            }
        }
        data.step();
        let reqs = &mut self.reqs;
        let before = self.listed.len();
        self.listed.retain(|&(xfer, r)| {
            let f = &mut reqs[r].flight;
            let Some(k) = f.index_of(xfer) else {
                return false;
            };
            if f.engine(k).is_some_and(|id| data.is_done(id)) {
                f.handle_moved(k);
            }
            !f.parts()[k].settled()
        });
        if self.listed.len() != before {
            self.heard = now;
        }
        while let Some(&r) = self.waiting.front() {
            if !self.send_parts(r, data) {
                break;
            }
            self.waiting.pop_front();
        }
        for r in 0..self.reqs.len() {
            self.check(r, now);
        }
    }

    /// The application's check of request `r`.
    pub fn check(&mut self, r: usize, now: Duration) {
        let q = &mut self.reqs[r];
        if q.result.is_some() {
            return;
        }
        match q.flight.poll_complete() {
            Completion::Done { notif_after } => {
                q.result = Some(Ok(()));
                if notif_after {
                    let m = Message::Notif(Notif {
                        msg: q.notif.as_deref().unwrap(),
                    });
                    self.out.push_back(frame(&m));
                }
            }
            Completion::Failed => q.result = Some(Err(q.flight.failure().unwrap().clone())),
            Completion::AlreadyDone => {}
            Completion::Pending => {
                if pace::silent(self.heard, now, TIMEOUT) {
                    q.flight.fail((-7, "no progress from the peer".into()));
                    q.result = Some(Err(q.flight.failure().unwrap().clone()));
                }
            }
        }
    }
}

/// Both sides and the data session between them, at a simulated time.
pub struct Pair {
    pub i: Initiator,
    pub t: Target,
    pub data: Data,
    pub now: Duration,
}

impl Pair {
    pub fn new() -> Self {
        Pair {
            i: Initiator::new(4),
            t: Target::new(8),
            data: Data::default(),
            now: Duration::ZERO,
        }
    }

    /// One millisecond: frames cross, both sides pass.
    pub fn tick(&mut self) {
        self.now += MS;
        self.t.inbox.extend(self.i.out.drain(..));
        self.t.pass(self.now, &mut self.data);
        self.i.inbox.extend(self.t.out.drain(..));
        if self.t.closed.is_some() && self.i.closed.is_none() && self.i.inbox.is_empty() {
            self.i.closed = Some("peer closed the control stream".into());
        }
        self.i.pass(self.now, &mut self.data);
    }

    /// Ticks until every request has a result (bounded: nothing may hang).
    pub fn settle(&mut self) {
        for _ in 0..1000 {
            if self.i.reqs.iter().all(|q| q.result.is_some()) && self.i.out.is_empty() {
                self.tick();
                return;
            }
            self.tick();
        }
        panic!("requests never finished");
    }

    pub fn result(&self, r: usize) -> &Result<(), Reason> {
        self.i.reqs[r].result.as_ref().unwrap()
    }
}
