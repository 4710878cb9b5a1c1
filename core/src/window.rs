//! The per-channel sliding window of in-flight requests.
//!
//! TCPX allows 16 outstanding requests per comm, `test` only on the oldest and retirement
//! strictly in posting order. [`Window`] is a fixed-capacity FIFO whose API can only say that:
//! push at the tail when there is room, look at or retire the head, read the rest.

use heapless::Deque;

/// The largest window this crate is tested with (NCCL itself allows 32 requests per comm).
pub const MAX_WINDOW: usize = 64;

/// A post that did not fit: the window already holds `N` entries. The item is handed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The item that could not be posted.
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// A FIFO of at most `N` in-flight entries, each tagged with its sequence number.
///
/// The k-th entry ever pushed gets sequence number k (from 0); for a TCPX recv comm that is
/// also the irecv index, so its unpack slot is `k % 16`. Only the head (oldest entry) can be
/// borrowed mutably or retired; everything else is read-only.
pub struct Window<T, const N: usize> {
    entries: Deque<T, N>,
    /// Sequence number of the head, or of the next push when empty.
    head_seq: u64,
}

impl<T, const N: usize> Window<T, N> {
    /// The window's capacity.
    pub const CAPACITY: usize = N;

    /// An empty window; the first push gets sequence number 0.
    pub const fn new() -> Self {
        Self {
            entries: Deque::new(),
            head_seq: 0,
        }
    }

    /// Number of entries in flight.
    pub const fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a push would fail.
    pub fn is_full(&self) -> bool {
        self.entries.is_full()
    }

    /// How many more entries fit.
    pub const fn vacancy(&self) -> usize {
        N - self.entries.len()
    }

    /// Sequence number of the head, or of the next push when empty.
    pub const fn head_seq(&self) -> u64 {
        self.head_seq
    }

    /// Sequence number the next push will get.
    pub const fn next_seq(&self) -> u64 {
        self.head_seq + self.entries.len() as u64
    }

    /// Whether `seq` is in flight.
    pub const fn contains(&self, seq: u64) -> bool {
        seq >= self.head_seq && seq < self.next_seq()
    }

    /// Post `item` at the tail; returns its sequence number, or hands it back when full.
    pub fn push(&mut self, item: T) -> Result<u64, Full<T>> {
        let seq = self.next_seq();
        self.entries.push_back(item).map_err(Full)?;
        Ok(seq)
    }

    /// The oldest entry and its sequence number.
    pub fn head(&self) -> Option<(u64, &T)> {
        self.entries.front().map(|t| (self.head_seq, t))
    }

    /// The oldest entry, mutably: the only entry a caller may change.
    pub fn head_mut(&mut self) -> Option<(u64, &mut T)> {
        let seq = self.head_seq;
        self.entries.front_mut().map(|t| (seq, t))
    }

    /// Retire the oldest entry.
    pub fn pop_head(&mut self) -> Option<(u64, T)> {
        let item = self.entries.pop_front()?;
        let seq = self.head_seq;
        self.head_seq += 1;
        Some((seq, item))
    }

    /// Read-only view of entry `seq`, if it is in flight.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let i = self.index_of(seq)?;
        let (a, b) = self.entries.as_slices();
        if i < a.len() {
            a.get(i)
        } else {
            b.get(i - a.len())
        }
    }

    /// Entries oldest first, with their sequence numbers (for diagnostics and scans).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &T)> + ExactSizeIterator + '_ {
        let base = self.head_seq;
        self.entries
            .iter()
            .enumerate()
            .map(move |(i, t)| (base + i as u64, t))
    }

    /// Mutable access to a non-head entry. Crate-private: the typed windows in
    /// [`crate::chunk`] use it only after checking the transition is legal for that entry.
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        let i = self.index_of(seq)?;
        let (a, b) = self.entries.as_mut_slices();
        if i < a.len() {
            a.get_mut(i)
        } else {
            b.get_mut(i - a.len())
        }
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        if self.contains(seq) {
            Some((seq - self.head_seq) as usize)
        } else {
            None
        }
    }
}

impl<T, const N: usize> Default for Window<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone, const N: usize> Clone for Window<T, N> {
    fn clone(&self) -> Self {
        Self {
            entries: self.entries.clone(),
            head_seq: self.head_seq,
        }
    }
}

impl<T: PartialEq, const N: usize> PartialEq for Window<T, N> {
    fn eq(&self, other: &Self) -> bool {
        self.head_seq == other.head_seq && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: Eq, const N: usize> Eq for Window<T, N> {}

impl<T: core::fmt::Debug, const N: usize> core::fmt::Debug for Window<T, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Window")
            .field("capacity", &N)
            .field("head_seq", &self.head_seq)
            .field("entries", &self.entries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::VecDeque;
    use std::string::String;
    use std::vec::Vec;

    use crate::ring::TCPX_REQUESTS;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn push_until_full_then_hand_back() {
        let mut w: Window<u32, TCPX_REQUESTS> = Window::new();
        for k in 0..16u32 {
            assert_eq!(w.push(k), Ok(u64::from(k)));
        }
        assert!(w.is_full());
        assert_eq!(w.vacancy(), 0);
        assert_eq!(w.push(99), Err(Full(99)));
        assert_eq!(w.len(), 16);
        assert_eq!(w.next_seq(), 16);
    }

    #[test]
    fn retire_in_order_and_seq_keeps_counting() {
        let mut w: Window<u32, 4> = Window::new();
        let mut expected = 0u64;
        for round in 0..10u32 {
            for j in 0..4 {
                w.push(round * 4 + j).unwrap();
            }
            for j in 0..4 {
                let (seq, v) = w.pop_head().unwrap();
                assert_eq!(seq, expected);
                assert_eq!(v, round * 4 + j);
                expected += 1;
            }
            assert!(w.is_empty());
            assert_eq!(w.pop_head(), None);
        }
        assert_eq!(w.head_seq(), 40);
        // The k-th post maps to TCPX slot k % 16.
        assert_eq!(crate::unpack::slot_of(w.push(0).unwrap()), 40 % 16);
    }

    #[test]
    fn head_mut_changes_only_the_head() {
        let mut w: Window<String, 3> = Window::new();
        w.push(String::from("a")).unwrap();
        w.push(String::from("b")).unwrap();
        let (seq, h) = w.head_mut().unwrap();
        assert_eq!(seq, 0);
        h.push('!');
        let v: Vec<(u64, &str)> = w.iter().map(|(s, t)| (s, t.as_str())).collect();
        assert_eq!(v, [(0, "a!"), (1, "b")]);
        assert_eq!(w.get(1).map(String::as_str), Some("b"));
        assert_eq!(w.get(2), None);
    }

    #[test]
    fn works_at_64_with_wraparound() {
        let mut w: Window<u64, MAX_WINDOW> = Window::new();
        for k in 0..1000u64 {
            w.push(k).unwrap();
            if w.is_full() {
                for _ in 0..7 {
                    let (seq, v) = w.pop_head().unwrap();
                    assert_eq!(seq, v);
                }
            }
        }
        for (seq, v) in w.iter() {
            assert_eq!(seq, *v);
            assert_eq!(w.get(seq), Some(v));
        }
        assert_eq!(w.iter().len(), w.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pop,
        MutHead,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![3 => Just(Op::Push), 2 => Just(Op::Pop), 1 => Just(Op::MutHead)]
    }

    proptest! {
        /// The window behaves exactly like an unbounded FIFO capped at N, with seq = index.
        #[test]
        fn matches_a_capped_fifo(ops in proptest::collection::vec(op(), 0..400)) {
            let mut w: Window<u64, 8> = Window::new();
            let mut model: VecDeque<(u64, u64)> = VecDeque::new();
            let mut pushed = 0u64;
            for op in ops {
                match op {
                    Op::Push => {
                        let r = w.push(pushed * 10);
                        if model.len() == 8 {
                            prop_assert_eq!(r, Err(Full(pushed * 10)));
                        } else {
                            prop_assert_eq!(r, Ok(pushed));
                            model.push_back((pushed, pushed * 10));
                            pushed += 1;
                        }
                    }
                    Op::Pop => prop_assert_eq!(w.pop_head(), model.pop_front()),
                    Op::MutHead => {
                        if let Some((seq, v)) = w.head_mut() {
                            *v += 1;
                            let m = model.front_mut().unwrap();
                            prop_assert_eq!(seq, m.0);
                            m.1 += 1;
                        } else {
                            prop_assert!(model.is_empty());
                        }
                    }
                }
                prop_assert!(w.len() <= 8);
                prop_assert_eq!(w.len(), model.len());
                prop_assert_eq!(w.next_seq(), pushed);
                let got: Vec<(u64, u64)> = w.iter().map(|(s, v)| (s, *v)).collect();
                let want: Vec<(u64, u64)> = model.iter().copied().collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
