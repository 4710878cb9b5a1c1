//! The initiator's side of one posted transfer: its parts, each announced (WRITE) or
//! requested (READ) with wire id `wire + k`, and what the peer may answer about them.
//!
//! A part is **settled** once our side is done with its data (`moved`: the engine transfer
//! finished or was abandoned, the inline data was copied, or there is none to move) and the
//! target answered (`answered`: `Ack`, `ReadAnnounce`, `ReadData` or `Error`). A flight
//! completes once every part is settled and no more will be sent; a failure (the first one)
//! is reported only then too, so a repost never meets parts of the previous post.
//!
//! Inputs: [`Flight::restart`] (a post), [`Flight::next_part`], [`Flight::handle_posted`] and
//! [`Flight::handle_sent`] (sending parts as room allows), the answers (`handle_ack`, `handle_error`,
//! `check_read_announce` + `handle_read_posted`, `handle_read_data`), [`Flight::handle_moved`]
//! (a part's engine transfer finished), [`Flight::handle_release`] (the application let go).
//! Output: [`Flight::poll_complete`].
//!
//! `E` is the driver's engine transfer id, `R` its failure reason (rendered by the driver from
//! a [`Failure`]), `P` the caller's storage of the parts (`[Part<E>]`, one per part).

use super::{Op, Violation};

/// Whether a transfer of `bytes` in `parts` parts goes inline with our limit `limit`
/// (`inline_read_bytes` or `inline_write_bytes`; 0: never), provided all our side can be
/// copied by the CPU or a device's copier: a READ offers to take its data in the answer, a
/// WRITE puts it in the announce. Only a transfer of one part does.
pub fn goes_inline(limit: u64, bytes: u64, parts: usize) -> bool {
    limit > 0 && bytes <= limit && parts == 1
}

/// Where one part of a posted transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<E> {
    /// Our engine transfer for it (WRITE: the sends, posted with the announce; READ: the
    /// receives, posted when the target's `ReadAnnounce` arrives).
    pub engine: Option<E>,
    /// Our side is done with the data.
    pub moved: bool,
    /// The target answered.
    pub answered: bool,
}

impl<E> Default for Part<E> {
    fn default() -> Self {
        Part {
            engine: None,
            moved: false,
            answered: false,
        }
    }
}

impl<E> Part<E> {
    /// Data moved and answer in.
    pub fn settled(&self) -> bool {
        self.moved && self.answered
    }
}

/// Why a flight failed, as the protocol sees it; the driver renders it into its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The target refused part `part` of `parts` with an `Error{code, text}`.
    Refused {
        /// The part.
        part: usize,
        /// Parts of the flight.
        parts: usize,
        /// The frame's code (a NIXL status, negated).
        code: u32,
        /// The frame's text.
        text: &'a str,
    },
    /// An `Ack` carrying a status (the conn closes too).
    NegativeAck(i32),
    /// A `ReadData` of the wrong size (the conn closes too).
    ReadDataSize(Violation),
}

/// What [`Flight::poll_complete`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Parts are still outstanding or to send.
    Pending,
    /// Every part settled and none failed: complete now (reported once; the notification is
    /// sent as a `Notif` now when `notif_after`).
    Done {
        /// The notification did not travel in an announce: send it now.
        notif_after: bool,
    },
    /// Complete earlier.
    AlreadyDone,
    /// Every part sent settled, and the flight failed (the first failure is its reason).
    Failed,
}

/// One posted transfer of the initiator.
#[derive(Debug)]
pub struct Flight<E, R, P> {
    op: Op,
    /// Wire id of part 0 of the current post.
    wire: u64,
    parts: P,
    /// Parts sent in the current post.
    sent: usize,
    /// A READ that offered to take its data inline: the bytes it asked for.
    inline_read: Option<u64>,
    /// The post has a notification.
    notify: bool,
    /// It travels in the WRITE's only announce (else a `Notif` once every part settled).
    notif_in_announce: bool,
    done: bool,
    released: bool,
    failed: Option<R>,
    _engine: core::marker::PhantomData<E>,
}

impl<E: Copy, R, P: AsRef<[Part<E>]> + AsMut<[Part<E>]>> Flight<E, R, P> {
    /// A flight of `op` whose parts are kept in `parts` (one per part), not yet posted.
    pub fn new(op: Op, parts: P) -> Self {
        Flight {
            op,
            wire: 0,
            parts,
            sent: 0,
            inline_read: None,
            notify: false,
            notif_in_announce: false,
            done: false,
            released: false,
            failed: None,
            _engine: core::marker::PhantomData,
        }
    }

    /// A new post with wire ids from `wire` on: every part reset (engine transfers of the
    /// previous post handed to `release`). `notify`: the post has a notification;
    /// `inline_read`: a READ offering to take that many bytes inline.
    pub fn restart(
        &mut self,
        wire: u64,
        notify: bool,
        inline_read: Option<u64>,
        mut release: impl FnMut(E),
    ) {
        for p in self.parts.as_mut() {
            if let Some(id) = p.engine.take() {
                release(id);
            }
            *p = Part::default();
        }
        let n = self.parts.as_ref().len();
        self.wire = wire;
        self.sent = 0;
        self.done = false;
        self.failed = None;
        self.notify = notify;
        self.notif_in_announce = notify && self.op == Op::Write && n == 1;
        self.inline_read = inline_read.filter(|_| self.op == Op::Read);
    }

    /// The post's notification goes out as a `Notif` once every part settled (it has one, and
    /// it did not travel in an announce).
    pub fn notif_after(&self) -> bool {
        self.notify && !self.notif_in_announce
    }

    /// The transfer's direction.
    pub fn op(&self) -> Op {
        self.op
    }
    /// Wire id of part 0 of the current post.
    pub fn wire(&self) -> u64 {
        self.wire
    }
    /// The parts.
    pub fn parts(&self) -> &[Part<E>] {
        self.parts.as_ref()
    }
    /// Parts sent in the current post.
    pub fn sent(&self) -> usize {
        self.sent
    }
    /// The notification travels in the (only) announce.
    pub fn notif_in_announce(&self) -> bool {
        self.notif_in_announce
    }
    /// The READ offers to take its data inline.
    pub fn offers_inline(&self) -> bool {
        self.inline_read.is_some()
    }
    /// The application released it.
    pub fn released(&self) -> bool {
        self.released
    }
    /// Completed (every part settled, no failure).
    pub fn is_done(&self) -> bool {
        self.done
    }
    /// The first failure of the post.
    pub fn failure(&self) -> Option<&R> {
        self.failed.as_ref()
    }

    /// Records the first failure of the post.
    pub fn fail(&mut self, why: R) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
    }

    /// The previous post is over: done, or failed with every part sent settled (a repost is
    /// allowed; otherwise it is REPOST_ACTIVE).
    pub fn is_over(&self) -> bool {
        self.done || (self.failed.is_some() && self.settled())
    }

    /// Every part that went out settled, and no more will go out.
    pub fn settled(&self) -> bool {
        let parts = self.parts.as_ref();
        let all_sent = self.sent == parts.len() || self.failed.is_some() || self.released;
        all_sent && parts[..self.sent].iter().all(Part::settled)
    }

    /// The part a wire id names in the current post, if it does.
    pub fn index_of(&self, xfer: u64) -> Option<usize> {
        xfer.checked_sub(self.wire)
            .map(|k| k as usize)
            .filter(|&k| k < self.sent)
    }

    /// The part a wire id names in the current post; a stale or foreign id is a violation.
    pub fn part_of(&self, xfer: u64) -> Result<usize, Violation> {
        self.index_of(xfer).ok_or(Violation::NotCurrent {
            xfer,
            first: self.wire,
            end: self.wire + self.sent as u64,
        })
    }

    /// The next part to send and its wire id, while there is one (none once all went out,
    /// the flight failed, or it was released).
    pub fn next_part(&self) -> Option<(usize, u64)> {
        let more = self.sent < self.parts.as_ref().len() && self.failed.is_none() && !self.released;
        more.then(|| (self.sent, self.wire + self.sent as u64))
    }

    /// The next part's sends were posted as `engine` (a WRITE through the data session),
    /// before its announce goes out.
    pub fn handle_posted(&mut self, engine: E) {
        let k = self.sent;
        self.parts.as_mut()[k].engine = Some(engine);
    }

    /// The next part's announce or request went out.
    pub fn handle_sent(&mut self) {
        self.sent += 1;
    }

    /// The only part went out as an inline WRITE: its data is in the announce, nothing moves.
    pub fn handle_sent_inline(&mut self) {
        self.parts.as_mut()[0].moved = true;
        self.sent = 1;
    }

    /// The post has nothing to move (every descriptor empty): done at once.
    pub fn handle_empty(&mut self) {
        self.done = true;
    }

    /// The engine transfer of part `k`, while in flight.
    pub fn engine(&self, k: usize) -> Option<E> {
        self.parts.as_ref()[k].engine
    }

    /// Part `k`'s engine transfer finished (the driver released it).
    pub fn handle_moved(&mut self, k: usize) {
        let p = &mut self.parts.as_mut()[k];
        p.engine = None;
        p.moved = true;
    }

    /// An `Ack{xfer, status}`. A status is a violation (refusals are `Error` frames); the
    /// flight fails with [`Failure::NegativeAck`] first.
    pub fn handle_ack(
        &mut self,
        xfer: u64,
        status: i32,
        render: impl FnOnce(Failure<'_>) -> R,
    ) -> Result<(), Violation> {
        let k = self.part_of(xfer)?;
        if status != 0 {
            self.fail(render(Failure::NegativeAck(status)));
            return Err(Violation::NegativeAck { status, xfer });
        }
        self.parts.as_mut()[k].answered = true;
        Ok(())
    }

    /// An `Error{code, xfer, text}` about one of our parts: the part is answered (a refused
    /// READ moved nothing; a refused WRITE's sends still finish, the target drops the data),
    /// the flight fails. A second answer is a violation.
    pub fn handle_error(
        &mut self,
        xfer: u64,
        code: u32,
        text: &str,
        render: impl FnOnce(Failure<'_>) -> R,
    ) -> Result<(), Violation> {
        let k = self.part_of(xfer)?;
        let parts = self.parts.as_ref().len();
        let op = self.op;
        let p = &mut self.parts.as_mut()[k];
        if p.answered {
            return Err(Violation::SecondAnswer(xfer));
        }
        p.answered = true;
        if op == Op::Read {
            p.moved = true;
        }
        self.fail(render(Failure::Refused {
            part: k,
            parts,
            code,
            text,
        }));
        Ok(())
    }

    /// A `ReadAnnounce{xfer}`: the part whose receives the driver posts now (even for a
    /// released READ: the peer's data is coming and later transfers pair by order), then
    /// [`Flight::handle_read_posted`]. A stale id or a second answer is a violation.
    pub fn check_read_announce(&self, xfer: u64) -> Result<usize, Violation> {
        let k = self.part_of(xfer)?;
        if self.parts.as_ref()[k].answered {
            return Err(Violation::SecondAnswer(xfer));
        }
        Ok(k)
    }

    /// Part `k`'s receives were posted as `engine`. A released READ abandons them at once:
    /// returned for the driver to release.
    pub fn handle_read_posted(&mut self, k: usize, engine: E) -> Option<E> {
        let released = self.released;
        let p = &mut self.parts.as_mut()[k];
        p.answered = true;
        if released {
            p.moved = true;
            Some(engine)
        } else {
            p.engine = Some(engine);
            None
        }
    }

    /// A `ReadData{xfer}` of `len` bytes: `Ok(true)` when the driver copies them into our
    /// ranges now (`Ok(false)`: released, its memory is not ours to write any more). One of
    /// the wrong size, for a READ that did not offer, or a second answer fails the flight and
    /// is a violation.
    pub fn handle_read_data(
        &mut self,
        xfer: u64,
        len: u64,
        render: impl FnOnce(Failure<'_>) -> R,
    ) -> Result<bool, Violation> {
        let k = self.part_of(xfer)?;
        let offered = self.inline_read.is_some();
        let want = self.inline_read.unwrap_or(0);
        if !offered || want != len || self.parts.as_ref()[k].answered {
            let v = Violation::ReadDataSize { len, want, offered };
            self.fail(render(Failure::ReadDataSize(v)));
            return Err(v);
        }
        let p = &mut self.parts.as_mut()[k];
        p.answered = true;
        p.moved = true;
        Ok(!self.released)
    }

    /// The application released the flight: parts in flight are abandoned (their engine
    /// transfers handed to `release`), parts not sent never will be.
    pub fn handle_release(&mut self, mut release: impl FnMut(E)) {
        self.released = true;
        for p in self.parts.as_mut() {
            if let Some(id) = p.engine.take() {
                release(id);
                p.moved = true;
            }
        }
    }

    /// Where the post stands (see [`Completion`]); `Done` is reported once.
    pub fn poll_complete(&mut self) -> Completion {
        if self.done {
            return Completion::AlreadyDone;
        }
        if !self.settled() {
            return Completion::Pending;
        }
        if self.failed.is_some() {
            return Completion::Failed;
        }
        self.done = true;
        Completion::Done {
            notif_after: self.notif_after(),
        }
    }

    /// The parts sent in the current post that are not settled yet.
    pub fn unsettled(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.sent).filter(|&k| !self.parts.as_ref()[k].settled())
    }
}
