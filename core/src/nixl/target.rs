//! The target's jobs on one connection, in arrival order: engine transfers in flight (a WRITE's
//! receives, a READ's sends, the drain of a refused WRITE), WRITEs whose data is in place
//! waiting for the WRITEs that arrived before them, and bare notifications waiting their turn.
//!
//! A WRITE is acknowledged, and its notification delivered, only once its data and that of
//! every WRITE that arrived before it landed; a `Notif` is delivered behind the WRITEs that
//! arrived before it, so a peer's notifications reach the application in the order it sent
//! them, each WRITE's after its data. READ data we still send holds back nothing.
//!
//! Inputs: `handle_write`, `handle_read`, `handle_drain`, `handle_notif` (a frame taken),
//! [`Jobs::handle_done`] (an engine transfer finished). Outputs: [`Jobs::poll_finished`] (the
//! next job to finish, in arrival order: its Ack to send and notification to deliver),
//! [`Jobs::poll_unreserved`] (a dead conn's notifications that will never be delivered, whose
//! queue room goes back). [`Jobs::is_full`] says when a frame that would wait must be held.

use crate::wire::Segment;

/// Whether a READ that offered to take its data inline, of `total` bytes (saturated), is
/// answered with one `ReadData` under our limit `limit` (`inline_read_bytes`; 0: never),
/// provided all our side can be copied.
pub fn answers_inline(limit: u64, total: u64) -> bool {
    limit != 0 && total <= limit
}

/// The receives that take and drop a refused WRITE's data: one per chunk the initiator's plan
/// cuts (each segment from its start, in pieces of `chunk` bytes, which is not 0), in order, so
/// the chunks, their order and their channels are the initiator's and the session stays
/// paired.
pub fn drain_chunks(segs: &[Segment], chunk: u64) -> impl Iterator<Item = u64> + '_ {
    segs.iter().flat_map(move |s| {
        let len = s.len();
        (0..len.div_ceil(chunk)).map(move |i| (len - i * chunk).min(chunk))
    })
}

/// Where a target keeps its jobs: a FIFO the caller owns (a fixed [`heapless::Deque`], or a
/// growable deque of the driver's), reached by index from the front.
pub trait JobStore<J> {
    /// Entries held.
    fn len(&self) -> usize;
    /// Whether none is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entry `i` from the front.
    fn get(&self, i: usize) -> Option<&J>;
    /// Entry `i` from the front, mutably.
    fn get_mut(&mut self, i: usize) -> Option<&mut J>;
    /// Appends; hands the entry back when there is no room.
    fn push_back(&mut self, j: J) -> Result<(), J>;
    /// Removes the front entry.
    fn pop_front(&mut self) -> Option<J>;
    /// Whether a push would fail (a store that grows never is).
    fn is_full(&self) -> bool {
        false
    }
}

impl<J, const N: usize> JobStore<J> for heapless::Deque<J, N> {
    fn len(&self) -> usize {
        heapless::Deque::len(self)
    }
    fn get(&self, i: usize) -> Option<&J> {
        let (a, b) = self.as_slices();
        a.get(i).or_else(|| b.get(i.wrapping_sub(a.len())))
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut J> {
        let (a, b) = self.as_mut_slices();
        let n = a.len();
        match a.get_mut(i) {
            Some(j) => Some(j),
            None => b.get_mut(i.wrapping_sub(n)),
        }
    }
    fn push_back(&mut self, j: J) -> Result<(), J> {
        heapless::Deque::push_back(self, j)
    }
    fn pop_front(&mut self) -> Option<J> {
        heapless::Deque::pop_front(self)
    }
    fn is_full(&self) -> bool {
        heapless::Deque::is_full(self)
    }
}

/// A fixed store of `N` jobs (no allocation; a job past `N` is [`Full`]).
pub type FixedStore<E, T, const N: usize> = heapless::Deque<Job<E, T>, N>;

/// What a job is waiting to do when it finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum What<T> {
    /// A WRITE: Ack due, and its notification (room reserved on arrival) when it has one.
    Write(Option<T>),
    /// A bare `Notif` (room reserved): delivered in its turn, no Ack.
    Notif(T),
    /// READ data we send, or a refused WRITE's data we drop: nothing to say when done.
    Quiet,
    /// Finished (taken by `poll_finished`), or its notification given back: a slot waiting to
    /// reach the front.
    Gone,
}

/// One job. `E` is the driver's engine transfer id, `T` a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<E, T> {
    /// The engine transfer; `None` once done (or for an inline WRITE or a `Notif`, which have
    /// none).
    engine: Option<E>,
    /// The wire id the Ack names.
    wire: u64,
    what: What<T>,
}

/// A job that finished, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished<T> {
    /// The wire id of its WRITE.
    pub wire: u64,
    /// An `Ack{wire, 0}` is due (a WRITE).
    pub ack: bool,
    /// The notification to deliver now (its room was reserved when it arrived).
    pub notif: Option<T>,
}

/// A target's jobs, in arrival order (the order frames were taken, not the peer's ids).
#[derive(Debug)]
pub struct Jobs<E, T, S> {
    store: S,
    /// Jobs not yet finished (the store also holds finished ones not yet at its front).
    live: usize,
    /// WRITEs whose data is still landing (they hold back everything after them).
    landing: usize,
    /// Past this many live jobs, a job that would wait behind a WRITE still landing is held.
    max: usize,
    /// Every slot before this one is finished or an engine transfer in flight that holds back
    /// nothing (READ data, dropped data): where the search for the next job to finish starts,
    /// so finishing many jobs behind one still in flight costs each job one look.
    cursor: usize,
    _ids: core::marker::PhantomData<(E, T)>,
}

impl<E: Copy, T, S: JobStore<Job<E, T>>> Jobs<E, T, S> {
    /// No jobs, kept in `store` (which must be empty); at most `max` jobs wait behind WRITEs
    /// still landing.
    pub fn new(store: S, max: usize) -> Self {
        Jobs {
            store,
            live: 0,
            landing: 0,
            max,
            cursor: 0,
            _ids: core::marker::PhantomData,
        }
    }

    /// Jobs not finished yet.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no job is waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Whether a job that would wait behind a WRITE still landing (an inline WRITE, a
    /// `Notif`) must wait for room instead: the bound counts only while a WRITE is landing,
    /// since otherwise every job finishes in the same pass. The driver then holds the frame.
    pub fn is_full(&self) -> bool {
        (self.live >= self.max && self.landing > 0) || self.store.is_full()
    }

    /// Whether the store takes one more job (always, for one that grows): a fixed store's
    /// driver holds any frame that would add a job until this is true again.
    pub fn has_slot(&self) -> bool {
        !self.store.is_full()
    }

    fn push(&mut self, engine: Option<E>, wire: u64, what: What<T>) -> Result<(), Full> {
        let landing = engine.is_some() && matches!(what, What::Write(_));
        self.store
            .push_back(Job { engine, wire, what })
            .map_err(|_| Full)?;
        self.live += 1;
        self.landing += usize::from(landing);
        Ok(())
    }

    /// A WRITE taken: `engine` its receives (`None`: inline, its data already in place), its
    /// notification's room already reserved.
    pub fn handle_write(
        &mut self,
        engine: Option<E>,
        wire: u64,
        notif: Option<T>,
    ) -> Result<(), Full> {
        self.push(engine, wire, What::Write(notif))
    }

    /// A READ answered through the data session: `engine` its sends.
    pub fn handle_read(&mut self, engine: E, wire: u64) -> Result<(), Full> {
        self.push(Some(engine), wire, What::Quiet)
    }

    /// Receives posted to drop a refused WRITE's data.
    pub fn handle_drain(&mut self, engine: E, wire: u64) -> Result<(), Full> {
        self.push(Some(engine), wire, What::Quiet)
    }

    /// A `Notif` taken (room reserved): delivered behind the WRITEs that arrived before it.
    pub fn handle_notif(&mut self, msg: T) -> Result<(), Full> {
        self.push(None, 0, What::Notif(msg))
    }

    /// Slots to look at for engine transfers in flight: [`Jobs::engine`] of `0..slots()`.
    pub fn slots(&self) -> usize {
        self.store.len()
    }

    /// The engine transfer of slot `i`, if it is in flight.
    pub fn engine(&self, i: usize) -> Option<E> {
        self.store.get(i).and_then(|j| j.engine)
    }

    /// The engine transfer of slot `i` finished (the driver released it).
    pub fn handle_done(&mut self, i: usize) {
        if let Some(j) = self.store.get_mut(i) {
            if j.engine.take().is_some() {
                if matches!(j.what, What::Write(_)) {
                    self.landing -= 1;
                }
                // It may finish now, before the slots the search passed.
                self.cursor = self.cursor.min(i);
            }
        }
    }

    /// The next job that may finish, in arrival order: its transfer is done and no WRITE that
    /// arrived before it is still landing. Its Ack goes out and its notification is delivered
    /// in this order.
    pub fn poll_finished(&mut self) -> Option<Finished<T>> {
        let mut found = None;
        for i in self.cursor..self.store.len() {
            let j = self.store.get(i)?;
            match (&j.what, j.engine.is_some()) {
                (What::Gone, _) => {}
                (What::Write(_), true) => break,
                (_, true) => {}
                (_, false) => {
                    found = Some(i);
                    break;
                }
            }
            self.cursor = i + 1;
        }
        let j = self.store.get_mut(found?)?;
        let wire = j.wire;
        let done = match core::mem::replace(&mut j.what, What::Gone) {
            What::Write(notif) => Finished {
                wire,
                ack: true,
                notif,
            },
            What::Notif(msg) => Finished {
                wire,
                ack: false,
                notif: Some(msg),
            },
            What::Quiet | What::Gone => Finished {
                wire,
                ack: false,
                notif: None,
            },
        };
        self.live -= 1;
        self.trim();
        Some(done)
    }

    /// The conn died: the next notification that reserved queue room and will never be
    /// delivered (the driver gives its room back). Its job stays, with nothing left to say.
    pub fn poll_unreserved(&mut self) -> Option<T> {
        for i in 0..self.store.len() {
            let j = self.store.get_mut(i)?;
            let taken = match core::mem::replace(&mut j.what, What::Quiet) {
                What::Write(Some(msg)) | What::Notif(msg) => Some(msg),
                What::Write(None) => {
                    j.what = What::Write(None);
                    None
                }
                other => {
                    j.what = other;
                    None
                }
            };
            if let Some(msg) = taken {
                if j.engine.is_some() {
                    // It stops being a WRITE: nothing waits behind it any more.
                    self.landing -= 1;
                }
                return Some(msg);
            }
        }
        None
    }

    /// Drops finished slots at the front.
    fn trim(&mut self) {
        while self
            .store
            .get(0)
            .is_some_and(|j| matches!(j.what, What::Gone))
        {
            self.store.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
        }
    }

    /// The store (tests).
    pub fn store(&self) -> &S {
        &self.store
    }
}

/// A job did not fit the store (a fixed one): the driver holds the frame until jobs finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;
