//! Generational ids: the one id type for anything kept in a table of reusable slots.
//!
//! An id is the slot's index plus the generation of the occupant it was issued for. Freeing
//! a slot and reusing it bumps the generation, so an id kept past its occupant's end no
//! longer matches and is told apart from the new occupant's, with no hashing and no heap.
//! `K` is a marker naming what the id is for (a region, a transfer): ids of different kinds
//! do not mix.

use core::fmt;
use core::hash::{Hash, Hasher};
use core::marker::PhantomData;

/// The id of one occupant of slot `index`: valid while the slot's generation is `gen`.
pub struct GenId<K> {
    index: u32,
    gen: u32,
    kind: PhantomData<fn() -> K>,
}

impl<K> GenId<K> {
    /// The id of slot `index`'s occupant of generation `gen`.
    pub const fn new(index: u32, gen: u32) -> Self {
        GenId {
            index,
            gen,
            kind: PhantomData,
        }
    }

    /// The slot.
    pub const fn index(self) -> u32 {
        self.index
    }

    /// The generation of the occupant the id names.
    pub const fn gen(self) -> u32 {
        self.gen
    }

    /// One integer for C callers and wire fields: generation in the high half, index in the
    /// low half.
    pub const fn to_raw(self) -> u64 {
        ((self.gen as u64) << 32) | self.index as u64
    }

    /// Inverse of [`GenId::to_raw`].
    pub const fn from_raw(raw: u64) -> Self {
        GenId::new(raw as u32, (raw >> 32) as u32)
    }
}

/// A slot that hands out [`GenId`]s: its generation moves on at every new occupant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generation(u32);

impl Generation {
    /// Moves to the next generation (wrapping) for a new occupant of the slot; returns the
    /// occupant's id.
    pub fn next<K>(&mut self, index: u32) -> GenId<K> {
        self.0 = self.0.wrapping_add(1);
        GenId::new(index, self.0)
    }

    /// The id of the slot's current occupant.
    pub const fn id<K>(self, index: u32) -> GenId<K> {
        GenId::new(index, self.0)
    }

    /// Whether `id` names this slot's current occupant (its index is the caller's to check).
    pub const fn issued<K>(self, id: GenId<K>) -> bool {
        self.0 == id.gen
    }
}

// By hand: derives would ask `K: Clone` (and so on) of a marker that is never stored.
impl<K> Clone for GenId<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for GenId<K> {}

impl<K> PartialEq for GenId<K> {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.gen == other.gen
    }
}

impl<K> Eq for GenId<K> {}

impl<K> Hash for GenId<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.index.hash(state);
        self.gen.hash(state);
    }
}

impl<K> fmt::Debug for GenId<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = core::any::type_name::<K>();
        let kind = kind.rsplit("::").next().unwrap_or(kind);
        write!(f, "{kind}#{}.{}", self.index, self.gen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum A {}
    enum B {}

    #[test]
    fn raw_round_trip_keeps_index_and_generation() {
        for (i, g) in [
            (0, 0),
            (1, 0),
            (0, 1),
            (u32::MAX, u32::MAX),
            (7, 0x8000_0000),
        ] {
            let id = GenId::<A>::new(i, g);
            assert_eq!(id.to_raw(), (u64::from(g) << 32) | u64::from(i));
            let back = GenId::<A>::from_raw(id.to_raw());
            assert_eq!((back.index(), back.gen()), (i, g));
            assert_eq!(back, id);
        }
    }

    #[test]
    fn a_reused_slot_issues_an_id_the_old_one_does_not_match() {
        let mut slot = Generation::default();
        let first: GenId<A> = slot.next(3);
        assert!(slot.issued(first));
        assert_eq!(slot.id::<A>(3), first);
        let second: GenId<A> = slot.next(3);
        assert_ne!(first, second);
        assert_eq!(first.index(), second.index());
        assert!(!slot.issued(first));
        assert!(slot.issued(second));
    }

    #[test]
    fn the_generation_wraps() {
        let mut slot = Generation(u32::MAX);
        let id: GenId<B> = slot.next(0);
        assert_eq!(id.gen(), 0);
        assert!(slot.issued(id));
    }

    #[test]
    fn debug_names_the_kind() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{:?}", GenId::<A>::new(4, 2)), "A#4.2");
    }
}
