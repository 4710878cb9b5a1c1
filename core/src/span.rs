//! Byte ranges of an address space, checked once: the one type for "these bytes, and is that
//! range inside them".
//!
//! A [`Span`] never wraps around the address space (its constructor refuses that), so its end
//! is always representable and every question about a sub-range is answered without
//! overflow, whatever the caller passes (a peer's addresses, a caller's offsets).

/// The bytes `[base, base + len)`, with `base + len` not overflowing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    base: u64,
    len: u64,
}

impl Span {
    /// The span of `len` bytes at `base`, or `None` when it would wrap around.
    pub const fn new(base: u64, len: u64) -> Option<Span> {
        match base.checked_add(len) {
            Some(_) => Some(Span { base, len }),
            None => None,
        }
    }

    /// The offsets `[0, len)` of a buffer of `len` bytes (never wraps).
    pub const fn from_len(len: u64) -> Span {
        Span { base: 0, len }
    }

    /// First byte.
    pub const fn base(self) -> u64 {
        self.base
    }

    /// Length in bytes.
    pub const fn len(self) -> u64 {
        self.len
    }

    /// Whether it holds no byte.
    pub const fn is_empty(self) -> bool {
        self.len == 0
    }

    /// One past the last byte.
    pub const fn end(self) -> u64 {
        // Cannot overflow: checked at construction.
        self.base + self.len
    }

    /// Where `[addr, addr + len)` starts inside this span, if it lies wholly inside (an empty
    /// range at the end counts as inside).
    pub const fn offset_of(self, addr: u64, len: u64) -> Option<u64> {
        match addr.checked_add(len) {
            Some(end) if addr >= self.base && end <= self.end() => Some(addr - self.base),
            _ => None,
        }
    }

    /// Whether `[addr, addr + len)` lies wholly inside this span.
    pub const fn contains(self, addr: u64, len: u64) -> bool {
        self.offset_of(addr, len).is_some()
    }

    /// The `len` bytes at `offset` from the start, if they lie wholly inside this span.
    pub const fn sub(self, offset: u64, len: u64) -> Option<Span> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Some(Span {
                base: self.base + offset,
                len,
            }),
            _ => None,
        }
    }

    /// The first `n` bytes and the rest, if `n` is at most the length.
    pub const fn split_at(self, n: u64) -> Option<(Span, Span)> {
        if n > self.len {
            return None;
        }
        Some((
            Span {
                base: self.base,
                len: n,
            },
            Span {
                base: self.base + n,
                len: self.len - n,
            },
        ))
    }

    /// The bytes both spans hold, if they overlap or touch (spans that only touch share the
    /// empty span where they meet).
    pub const fn intersect(self, other: Span) -> Option<Span> {
        let base = if self.base > other.base {
            self.base
        } else {
            other.base
        };
        let end = if self.end() < other.end() {
            self.end()
        } else {
            other.end()
        };
        if base > end {
            return None;
        }
        Some(Span {
            base,
            len: end - base,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_refuses_wrapping() {
        assert!(Span::new(u64::MAX, 1).is_none());
        assert!(Span::new(1, u64::MAX).is_none());
        let s = Span::new(u64::MAX, 0).unwrap();
        assert_eq!(s.end(), u64::MAX);
        assert!(s.is_empty());
        assert_eq!(Span::new(u64::MAX - 5, 5).unwrap().end(), u64::MAX);
    }

    #[test]
    fn ranges_inside_and_outside() {
        let s = Span::new(100, 50).unwrap();
        assert_eq!(s.offset_of(100, 50), Some(0));
        assert_eq!(s.offset_of(120, 10), Some(20));
        assert_eq!(
            s.offset_of(150, 0),
            Some(50),
            "an empty range at the end is inside"
        );
        assert_eq!(s.offset_of(99, 1), None, "starts before");
        assert_eq!(s.offset_of(149, 2), None, "ends after");
        assert_eq!(s.offset_of(u64::MAX, 1), None, "wraps");
        assert_eq!(s.offset_of(120, u64::MAX), None, "wraps");
        assert!(s.contains(149, 1) && !s.contains(150, 1));
    }

    #[test]
    fn sub_ranges_are_checked_against_the_length() {
        let s = Span::new(1 << 40, 4096).unwrap();
        let sub = s.sub(1024, 2048).unwrap();
        assert_eq!(
            (sub.base(), sub.len(), sub.end()),
            ((1 << 40) + 1024, 2048, (1 << 40) + 3072)
        );
        assert_eq!(s.sub(4096, 0).map(Span::len), Some(0));
        assert!(s.sub(4096, 1).is_none());
        assert!(s.sub(1, 4096).is_none());
        assert!(s.sub(u64::MAX, 2).is_none(), "offset + len wraps");
        assert!(s.contains(sub.base(), sub.len()));
    }

    #[test]
    fn from_len_is_the_offsets_of_a_buffer() {
        let s = Span::from_len(u64::MAX);
        assert_eq!((s.base(), s.len(), s.end()), (0, u64::MAX, u64::MAX));
        assert!(Span::from_len(0).is_empty());
        assert_eq!(Span::from_len(10).sub(4, 6).map(Span::end), Some(10));
    }

    #[test]
    fn split_at_checks_the_length() {
        let s = Span::new(100, 50).unwrap();
        let (a, b) = s.split_at(20).unwrap();
        assert_eq!((a.base(), a.len(), b.base(), b.len()), (100, 20, 120, 30));
        let (a, b) = s.split_at(50).unwrap();
        assert_eq!(
            (a, b.base(), b.len()),
            (s, 150, 0),
            "the whole span: nothing left"
        );
        assert_eq!(s.split_at(0).map(|(a, _)| a.len()), Some(0));
        assert!(s.split_at(51).is_none());
        assert!(s.split_at(u64::MAX).is_none());
        let top = Span::new(u64::MAX - 4, 4).unwrap();
        assert_eq!(top.split_at(4).map(|(_, b)| b.base()), Some(u64::MAX));
    }

    #[test]
    fn intersect_is_the_shared_bytes() {
        let s = Span::new(100, 50).unwrap();
        let t = Span::new(120, 100).unwrap();
        let i = s.intersect(t).unwrap();
        assert_eq!((i.base(), i.len()), (120, 30));
        assert_eq!(t.intersect(s), Some(i), "symmetric");
        assert_eq!(
            s.intersect(Span::new(110, 5).unwrap()).map(Span::len),
            Some(5)
        );
        let touch = s.intersect(Span::new(150, 7).unwrap()).unwrap();
        assert_eq!((touch.base(), touch.len()), (150, 0), "touching: empty");
        assert!(
            s.intersect(Span::new(151, 7).unwrap()).is_none(),
            "disjoint"
        );
        assert!(s.intersect(Span::new(0, 99).unwrap()).is_none(), "disjoint");
        let top = Span::new(u64::MAX - 8, 8).unwrap();
        assert_eq!(
            top.intersect(Span::from_len(u64::MAX)),
            Some(top),
            "ends at the top of the address space"
        );
    }
}
