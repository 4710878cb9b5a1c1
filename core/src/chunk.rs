//! Chunk state machines and the typed per-channel windows that drive them.
//!
//! Sans-IO: the engine performs `irecv`/`test`/unpack launches/`irecvConsumed` and reports
//! each outcome as an event; these types check the event is legal and say what to do next.
//! [`RecvWindow`] and [`SendWindow`] add TCPX's ordering rules on top of [`Window`].

use crate::unpack::slot_of;
use crate::window::{Full, Window};

/// Where a receive lands; decides whether it needs an unpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// Host memory: the plugin receives straight into the buffer.
    Host,
    /// Device memory: the data lands in bounce pages and must be unpacked.
    Device,
}

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
        memory: Option<Memory>,
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
pub const fn recv_next(from: RecvState, memory: Memory, event: RecvEvent) -> Option<RecvState> {
    use Memory::{Device, Host};
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
    memory: Memory,
}

impl RecvChunk {
    /// A free chunk that will land in `memory`.
    pub const fn new(memory: Memory) -> Self {
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
    pub const fn memory(&self) -> Memory {
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
    pub const fn memory(&self) -> Memory {
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
    pub fn post(&mut self, len: u32, memory: Memory, payload: T) -> Result<u64, Full<T>> {
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
        if e.memory() == Memory::Device {
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
mod tests {
    extern crate std;

    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::window::TCPX_WINDOW;

    const ALL_RECV_STATES: [RecvState; 6] = [
        RecvState::Free,
        RecvState::Posted,
        RecvState::NetDone,
        RecvState::Unpacking,
        RecvState::Unpacked,
        RecvState::Consumed,
    ];
    const ALL_RECV_EVENTS: [RecvEvent; 6] = [
        RecvEvent::Post,
        RecvEvent::NetDone,
        RecvEvent::UnpackLaunched,
        RecvEvent::UnpackDone,
        RecvEvent::Consumed,
        RecvEvent::Retire,
    ];

    #[test]
    fn host_lifecycle_skips_unpack() {
        let mut c = RecvChunk::new(Memory::Host);
        for (ev, to) in [
            (RecvEvent::Post, RecvState::Posted),
            (RecvEvent::NetDone, RecvState::NetDone),
            (RecvEvent::Consumed, RecvState::Consumed),
            (RecvEvent::Retire, RecvState::Free),
        ] {
            assert_eq!(c.apply(ev), Ok(to));
        }
        let mut c = RecvChunk::new(Memory::Host);
        c.apply(RecvEvent::Post).unwrap();
        c.apply(RecvEvent::NetDone).unwrap();
        assert_eq!(
            c.apply(RecvEvent::UnpackLaunched),
            Err(Illegal {
                from: RecvState::NetDone,
                event: RecvEvent::UnpackLaunched
            })
        );
        assert_eq!(c.state(), RecvState::NetDone);
    }

    #[test]
    fn device_lifecycle_requires_unpack_before_consume() {
        let mut c = RecvChunk::new(Memory::Device);
        c.apply(RecvEvent::Post).unwrap();
        c.apply(RecvEvent::NetDone).unwrap();
        assert!(!c.is_consumable());
        assert!(c.apply(RecvEvent::Consumed).is_err());
        assert!(c.apply(RecvEvent::UnpackDone).is_err());
        assert_eq!(c.apply(RecvEvent::UnpackLaunched), Ok(RecvState::Unpacking));
        assert!(c.apply(RecvEvent::Consumed).is_err());
        assert_eq!(c.apply(RecvEvent::UnpackDone), Ok(RecvState::Unpacked));
        assert!(c.is_consumable());
        assert_eq!(c.apply(RecvEvent::Consumed), Ok(RecvState::Consumed));
        assert_eq!(c.apply(RecvEvent::Retire), Ok(RecvState::Free));
    }

    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let mut legal = 0;
        for mem in [Memory::Host, Memory::Device] {
            for from in ALL_RECV_STATES {
                for ev in ALL_RECV_EVENTS {
                    if recv_next(from, mem, ev).is_some() {
                        legal += 1;
                    }
                }
            }
        }
        // Host: Post, NetDone, Consumed, Retire; device adds the two unpack steps.
        assert_eq!(legal, 4 + 6);
        assert_eq!(
            send_next(SendState::Posted, SendEvent::NetDone),
            Some(SendState::Done)
        );
        assert_eq!(send_next(SendState::Free, SendEvent::NetDone), None);
        assert_eq!(send_next(SendState::Done, SendEvent::NetDone), None);
    }

    #[test]
    fn send_machine() {
        let mut c = SendChunk::new();
        assert_eq!(c.apply(SendEvent::Post), Ok(SendState::Posted));
        assert!(c.apply(SendEvent::Post).is_err());
        assert_eq!(c.apply(SendEvent::NetDone), Ok(SendState::Done));
        assert_eq!(
            c.apply(SendEvent::NetDone),
            Err(Illegal {
                from: SendState::Done,
                event: SendEvent::NetDone
            })
        );
        assert_eq!(c.apply(SendEvent::Retire), Ok(SendState::Free));
    }

    #[test]
    fn recv_window_device_pipeline() {
        let mut w: RecvWindow<&str, TCPX_WINDOW> = RecvWindow::new();
        assert_eq!(w.poll(), RecvAction::Idle);
        assert_eq!(w.post(100, Memory::Device, "a"), Ok(0));
        assert_eq!(w.post(200, Memory::Device, "b"), Ok(1));
        assert_eq!(w.poll(), RecvAction::Test { seq: 0 });
        assert_eq!(w.test_target(), Some((0, &"a")));
        assert_eq!(
            w.net_done(100),
            Ok(RecvAction::LaunchUnpack { seq: 0, slot: 0 })
        );
        // The next request can be tested while 0 is still in bounce pages.
        assert_eq!(w.test_target(), Some((1, &"b")));
        assert_eq!(w.unpack_launched(0), Ok(RecvAction::Test { seq: 1 }));
        assert_eq!(
            w.net_done(200),
            Ok(RecvAction::LaunchUnpack { seq: 1, slot: 1 })
        );
        assert_eq!(w.unpack_launched(1), Ok(RecvAction::AwaitUnpack { seq: 0 }));
        // The younger unpack finishes first: still not consumable (head is 0).
        assert_eq!(w.unpack_done(1), Ok(RecvAction::AwaitUnpack { seq: 0 }));
        assert_eq!(w.consumable(), None);
        assert!(matches!(
            w.consume(),
            Err(ChunkError::Recv {
                seq: 0,
                from: RecvState::Unpacking,
                event: RecvEvent::Consumed,
                ..
            })
        ));
        assert_eq!(w.unpack_done(0), Ok(RecvAction::Consume { seq: 0 }));
        assert_eq!(w.consume(), Ok((0, "a")));
        assert_eq!(w.poll(), RecvAction::Consume { seq: 1 });
        assert_eq!(w.consume(), Ok((1, "b")));
        assert_eq!(w.poll(), RecvAction::Idle);
        assert_eq!(w.next_seq(), 2);
    }

    #[test]
    fn recv_window_rejects_out_of_place_events() {
        let mut w: RecvWindow<u8, 2> = RecvWindow::new();
        assert!(matches!(
            w.net_done(0),
            Err(ChunkError::Recv {
                from: RecvState::Free,
                event: RecvEvent::NetDone,
                ..
            })
        ));
        w.post(10, Memory::Host, 0).unwrap();
        w.post(10, Memory::Device, 1).unwrap();
        assert_eq!(w.post(10, Memory::Host, 2), Err(Full(2)));
        let before = w.clone();
        assert_eq!(
            w.net_done(11),
            Err(ChunkError::SizeMismatch {
                seq: 0,
                posted: 10,
                received: 11
            })
        );
        assert!(w.unpack_launched(0).is_err());
        assert!(w.unpack_done(1).is_err());
        assert!(w.unpack_launched(7).is_err());
        assert!(w.consume().is_err());
        assert_eq!(w, before);
        assert_eq!(w.net_done(10), Ok(RecvAction::Consume { seq: 0 }));
        assert!(matches!(
            w.unpack_launched(0),
            Err(ChunkError::Recv {
                memory: Some(Memory::Host),
                from: RecvState::NetDone,
                ..
            })
        ));
    }

    #[test]
    fn recv_window_of_64_tracks_every_entry() {
        let mut w: RecvWindow<u64, 64> = RecvWindow::new();
        for round in 0..3u64 {
            for i in 0..64 {
                w.post(1, Memory::Device, round * 64 + i).unwrap();
            }
            assert!(w.is_full());
            for _ in 0..64 {
                w.net_done(1).unwrap();
            }
            assert_eq!(w.pending_launches().count(), 64);
            // Launch and finish youngest first: nothing is consumable until the head is.
            for seq in (round * 64..round * 64 + 64).rev() {
                w.unpack_launched(seq).unwrap();
            }
            assert_eq!(w.unpacking().count(), 64);
            for seq in (round * 64 + 1..round * 64 + 64).rev() {
                assert_eq!(
                    w.unpack_done(seq),
                    Ok(RecvAction::AwaitUnpack { seq: round * 64 })
                );
            }
            w.unpack_done(round * 64).unwrap();
            for seq in round * 64..round * 64 + 64 {
                assert_eq!(w.poll(), RecvAction::Consume { seq });
                assert_eq!(w.consume(), Ok((seq, seq)));
            }
            assert_eq!(w.poll(), RecvAction::Idle);
        }
    }

    #[test]
    fn send_window_in_order() {
        let mut w: SendWindow<u32, 2> = SendWindow::new();
        assert_eq!(w.poll(), SendAction::Idle);
        assert!(w.net_done(0).is_err());
        assert_eq!(w.post(5, 50), Ok(0));
        assert_eq!(w.post(6, 60), Ok(1));
        assert_eq!(w.post(7, 70), Err(Full(70)));
        assert_eq!(w.poll(), SendAction::Test { seq: 0 });
        assert!(matches!(
            w.net_done(6),
            Err(ChunkError::SizeMismatch { .. })
        ));
        assert_eq!(w.net_done(5), Ok((0, 50)));
        assert_eq!(w.net_done(6), Ok((1, 60)));
        assert_eq!(w.next_seq(), 2);
        assert!(w.is_empty());
    }

    // ---- property tests ----

    fn recv_event() -> impl Strategy<Value = RecvEvent> {
        proptest::sample::select(&ALL_RECV_EVENTS[..])
    }

    proptest! {
        /// Any event sequence keeps a chunk in a state reachable for its memory kind, and a
        /// rejected event changes nothing.
        #[test]
        fn recv_chunk_random_events(
            device in any::<bool>(),
            events in proptest::collection::vec(recv_event(), 0..64),
        ) {
            let mem = if device { Memory::Device } else { Memory::Host };
            let mut c = RecvChunk::new(mem);
            for ev in events {
                let before = c;
                match c.apply(ev) {
                    Ok(to) => {
                        prop_assert_eq!(Some(to), recv_next(before.state(), mem, ev));
                        prop_assert_eq!(c.state(), to);
                    }
                    Err(e) => {
                        prop_assert_eq!(c, before);
                        prop_assert_eq!(e, Illegal { from: before.state(), event: ev });
                    }
                }
                if mem == Memory::Host {
                    prop_assert!(!matches!(c.state(), RecvState::Unpacking | RecvState::Unpacked));
                }
            }
        }

        #[test]
        fn send_chunk_random_events(events in proptest::collection::vec(0u8..3, 0..64)) {
            let mut c = SendChunk::new();
            for e in events {
                let ev = [SendEvent::Post, SendEvent::NetDone, SendEvent::Retire][e as usize];
                let before = c;
                match c.apply(ev) {
                    Ok(to) => prop_assert_eq!(Some(to), send_next(before.state(), ev)),
                    Err(_) => prop_assert_eq!(c, before),
                }
            }
        }
    }

    #[derive(Debug, Clone)]
    enum WOp {
        Post { device: bool, len: u32 },
        NetDone { wrong_size: bool },
        Launch { back: u8 },
        Done { back: u8 },
        Consume,
        FollowPoll,
    }

    fn wop() -> impl Strategy<Value = WOp> {
        prop_oneof![
            3 => (any::<bool>(), 0u32..5).prop_map(|(device, len)| WOp::Post { device, len }),
            2 => any::<bool>().prop_map(|wrong_size| WOp::NetDone { wrong_size }),
            2 => (0u8..6).prop_map(|back| WOp::Launch { back }),
            2 => (0u8..6).prop_map(|back| WOp::Done { back }),
            2 => Just(WOp::Consume),
            2 => Just(WOp::FollowPoll),
        ]
    }

    /// Structural invariants of a receive window.
    fn check_invariants(w: &RecvWindow<u64, 4>) -> Result<(), TestCaseError> {
        prop_assert!(w.len() <= 4);
        let mut seen_posted = false;
        let (mut launch, mut unpacking) = (Vec::new(), Vec::new());
        for (seq, e) in w.iter() {
            prop_assert_eq!(*e.payload(), seq, "payload travels with its seq");
            prop_assert!(!matches!(e.state(), RecvState::Free | RecvState::Consumed));
            if e.memory() == Memory::Host {
                prop_assert!(!matches!(
                    e.state(),
                    RecvState::Unpacking | RecvState::Unpacked
                ));
            }
            // Posted entries form a suffix: the network completes in posting order.
            if e.state() == RecvState::Posted {
                seen_posted = true;
            } else {
                prop_assert!(!seen_posted);
            }
            if e.state() == RecvState::NetDone && e.memory() == Memory::Device {
                launch.push(seq);
            }
            if e.state() == RecvState::Unpacking {
                unpacking.push(seq);
            }
        }
        // The bookkeeping masks agree with the states.
        let got: Vec<u64> = w.pending_launches().map(|(s, _)| s).collect();
        prop_assert_eq!(got, launch);
        let got: Vec<u64> = w.unpacking().map(|(s, _)| s).collect();
        prop_assert_eq!(got, unpacking);
        Ok(())
    }

    proptest! {
        /// Random (mostly illegal) event streams: the window never breaks its invariants,
        /// errors leave it unchanged, and chunks are consumed exactly in posting order.
        #[test]
        fn recv_window_random_events(ops in proptest::collection::vec(wop(), 0..300)) {
            let mut w: RecvWindow<u64, 4> = RecvWindow::new();
            // (seq, payload) in consumption order; payload was the seq at post time.
            let mut consumed: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                let before = w.clone();
                let head = w.next_seq().saturating_sub(w.len() as u64);
                let res: Result<(), ChunkError> = match op {
                    WOp::Post { device, len } => {
                        let mem = if device { Memory::Device } else { Memory::Host };
                        match w.post(len, mem, w.next_seq()) {
                            Ok(seq) => { prop_assert_eq!(seq, before.next_seq()); Ok(()) }
                            Err(Full(_)) => { prop_assert!(before.is_full()); prop_assert_eq!(&w, &before); Ok(()) }
                        }
                    }
                    WOp::NetDone { wrong_size } => {
                        let len = w.test_target().map(|(s, _)| w.get(s).unwrap().len()).unwrap_or(0);
                        w.net_done(len as usize + usize::from(wrong_size)).map(|_| ())
                    }
                    WOp::Launch { back } => w.unpack_launched(head + u64::from(back)).map(|_| ()),
                    WOp::Done { back } => w.unpack_done(head + u64::from(back)).map(|_| ()),
                    WOp::Consume => w.consume().map(|sp| consumed.push(sp)),
                    WOp::FollowPoll => match w.poll() {
                        RecvAction::Consume { .. } => w.consume().map(|sp| consumed.push(sp)),
                        RecvAction::LaunchUnpack { seq, slot } => {
                            prop_assert_eq!(slot as u64, seq % 16);
                            w.unpack_launched(seq).map(|_| ())
                        }
                        RecvAction::Test { seq } => {
                            let len = w.get(seq).unwrap().len();
                            w.net_done(len as usize).map(|_| ())
                        }
                        RecvAction::AwaitUnpack { seq } => w.unpack_done(seq).map(|_| ()),
                        RecvAction::Idle => Ok(()),
                    },
                };
                if res.is_err() {
                    prop_assert_eq!(&w, &before);
                }
                check_invariants(&w)?;
            }
            // Drain by following poll: every legal path ends with all chunks consumed.
            let posted = w.next_seq();
            for _ in 0..100 {
                match w.poll() {
                    RecvAction::Consume { .. } => consumed.push(w.consume().unwrap()),
                    RecvAction::LaunchUnpack { seq, .. } => { w.unpack_launched(seq).unwrap(); }
                    RecvAction::Test { seq } => {
                        let len = w.get(seq).unwrap().len();
                        w.net_done(len as usize).unwrap();
                    }
                    RecvAction::AwaitUnpack { seq } => { w.unpack_done(seq).unwrap(); }
                    RecvAction::Idle => break,
                }
            }
            prop_assert!(w.is_empty());
            let want: Vec<(u64, u64)> = (0..posted).map(|s| (s, s)).collect();
            prop_assert_eq!(consumed, want);
        }

        /// Send windows complete in posting order; wrong sizes and empty windows are rejected
        /// without change.
        #[test]
        fn send_window_random_events(ops in proptest::collection::vec(0u8..4, 0..300)) {
            let mut w: SendWindow<u64, 3> = SendWindow::new();
            let mut done = 0u64;
            for op in ops {
                let before = w.clone();
                match op {
                    0 | 1 => {
                        let r = w.post(7, w.next_seq());
                        prop_assert_eq!(r.is_err(), before.is_full());
                    }
                    2 => match w.net_done(7) {
                        Ok((seq, p)) => { prop_assert_eq!(seq, done); prop_assert_eq!(p, seq); done += 1; }
                        Err(_) => { prop_assert!(before.is_empty()); prop_assert_eq!(&w, &before); }
                    },
                    _ => {
                        prop_assert!(w.net_done(8).is_err());
                        prop_assert_eq!(&w, &before);
                    }
                }
                prop_assert!(w.len() <= 3);
                prop_assert!(w.iter().all(|(_, e)| e.state() == SendState::Posted));
                prop_assert_eq!(w.next_seq(), done + w.len() as u64);
            }
        }
    }
}
