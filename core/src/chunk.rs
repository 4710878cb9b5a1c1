//! Chunk state machines and the typed per-channel windows that drive them.
//!
//! Sans-IO: the engine performs `irecv`/`test`/unpack launches/`irecvConsumed` and reports
//! each outcome as an event; these types check the event is legal and say what to do next.
//! [`RecvWindow`] and [`SendWindow`] add TCPX's ordering rules on top of [`Window`].

use crate::mem::MemKind;
use crate::unpack::slot_of;
use crate::window::{Full, Window};

/// Life of one receive chunk. Host chunks go `NetDone -> Consumed` directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecvState {
    /// Not posted (or retired).
    Free,
    /// `irecv` returned a request; waiting for `test` to report done.
    Posted,
    /// `test` reported done. Device: the data is still in bounce pages.
    NetDone,
    /// Device only: the unpack kernel was launched; waiting for its event.
    Unpacking,
    /// Device only: the unpack finished; the data is in the destination.
    Unpacked,
    /// `irecvConsumed` was called; the plugin may reuse the pages.
    Consumed,
}

/// What happened to a receive chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecvEvent {
    /// `irecv` returned a request.
    Post,
    /// `test` reported done.
    NetDone,
    /// The unpack kernel was launched.
    UnpackLaunched,
    /// The unpack kernel's event completed.
    UnpackDone,
    /// `irecvConsumed` was called.
    Consumed,
    /// The window slot was released.
    Retire,
}

/// Life of one send chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SendState {
    /// Not posted (or retired).
    #[default]
    Free,
    /// `isend` returned a request; waiting for `test` to report done.
    Posted,
    /// `test` reported done; the source buffer may be reused.
    Done,
}

/// What happened to a send chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendEvent {
    /// `isend` returned a request.
    Post,
    /// `test` reported done.
    NetDone,
    /// The window slot was released.
    Retire,
}

/// An event that is not legal in the state it arrived in. The state is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Illegal<S, E> {
    /// The state the chunk was (and still is) in.
    pub from: S,
    /// The rejected event.
    pub event: E,
}

/// Why a window rejected an event. The window is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkError {
    /// A receive event that is illegal for chunk `seq`. `from` is `Free` when `seq` is not in
    /// flight (nothing posted, or already retired).
    Recv {
        seq: u64,
        memory: Option<MemKind>,
        from: RecvState,
        event: RecvEvent,
    },
    /// A send event that is illegal for chunk `seq`.
    Send {
        seq: u64,
        from: SendState,
        event: SendEvent,
    },
    /// `test` reported a size other than the posted one: the peers disagree on the plan.
    SizeMismatch {
        seq: u64,
        posted: u32,
        received: usize,
    },
}

impl core::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Recv {
                seq,
                memory,
                from,
                event,
            } => write!(
                f,
                "recv chunk {seq} ({memory:?}): event {event:?} is illegal in state {from:?}"
            ),
            Self::Send { seq, from, event } => {
                write!(
                    f,
                    "send chunk {seq}: event {event:?} is illegal in state {from:?}"
                )
            }
            Self::SizeMismatch {
                seq,
                posted,
                received,
            } => write!(
                f,
                "chunk {seq}: posted {posted} bytes but the network reported {received}"
            ),
        }
    }
}

/// The receive transition table: the next state, or `None` if `event` is illegal.
#[inline]
pub const fn recv_next(from: RecvState, memory: MemKind, event: RecvEvent) -> Option<RecvState> {
    use MemKind::{Device, Host};
    use RecvEvent as E;
    use RecvState as S;
    match (from, event, memory) {
        (S::Free, E::Post, _) => Some(S::Posted),
        (S::Posted, E::NetDone, _) => Some(S::NetDone),
        (S::NetDone, E::UnpackLaunched, Device) => Some(S::Unpacking),
        (S::Unpacking, E::UnpackDone, Device) => Some(S::Unpacked),
        (S::NetDone, E::Consumed, Host) | (S::Unpacked, E::Consumed, Device) => Some(S::Consumed),
        (S::Consumed, E::Retire, _) => Some(S::Free),
        _ => None,
    }
}

/// The send transition table: the next state, or `None` if `event` is illegal.
#[inline]
pub const fn send_next(from: SendState, event: SendEvent) -> Option<SendState> {
    match (from, event) {
        (SendState::Free, SendEvent::Post) => Some(SendState::Posted),
        (SendState::Posted, SendEvent::NetDone) => Some(SendState::Done),
        (SendState::Done, SendEvent::Retire) => Some(SendState::Free),
        _ => None,
    }
}

/// One receive chunk's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecvChunk {
    state: RecvState,
    memory: MemKind,
}

impl RecvChunk {
    /// A free chunk that will land in `memory`: `Host` when the plugin receives straight into
    /// the buffer, `Device` when the data lands in bounce pages and must be unpacked.
    pub const fn new(memory: MemKind) -> Self {
        Self {
            state: RecvState::Free,
            memory,
        }
    }

    /// Current state.
    pub const fn state(&self) -> RecvState {
        self.state
    }

    /// Where the chunk lands.
    pub const fn memory(&self) -> MemKind {
        self.memory
    }

    /// Whether `irecvConsumed` may be called now (data is in the destination).
    #[inline]
    pub const fn is_consumable(&self) -> bool {
        recv_next(self.state, self.memory, RecvEvent::Consumed).is_some()
    }

    /// Apply `event`; on error the state is unchanged.
    #[inline]
    pub fn apply(&mut self, event: RecvEvent) -> Result<RecvState, Illegal<RecvState, RecvEvent>> {
        match recv_next(self.state, self.memory, event) {
            Some(next) => {
                self.state = next;
                Ok(next)
            }
            None => Err(Illegal {
                from: self.state,
                event,
            }),
        }
    }
}

/// One send chunk's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SendChunk {
    state: SendState,
}

impl SendChunk {
    /// A free chunk.
    pub const fn new() -> Self {
        Self {
            state: SendState::Free,
        }
    }

    /// Current state.
    pub const fn state(&self) -> SendState {
        self.state
    }

    /// Apply `event`; on error the state is unchanged.
    #[inline]
    pub fn apply(&mut self, event: SendEvent) -> Result<SendState, Illegal<SendState, SendEvent>> {
        match send_next(self.state, event) {
            Some(next) => {
                self.state = next;
                Ok(next)
            }
            None => Err(Illegal {
                from: self.state,
                event,
            }),
        }
    }
}

/// What the engine should do next for a [`RecvWindow`], most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecvAction {
    /// The head's data is in its destination: call `irecvConsumed` on its request, then
    /// [`RecvWindow::consume`].
    Consume { seq: u64 },
    /// Launch the unpack of TCPX meta slot `slot` (= `seq % 16`) for chunk `seq`, then
    /// [`RecvWindow::unpack_launched`].
    LaunchUnpack { seq: u64, slot: usize },
    /// `test` the oldest request still on the network, then [`RecvWindow::net_done`] if done.
    Test { seq: u64 },
    /// Query the unpack event of chunk `seq`; [`RecvWindow::unpack_done`] once it completed.
    AwaitUnpack { seq: u64 },
    /// Nothing in flight needs attention; post more if there is room.
    Idle,
}

/// A receive in a [`RecvWindow`]: its state machine, posted length and the engine's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvEntry<T> {
    chunk: RecvChunk,
    len: u32,
    payload: T,
}

impl<T> RecvEntry<T> {
    /// Current state.
    pub const fn state(&self) -> RecvState {
        self.chunk.state()
    }

    /// Where the chunk lands.
    pub const fn memory(&self) -> MemKind {
        self.chunk.memory()
    }

    /// Posted length in bytes.
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// Whether the posted length is zero (TCPX still uses a slot for it).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The engine's data for this chunk (request handle, destination, event ...).
    pub const fn payload(&self) -> &T {
        &self.payload
    }
}

/// The receive side of one channel: up to `N` chunks in posting order.
///
/// Encodes TCPX's rules: `net_done` applies only to the oldest chunk still on the network,
/// `consume` only to the head and only once its data is in place, at most `N` in flight.
/// Unpacks may be launched and may complete in any order among device chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow<T, const N: usize> {
    entries: Window<RecvEntry<T>, N>,
    /// Seq of the oldest `Posted` entry; everything older is past `NetDone`.
    on_net: u64,
    /// Bit `i`: the entry `i` places behind the head is a device chunk in `NetDone`
    /// (waiting for a launch). Relative to the head, so retiring it is a shift.
    to_launch: u64,
    /// Bit `i`: the entry `i` places behind the head is `Unpacking`.
    unpacking: u64,
}

/// Yield the set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = u64> {
    core::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros();
        mask &= mask - 1;
        Some(u64::from(i))
    })
}

impl<T, const N: usize> RecvWindow<T, N> {
    /// An empty window; the first post gets sequence number 0. `N` must be in `1..=64`.
    pub const fn new() -> Self {
        // The unpack bookkeeping is one bit per entry in a u64.
        const { assert!(N >= 1 && N <= 64, "RecvWindow supports 1..=64 entries") };
        Self {
            entries: Window::new(),
            on_net: 0,
            to_launch: 0,
            unpacking: 0,
        }
    }

    /// Chunks in flight.
    pub const fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a post would fail: do not call `irecv` then.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// Sequence number (irecv index on this comm) the next post will get.
    pub const fn next_seq(&self) -> u64 {
        self.entries.next_seq()
    }

    /// Record a chunk whose `irecv` of `len` bytes returned a request. Returns its seq.
    pub fn post(&mut self, len: u32, memory: MemKind, payload: T) -> Result<u64, Full<T>> {
        let mut chunk = RecvChunk::new(memory);
        // Free + Post is always legal.
        let _ = chunk.apply(RecvEvent::Post);
        self.entries
            .push(RecvEntry {
                chunk,
                len,
                payload,
            })
            .map_err(|Full(e)| Full(e.payload))
    }

    /// The next thing to do, most urgent first: consume the head, launch an unpack, test the
    /// oldest request on the network, await the oldest unpack.
    pub fn poll(&self) -> RecvAction {
        if let Some((seq, _)) = self.consumable() {
            return RecvAction::Consume { seq };
        }
        if self.to_launch != 0 {
            let seq = self.entries.head_seq() + u64::from(self.to_launch.trailing_zeros());
            return RecvAction::LaunchUnpack {
                seq,
                slot: slot_of(seq),
            };
        }
        if self.on_net < self.entries.next_seq() {
            return RecvAction::Test { seq: self.on_net };
        }
        if self.unpacking != 0 {
            let seq = self.entries.head_seq() + u64::from(self.unpacking.trailing_zeros());
            return RecvAction::AwaitUnpack { seq };
        }
        RecvAction::Idle
    }

    /// The only request `test` may be called on: the oldest one still on the network.
    pub fn test_target(&self) -> Option<(u64, &T)> {
        self.entries
            .get(self.on_net)
            .map(|e| (self.on_net, &e.payload))
    }

    /// The head, if its data is in place and `irecvConsumed` may be called on it.
    pub fn consumable(&self) -> Option<(u64, &T)> {
        match self.entries.head() {
            Some((seq, e)) if e.chunk.is_consumable() => Some((seq, &e.payload)),
            _ => None,
        }
    }

    /// Device chunks whose data arrived and whose unpack is not launched yet, oldest first.
    pub fn pending_launches(&self) -> impl Iterator<Item = (u64, &T)> + '_ {
        self.entries_at(self.to_launch)
    }

    /// Device chunks being unpacked, oldest first.
    pub fn unpacking(&self) -> impl Iterator<Item = (u64, &T)> + '_ {
        self.entries_at(self.unpacking)
    }

    /// Payloads of the entries whose bits are set in `mask` (relative to the head).
    fn entries_at(&self, mask: u64) -> impl Iterator<Item = (u64, &T)> + '_ {
        let head = self.entries.head_seq();
        bits(mask).filter_map(move |i| self.entries.get(head + i).map(|e| (head + i, &e.payload)))
    }

    /// The bit of entry `seq` (in flight) in the head-relative masks.
    fn bit(&self, seq: u64) -> u64 {
        1 << (seq - self.entries.head_seq())
    }

    /// The head entry.
    pub fn head(&self) -> Option<(u64, &RecvEntry<T>)> {
        self.entries.head()
    }

    /// Entry `seq`, if in flight.
    pub fn get(&self, seq: u64) -> Option<&RecvEntry<T>> {
        self.entries.get(seq)
    }

    /// The engine's payload of chunk `seq`, mutably (e.g. to store an unpack event).
    /// Chunk states cannot be changed through it.
    pub fn payload_mut(&mut self, seq: u64) -> Option<&mut T> {
        self.entries.get_mut(seq).map(|e| &mut e.payload)
    }

    /// All entries oldest first (diagnostics).
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (u64, &RecvEntry<T>)> + ExactSizeIterator + '_ {
        self.entries.iter()
    }

    /// `test` reported the oldest on-network request done with `size` bytes.
    pub fn net_done(&mut self, size: usize) -> Result<RecvAction, ChunkError> {
        let seq = self.on_net;
        let e = self.entries.get_mut(seq).ok_or(ChunkError::Recv {
            seq,
            memory: None,
            from: RecvState::Free,
            event: RecvEvent::NetDone,
        })?;
        if size != e.len as usize {
            return Err(ChunkError::SizeMismatch {
                seq,
                posted: e.len,
                received: size,
            });
        }
        // on_net always points at a Posted entry when it is in flight.
        let _ = e.chunk.apply(RecvEvent::NetDone);
        if e.memory() == MemKind::Device {
            self.to_launch |= self.bit(seq);
        }
        self.on_net += 1;
        Ok(self.poll())
    }

    /// The unpack of device chunk `seq` was launched.
    pub fn unpack_launched(&mut self, seq: u64) -> Result<RecvAction, ChunkError> {
        self.step(seq, RecvEvent::UnpackLaunched)?;
        let bit = self.bit(seq);
        self.to_launch &= !bit;
        self.unpacking |= bit;
        Ok(self.poll())
    }

    /// The unpack of device chunk `seq` completed.
    pub fn unpack_done(&mut self, seq: u64) -> Result<RecvAction, ChunkError> {
        self.step(seq, RecvEvent::UnpackDone)?;
        self.unpacking &= !self.bit(seq);
        Ok(self.poll())
    }

    /// `irecvConsumed` was called on the head: retire it and hand back its seq and payload.
    pub fn consume(&mut self) -> Result<(u64, T), ChunkError> {
        let seq = self.entries.head_seq();
        let illegal = |memory, from| ChunkError::Recv {
            seq,
            memory,
            from,
            event: RecvEvent::Consumed,
        };
        let (_, head) = self.entries.head().ok_or(illegal(None, RecvState::Free))?;
        if !head.chunk.is_consumable() {
            return Err(illegal(Some(head.memory()), head.state()));
        }
        let (seq, mut e) = self
            .entries
            .pop_head()
            .ok_or(illegal(None, RecvState::Free))?;
        // Checked above: Consumed then Retire are legal.
        let _ = e.chunk.apply(RecvEvent::Consumed);
        let _ = e.chunk.apply(RecvEvent::Retire);
        // The head's bits were clear (it was consumable); everyone moves one place up.
        self.to_launch >>= 1;
        self.unpacking >>= 1;
        Ok((seq, e.payload))
    }

    fn step(&mut self, seq: u64, event: RecvEvent) -> Result<(), ChunkError> {
        let e = self.entries.get_mut(seq).ok_or(ChunkError::Recv {
            seq,
            memory: None,
            from: RecvState::Free,
            event,
        })?;
        e.chunk
            .apply(event)
            .map(|_| ())
            .map_err(|Illegal { from, event }| ChunkError::Recv {
                seq,
                memory: Some(e.chunk.memory()),
                from,
                event,
            })
    }
}

impl<T, const N: usize> Default for RecvWindow<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

/// What the engine should do next for a [`SendWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SendAction {
    /// `test` the head request, then [`SendWindow::net_done`] if done.
    Test { seq: u64 },
    /// Nothing in flight; post more if there is room.
    Idle,
}

/// A send in a [`SendWindow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendEntry<T> {
    chunk: SendChunk,
    len: u32,
    payload: T,
}

impl<T> SendEntry<T> {
    /// Current state (always `Posted` while in the window).
    pub const fn state(&self) -> SendState {
        self.chunk.state()
    }

    /// Posted length in bytes.
    pub const fn len(&self) -> u32 {
        self.len
    }

    /// Whether the posted length is zero.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The engine's data for this chunk.
    pub const fn payload(&self) -> &T {
        &self.payload
    }
}

/// The send side of one channel: up to `N` chunks, completed strictly in posting order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow<T, const N: usize> {
    entries: Window<SendEntry<T>, N>,
}

impl<T, const N: usize> SendWindow<T, N> {
    /// An empty window; the first post gets sequence number 0.
    pub const fn new() -> Self {
        Self {
            entries: Window::new(),
        }
    }

    /// Chunks in flight.
    pub const fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a post would fail: do not call `isend` then.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// Sequence number (isend index on this comm) the next post will get.
    pub const fn next_seq(&self) -> u64 {
        self.entries.next_seq()
    }

    /// Record a chunk whose `isend` of `len` bytes returned a request. Returns its seq.
    pub fn post(&mut self, len: u32, payload: T) -> Result<u64, Full<T>> {
        let mut chunk = SendChunk::new();
        let _ = chunk.apply(SendEvent::Post);
        self.entries
            .push(SendEntry {
                chunk,
                len,
                payload,
            })
            .map_err(|Full(e)| Full(e.payload))
    }

    /// The next thing to do.
    pub fn poll(&self) -> SendAction {
        match self.entries.head() {
            Some((seq, _)) => SendAction::Test { seq },
            None => SendAction::Idle,
        }
    }

    /// The only request `test` may be called on: the oldest.
    pub fn test_target(&self) -> Option<(u64, &T)> {
        self.entries.head().map(|(s, e)| (s, &e.payload))
    }

    /// The head's payload, mutably.
    pub fn head_payload_mut(&mut self) -> Option<(u64, &mut T)> {
        self.entries.head_mut().map(|(s, e)| (s, &mut e.payload))
    }

    /// All entries oldest first (diagnostics).
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (u64, &SendEntry<T>)> + ExactSizeIterator + '_ {
        self.entries.iter()
    }

    /// `test` reported the head done with `size` bytes: it is retired and handed back.
    pub fn net_done(&mut self, size: usize) -> Result<(u64, T), ChunkError> {
        let seq = self.entries.head_seq();
        let (_, head) = self.entries.head().ok_or(ChunkError::Send {
            seq,
            from: SendState::Free,
            event: SendEvent::NetDone,
        })?;
        if size != head.len as usize {
            return Err(ChunkError::SizeMismatch {
                seq,
                posted: head.len,
                received: size,
            });
        }
        let (seq, mut e) = self.entries.pop_head().ok_or(ChunkError::Send {
            seq,
            from: SendState::Free,
            event: SendEvent::NetDone,
        })?;
        // The head is always Posted: NetDone then Retire are legal.
        let _ = e.chunk.apply(SendEvent::NetDone);
        let _ = e.chunk.apply(SendEvent::Retire);
        Ok((seq, e.payload))
    }
}

impl<T, const N: usize> Default for SendWindow<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
