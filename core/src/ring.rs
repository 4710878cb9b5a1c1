//! The TCPX request ring: the contract a TCPX comm keeps with its caller for its requests.
//!
//! A TCPX comm hands out at most [`TCPX_REQUESTS`] requests at a time. The k-th request of a
//! comm (from 0) lives in slot `k % 16` — for a receive that is also its slot in the
//! [`crate::unpack::NetUnpackMeta`] table — and each one goes through, strictly in posting
//! order:
//!
//! 1. **posted** (`isend` / `irecv`): refused while 16 requests hold a slot;
//! 2. **control passed**: the request's control message went out (send) or came in and its
//!    payload was handed on (receive) — the plugin's own progress, which the caller never sees;
//! 3. **tested** done (`test` on the oldest untested request only; not before its control
//!    message passed);
//! 4. **consumed** (`irecvConsumed`, receives of an UNPACK device): only now is the slot free
//!    again. Sends, and receives of a host comm, release their slot when tested
//!    ([`Release::AtTest`]).
//!
//! [`RequestRing`] keeps those four counters and answers which slot each step concerns. It
//! holds no per-request data: the caller keeps a fixed array of `N` slots (request objects
//! whose addresses the caller hands out, preallocated page and fragment lists reused in place)
//! and indexes it with [`Req::slot`].
//!
//! # Not a [`Window`](crate::window::Window)
//!
//! [`Window`](crate::window::Window) is a FIFO that *owns* its entries and has two states
//! (in flight, retired): the engine's per-channel queue of chunks. The ring is the plugin's
//! side of the same limit: no entries are moved, only counted, so slot storage never moves
//! (request pointers stay valid), and it has the two states a window has no room for: a
//! request whose control message has not passed yet, and a tested receive that still holds its
//! slot (and bounce pages) until it is consumed.

/// Requests a TCPX comm allows outstanding (posted and not yet released); also the number of
/// slots in TCPX's unpack meta table. A 17th outstanding request is an error in TCPX.
pub const TCPX_REQUESTS: usize = 16;

/// When a request gives its slot back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// At the `test` that reports it done (sends; receives of a host comm).
    AtTest,
    /// At its `irecvConsumed` (receives of an UNPACK device).
    AtConsume,
}

/// One request: its comm-lifetime sequence number and its slot (`seq % N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Req {
    /// The k of the k-th request of the comm (from 0).
    pub seq: u64,
    /// `seq % N`: the index into the caller's slot array (and the meta table's slot).
    pub slot: usize,
}

/// A step the ring refused; nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RingError {
    /// Every slot is held: a post now would be the (N+1)-th outstanding request.
    Full,
    /// `test` on a slot that is not the oldest untested request's (or nothing is untested).
    NotOldest {
        /// The slot asked for.
        slot: usize,
    },
    /// Completion of a request whose control message has not passed, or that is not the
    /// oldest untested one.
    NotReady {
        /// The request's sequence number.
        seq: u64,
    },
    /// `irecvConsumed` on a slot that is not the oldest tested, unconsumed request's (or none
    /// is waiting to be consumed).
    NotConsumable {
        /// The slot asked for.
        slot: usize,
    },
}

impl core::fmt::Display for RingError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RingError::Full => write!(f, "every request slot is held"),
            RingError::NotOldest { slot } => {
                write!(f, "test on slot {slot}, not the oldest untested request")
            }
            RingError::NotReady { seq } => write!(f, "request {seq} cannot complete yet"),
            RingError::NotConsumable { slot } => {
                write!(f, "consume on slot {slot}, not the oldest tested request")
            }
        }
    }
}

impl core::error::Error for RingError {}

/// The counters of one comm's request ring: `consumed ≤ tested ≤ ctrl ≤ posted` and
/// `posted - consumed ≤ N` always hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRing<const N: usize = TCPX_REQUESTS> {
    posted: u64,
    ctrl: u64,
    tested: u64,
    consumed: u64,
    release: Release,
}

impl<const N: usize> RequestRing<N> {
    /// The ring's slot count.
    pub const CAPACITY: usize = N;

    /// An empty ring; the first request is seq 0, slot 0.
    pub const fn new(release: Release) -> Self {
        assert!(N > 0, "a request ring needs a slot");
        Self {
            posted: 0,
            ctrl: 0,
            tested: 0,
            consumed: 0,
            release,
        }
    }

    /// The request with sequence number `seq`.
    pub const fn req(seq: u64) -> Req {
        Req {
            seq,
            slot: (seq % N as u64) as usize,
        }
    }

    /// When requests give their slot back.
    pub const fn release(&self) -> Release {
        self.release
    }

    /// Requests posted so far (the next post's sequence number).
    pub const fn posted(&self) -> u64 {
        self.posted
    }

    /// Requests whose control message passed.
    pub const fn ctrl(&self) -> u64 {
        self.ctrl
    }

    /// Requests tested done.
    pub const fn tested(&self) -> u64 {
        self.tested
    }

    /// Requests that gave their slot back.
    pub const fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Slots held (posted and not released).
    pub const fn held(&self) -> usize {
        (self.posted - self.consumed) as usize
    }

    /// Whether a post would be refused.
    pub const fn is_full(&self) -> bool {
        self.held() >= N
    }

    /// Whether every posted request was tested done.
    pub const fn all_tested(&self) -> bool {
        self.tested == self.posted
    }

    /// The request the next [`Self::post`] makes, without making it (a caller that may still
    /// give up on the post looks first).
    pub const fn next_post(&self) -> Result<Req, RingError> {
        if self.is_full() {
            Err(RingError::Full)
        } else {
            Ok(Self::req(self.posted))
        }
    }

    /// Posts the next request: its slot, or [`RingError::Full`] while all `N` are held (a
    /// slot is reused only after its previous request released it).
    pub fn post(&mut self) -> Result<Req, RingError> {
        let r = self.next_post()?;
        self.posted += 1;
        Ok(r)
    }

    /// The oldest request whose control message has not passed yet.
    pub const fn next_ctrl(&self) -> Option<Req> {
        if self.ctrl < self.posted {
            Some(Self::req(self.ctrl))
        } else {
            None
        }
    }

    /// Records that [`Self::next_ctrl`]'s control message passed; returns it (`None`, and no
    /// change, when every posted request's has).
    pub fn pass_ctrl(&mut self) -> Option<Req> {
        let r = self.next_ctrl()?;
        self.ctrl += 1;
        Some(r)
    }

    /// Whether `r`'s control message passed.
    pub const fn ctrl_passed(&self, r: Req) -> bool {
        r.seq < self.ctrl
    }

    /// The request a `test` on `slot` concerns: the oldest untested one, which must be in
    /// `slot`.
    pub const fn testable(&self, slot: usize) -> Result<Req, RingError> {
        if self.tested < self.posted && Self::req(self.tested).slot == slot {
            Ok(Self::req(self.tested))
        } else {
            Err(RingError::NotOldest { slot })
        }
    }

    /// Records that `r` (the oldest untested request, its control message passed) tested
    /// done; with [`Release::AtTest`] its slot is free again.
    pub fn complete(&mut self, r: Req) -> Result<(), RingError> {
        if r.seq != self.tested || !self.ctrl_passed(r) {
            return Err(RingError::NotReady { seq: r.seq });
        }
        self.tested += 1;
        if self.release == Release::AtTest {
            self.consumed = self.tested;
        }
        Ok(())
    }

    /// Releases the oldest tested, unconsumed request, which must be in `slot`
    /// ([`Release::AtConsume`] only: with [`Release::AtTest`] nothing waits to be consumed).
    pub fn consume(&mut self, slot: usize) -> Result<Req, RingError> {
        if self.consumed < self.tested && Self::req(self.consumed).slot == slot {
            let r = Self::req(self.consumed);
            self.consumed += 1;
            Ok(r)
        } else {
            Err(RingError::NotConsumable { slot })
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::VecDeque;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    type Ring = RequestRing<TCPX_REQUESTS>;

    /// Posts, passes the control message of and completes one request.
    fn cycle(r: &mut Ring) -> Req {
        let q = r.post().unwrap();
        assert_eq!(r.pass_ctrl(), Some(q));
        assert_eq!(r.testable(q.slot), Ok(q));
        r.complete(q).unwrap();
        q
    }

    #[test]
    fn the_17th_outstanding_request_is_refused() {
        let mut r = Ring::new(Release::AtTest);
        for k in 0..16u64 {
            assert_eq!(
                r.post(),
                Ok(Req {
                    seq: k,
                    slot: k as usize
                })
            );
        }
        assert!(r.is_full());
        assert_eq!(r.post(), Err(RingError::Full));
        assert_eq!(r.posted(), 16, "a refused post changes nothing");
        assert_eq!(r.held(), 16);
    }

    #[test]
    fn slots_are_k_mod_16_for_ever() {
        let mut r = Ring::new(Release::AtTest);
        for k in 0..100u64 {
            let q = cycle(&mut r);
            assert_eq!(q.seq, k);
            assert_eq!(q.slot, crate::unpack::slot_of(k));
        }
        assert_eq!(Ring::req(u64::MAX).slot, 15);
    }

    #[test]
    fn send_release_frees_the_slot_at_test() {
        let mut r = Ring::new(Release::AtTest);
        for _ in 0..16 {
            r.post().unwrap();
        }
        r.pass_ctrl().unwrap();
        let q = r.testable(0).unwrap();
        r.complete(q).unwrap();
        assert_eq!(r.consumed(), 1);
        assert_eq!(r.post(), Ok(Req { seq: 16, slot: 0 }));
        assert_eq!(r.consume(1), Err(RingError::NotConsumable { slot: 1 }));
    }

    #[test]
    fn unpack_receive_holds_its_slot_until_consumed() {
        let mut r = Ring::new(Release::AtConsume);
        for _ in 0..16 {
            r.post().unwrap();
        }
        for _ in 0..16 {
            r.pass_ctrl().unwrap();
        }
        for k in 0..16 {
            let q = r.testable(k).unwrap();
            r.complete(q).unwrap();
        }
        assert!(r.all_tested());
        // Every request tested, none consumed: slot 0 is still taken.
        assert_eq!(r.post(), Err(RingError::Full));
        assert_eq!(r.consume(0), Ok(Req { seq: 0, slot: 0 }));
        assert_eq!(r.post(), Ok(Req { seq: 16, slot: 0 }));
        assert_eq!(r.post(), Err(RingError::Full));
    }

    #[test]
    fn test_only_on_the_oldest() {
        let mut r = Ring::new(Release::AtTest);
        assert_eq!(r.testable(0), Err(RingError::NotOldest { slot: 0 }));
        r.post().unwrap();
        r.post().unwrap();
        assert_eq!(r.testable(1), Err(RingError::NotOldest { slot: 1 }));
        assert_eq!(r.testable(0), Ok(Req { seq: 0, slot: 0 }));
    }

    #[test]
    fn completion_waits_for_the_control_message_and_order() {
        let mut r = Ring::new(Release::AtTest);
        let a = r.post().unwrap();
        let b = r.post().unwrap();
        assert_eq!(r.complete(a), Err(RingError::NotReady { seq: 0 }));
        assert!(!r.ctrl_passed(a));
        assert_eq!(r.pass_ctrl(), Some(a));
        assert_eq!(r.pass_ctrl(), Some(b));
        assert_eq!(r.pass_ctrl(), None);
        assert_eq!(r.complete(b), Err(RingError::NotReady { seq: 1 }));
        assert_eq!(r.tested(), 0);
        r.complete(a).unwrap();
        assert_eq!(r.complete(a), Err(RingError::NotReady { seq: 0 }));
        r.complete(b).unwrap();
        assert!(r.all_tested());
    }

    #[test]
    fn consume_in_order_and_only_after_test() {
        let mut r = Ring::new(Release::AtConsume);
        let a = r.post().unwrap();
        let b = r.post().unwrap();
        r.pass_ctrl();
        r.pass_ctrl();
        assert_eq!(r.consume(a.slot), Err(RingError::NotConsumable { slot: 0 }));
        r.complete(a).unwrap();
        r.complete(b).unwrap();
        assert_eq!(r.consume(b.slot), Err(RingError::NotConsumable { slot: 1 }));
        assert_eq!(r.consume(a.slot), Ok(a));
        assert_eq!(r.consume(b.slot), Ok(b));
        assert_eq!(r.consume(2), Err(RingError::NotConsumable { slot: 2 }));
        assert_eq!(r.held(), 0);
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Post,
        Ctrl,
        Test(usize),
        Consume(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Post),
            3 => Just(Op::Ctrl),
            3 => (0usize..5).prop_map(Op::Test),
            2 => (0usize..5).prop_map(Op::Consume),
        ]
    }

    proptest! {
        /// Against a model that tracks each request's state: posts get seq = k, slot = k % N,
        /// never a slot still held; every refusal changes nothing; the invariants hold.
        #[test]
        fn matches_a_model(
            ops in proptest::collection::vec(op(), 0..400),
            at_consume in any::<bool>(),
        ) {
            const N: usize = 4;
            let release = if at_consume { Release::AtConsume } else { Release::AtTest };
            let mut r: RequestRing<N> = RequestRing::new(release);
            // (seq, ctrl passed, tested) of every request still holding its slot.
            let mut held: VecDeque<(u64, bool, bool)> = VecDeque::new();
            let mut next = 0u64;
            for op in ops {
                let before = r.clone();
                match op {
                    Op::Post => {
                        let peek = r.next_post();
                        let got = r.post();
                        prop_assert_eq!(peek, got);
                        if held.len() == N {
                            prop_assert_eq!(got, Err(RingError::Full));
                            prop_assert_eq!(&r, &before);
                        } else {
                            let q = got.unwrap();
                            prop_assert_eq!(q, Req { seq: next, slot: next as usize % N });
                            let slots: Vec<usize> =
                                held.iter().map(|h| h.0 as usize % N).collect();
                            prop_assert!(!slots.contains(&q.slot), "slot reused while held");
                            held.push_back((next, false, false));
                            next += 1;
                        }
                    }
                    Op::Ctrl => {
                        let want = held.iter_mut().find(|h| !h.1);
                        match (r.pass_ctrl(), want) {
                            (Some(q), Some(h)) => {
                                prop_assert_eq!(q.seq, h.0);
                                h.1 = true;
                            }
                            (None, None) => {}
                            (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
                        }
                    }
                    Op::Test(slot) => {
                        let oldest = held.iter_mut().find(|h| !h.2);
                        match (r.testable(slot), oldest) {
                            (Ok(q), Some(h)) => {
                                prop_assert_eq!(q.seq, h.0);
                                prop_assert_eq!(q.slot, slot);
                                let res = r.complete(q);
                                if h.1 {
                                    prop_assert_eq!(res, Ok(()));
                                    h.2 = true;
                                } else {
                                    prop_assert_eq!(res, Err(RingError::NotReady { seq: q.seq }));
                                    prop_assert_eq!(&r, &before);
                                }
                            }
                            (Err(e), oldest) => {
                                prop_assert_eq!(e, RingError::NotOldest { slot });
                                prop_assert_eq!(&r, &before);
                                prop_assert!(oldest.is_none_or(|h| h.0 as usize % N != slot));
                            }
                            (Ok(q), None) => prop_assert!(false, "tested {:?} with none untested", q),
                        }
                        if release == Release::AtTest {
                            while held.front().is_some_and(|h| h.2) {
                                held.pop_front();
                            }
                        }
                    }
                    Op::Consume(slot) => {
                        let front = held.front().copied();
                        match r.consume(slot) {
                            Ok(q) => {
                                let h = front.unwrap();
                                prop_assert!(h.2 && release == Release::AtConsume);
                                prop_assert_eq!((q.seq, q.slot), (h.0, slot));
                                held.pop_front();
                            }
                            Err(e) => {
                                prop_assert_eq!(e, RingError::NotConsumable { slot });
                                prop_assert_eq!(&r, &before);
                                prop_assert!(
                                    release == Release::AtTest
                                        || front.is_none_or(|h| !h.2 || h.0 as usize % N != slot)
                                );
                            }
                        }
                    }
                }
                prop_assert!(r.consumed() <= r.tested());
                prop_assert!(r.tested() <= r.ctrl());
                prop_assert!(r.ctrl() <= r.posted());
                prop_assert!(r.held() <= N);
                prop_assert_eq!(r.held(), held.len());
                prop_assert_eq!(r.posted(), next);
            }
        }
    }
}
