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
}
