//! Where each byte of a bounce receive lands (TCPX mode): in a bounce page, described by a
//! `LoadMeta` entry of the request's slot, or straight in the posted buffer ("linear bytes":
//! TCPX's header-split misses, which have no entry). Pure arithmetic, so every layout rule is
//! checked here without sockets. Request bytes, page bytes and bounce bytes are [`Span`]s, so
//! no range here is computed by hand.

use tcpx_core::span::Span;
use tcpx_core::unpack::{LoadMeta, ENTRIES_PER_SLOT, MAX_RECV_BYTES, PAGE_SIZE};

use crate::error::{Error, Result};

/// The bytes of one bounce page, by offset.
const PAGE: Span = Span::from_len(PAGE_SIZE as u64);

/// Largest in-page offset of the first fragment of a page, odd layouts.
const MAX_ODD_START: usize = 63;
/// Largest gap between the two fragments of a split page.
const MAX_ODD_GAP: usize = 15;
/// Largest unused tail of a page.
const MAX_ODD_TAIL: usize = 31;
/// Longest first fragment of a split page.
const MAX_ODD_SPLIT: usize = 2047;
/// Bytes every page of an odd layout carries, except the one the linear span cuts and the last.
const MIN_ODD_PAGE_BYTES: usize = PAGE_SIZE - MAX_ODD_START - MAX_ODD_GAP - MAX_ODD_TAIL;
/// Most pages one receive takes (odd layouts; whole-page layouts take at most 1024).
pub(crate) const MAX_PAGES_PER_REQ: usize = MAX_RECV_BYTES / MIN_ODD_PAGE_BYTES + 2;

// Three pages in four hold two fragments, the rest one, and the linear span may cut one more:
// the slot's 2048 entries always suffice.
const _: () = assert!(MAX_PAGES_PER_REQ + (3 * MAX_PAGES_PER_REQ).div_ceil(4) < ENTRIES_PER_SLOT);
// A split page's second fragment always has room for its tail.
const _: () = assert!(PAGE_SIZE - MAX_ODD_START - MAX_ODD_SPLIT - MAX_ODD_GAP > MAX_ODD_TAIL);

/// How a comm lays out its bounce receives (`Config::odd_fragments`, `Config::linear_bytes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Odd lengths at odd offsets, instead of one whole page per fragment.
    pub odd: bool,
    /// Bytes per receive written straight into the posted buffer.
    pub linear_bytes: usize,
}

/// One fragment: request bytes `dst_off..dst_off+len` at byte `off` of the request's `page`-th
/// page (pages are numbered within the request; the pool decides which bounce page each is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frag {
    pub page: usize,
    pub off: usize,
    pub len: usize,
    pub dst_off: usize,
}

/// The layout of one receive of `size` bytes; the same inputs give the same layout.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    size: usize,
    shape: Shape,
    seed: u64,
}

impl Layout {
    pub(crate) fn new(size: usize, shape: Shape, seed: u64) -> Self {
        Layout { size, shape, seed }
    }

    /// The linear bytes: `(start, len)`, a span in the middle of the request.
    pub(crate) fn linear(&self) -> (usize, usize) {
        let s = self.linear_span();
        (s.base() as usize, s.len() as usize)
    }

    /// The linear bytes, a span in the middle of the request.
    fn linear_span(&self) -> Span {
        let request = Span::from_len(self.size as u64);
        let len = self.shape.linear_bytes.min(self.size) as u64;
        // Inside the request: `(size - len) / 2 + len <= size`.
        request
            .sub((request.len() - len) / 2, len)
            .unwrap_or_default()
    }

    /// The fragments, in request order.
    pub(crate) fn frags(&self) -> Frags {
        Frags {
            rest: Span::from_len(self.size as u64),
            linear: self.linear_span(),
            odd: self.shape.odd,
            // Never zero: xorshift would stay at zero.
            rng: self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            page: 0,
            room: Span::default(),
            opened: false,
            in_page: 0,
        }
    }

    /// Pages the fragments take.
    pub(crate) fn pages(&self) -> usize {
        self.frags().last().map_or(0, |f| f.page + 1)
    }
}

/// The fragments of a [`Layout`]. Whole-page layouts fill each page from its start; odd ones
/// start a page at an odd offset and either fill it with one fragment up to a short tail or
/// (three pages in four) split it into a short and a long fragment with a gap between.
pub(crate) struct Frags {
    /// Request bytes still to place.
    rest: Span,
    /// The linear bytes (empty: none).
    linear: Span,
    odd: bool,
    rng: u64,
    /// Current page and its bytes still free (empty: the page is closed).
    page: usize,
    room: Span,
    opened: bool,
    /// Fragments placed in the current page.
    in_page: u8,
}

impl Frags {
    /// A deterministic number in `0..n`.
    fn rnd(&mut self, n: usize) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % n as u64) as usize
    }

    fn open_page(&mut self) {
        if self.opened {
            self.page += 1;
        }
        self.opened = true;
        self.in_page = 0;
        let start = if self.odd {
            1 + 2 * self.rnd(MAX_ODD_START / 2 + 1)
        } else {
            0
        };
        self.room = PAGE
            .split_at(start as u64)
            .map_or(Span::default(), |(_, room)| room);
    }

    /// Whether the current page holds two fragments (odd layouts, three pages in four, which
    /// bounds the entries).
    fn split(&self) -> bool {
        self.odd && self.page % 4 != 0
    }
}

impl Iterator for Frags {
    type Item = Frag;

    fn next(&mut self) -> Option<Frag> {
        if !self.linear.is_empty() && self.rest.base() == self.linear.base() {
            self.rest = self.rest.split_at(self.linear.len())?.1;
        }
        if self.rest.is_empty() {
            return None;
        }
        // A fragment never covers linear bytes: it ends where they start.
        let seg = if !self.linear.is_empty() && self.rest.base() < self.linear.base() {
            self.rest.intersect(Span::from_len(self.linear.base()))?
        } else {
            self.rest
        };
        if !self.opened || self.room.is_empty() {
            self.open_page();
        }
        let room = self.room.len() as usize;
        let want = if !self.odd {
            room
        } else if self.split() && self.in_page == 0 {
            1 + self.rnd(MAX_ODD_SPLIT)
        } else {
            room.saturating_sub(self.rnd(MAX_ODD_TAIL + 1))
        };
        let len = want.min(seg.len() as usize) as u64;
        let (dst, rest) = self.rest.split_at(len)?;
        let (at, room) = self.room.split_at(len)?;
        let f = Frag {
            page: self.page,
            off: at.base() as usize,
            len: len as usize,
            dst_off: dst.base() as usize,
        };
        self.rest = rest;
        self.room = room;
        self.in_page += 1;
        if self.odd {
            self.room = if self.split() && self.in_page == 1 {
                let gap = self.rnd(MAX_ODD_GAP + 1) as u64;
                room.split_at(gap).map_or(Span::default(), |(_, r)| r)
            } else {
                Span::default()
            };
        }
        Some(f)
    }
}

/// Where a run of request bytes goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// The bounce region, from this offset on.
    Bounce(usize),
    /// The posted buffer, at the run's own request position (linear bytes).
    Linear,
}

/// A run of request bytes `at..at+len` with one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub at: usize,
    pub len: usize,
    pub dest: Dest,
}

/// The pieces of request bytes `from..to` (none when `to` is before `from`) of a receive whose
/// fragments are `frags` (in request order, not overlapping): bytes no fragment covers are
/// linear bytes.
pub(crate) fn pieces(frags: &[LoadMeta], from: usize, to: usize) -> Pieces<'_> {
    let from = from as u64;
    let i = frags.partition_point(|f| entry(f).is_some_and(|(dst, _)| dst.end() <= from));
    Pieces {
        frags,
        i,
        // `from + (to - from)` is `to`: never wraps.
        rest: Span::new(from, (to as u64).saturating_sub(from)).unwrap_or_default(),
    }
}

/// An entry's request bytes and bounce bytes; `None` when either wraps.
fn entry(f: &LoadMeta) -> Option<(Span, Span)> {
    let len = u64::from(f.len);
    Some((
        Span::new(f.dst_off, len)?,
        Span::new(u64::from(f.src_off), len)?,
    ))
}

/// See [`pieces`].
pub(crate) struct Pieces<'a> {
    frags: &'a [LoadMeta],
    i: usize,
    /// Request bytes still to place.
    rest: Span,
}

impl Pieces<'_> {
    /// The next piece; an error at an entry whose bytes wrap or that lies before the bytes
    /// still to place (entries out of order), after which there are no more pieces.
    pub(crate) fn try_next(&mut self) -> Result<Option<Piece>> {
        match self.step() {
            Ok(p) => Ok(p),
            Err(e) => {
                self.rest = Span::default();
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<Piece>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let at = self.rest.base();
        let (piece, dest) = match self.frags.get(self.i) {
            Some(f) if f.dst_off <= at => {
                let (dst, src) = entry(f).ok_or(Error::Internal("fragment entry wraps"))?;
                // The entry's bytes from `at` on, as far as the range goes.
                let piece = dst
                    .intersect(self.rest)
                    .ok_or(Error::Internal("fragment entries out of order"))?;
                if piece.end() == dst.end() {
                    self.i += 1;
                }
                // The same bytes of the entry's bounce bytes.
                let offset = dst
                    .offset_of(piece.base(), piece.len())
                    .ok_or(Error::Internal("fragment entries out of order"))?;
                let bounce = src
                    .sub(offset, piece.len())
                    .ok_or(Error::Internal("fragment entry wraps"))?;
                (piece, Dest::Bounce(bounce.base() as usize))
            }
            // Up to the next entry, or to the end of the range.
            next => {
                let before = next.map_or(self.rest, |f| Span::from_len(f.dst_off));
                let piece = self
                    .rest
                    .intersect(before)
                    .ok_or(Error::Internal("fragment entries out of order"))?;
                (piece, Dest::Linear)
            }
        };
        self.rest = self
            .rest
            .split_at(piece.len())
            .ok_or(Error::Internal("fragment entries out of order"))?
            .1;
        Ok(Some(Piece {
            at: at as usize,
            len: piece.len() as usize,
            dest,
        }))
    }
}

/// For tests only: the data path takes pieces with [`Pieces::try_next`], so that a refused
/// entry fails the request instead of ending its pieces early.
#[cfg(test)]
impl Iterator for Pieces<'_> {
    type Item = Piece;

    /// The next piece; the pieces end early at an entry [`Pieces::try_next`] refuses.
    fn next(&mut self) -> Option<Piece> {
        self.try_next().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a receive on pages `0, 1, 2, …` of the bounce region, as entries.
    fn entries(l: &Layout) -> Vec<LoadMeta> {
        l.frags()
            .map(|f| LoadMeta {
                src_off: (f.page * PAGE_SIZE + f.off) as u32,
                len: f.len as u32,
                dst_off: f.dst_off as u64,
            })
            .collect()
    }

    fn check(size: usize, shape: Shape, seed: u64) -> Vec<LoadMeta> {
        let l = Layout::new(size, shape, seed);
        let (lin, lin_len) = l.linear();
        assert!(lin + lin_len <= size);
        let frags: Vec<Frag> = l.frags().collect();
        assert!(
            frags.len() <= ENTRIES_PER_SLOT,
            "{size}: {} entries",
            frags.len()
        );
        assert!(
            l.pages() <= MAX_PAGES_PER_REQ,
            "{size}: {} pages",
            l.pages()
        );
        if !shape.odd && size <= MAX_RECV_BYTES {
            assert!(l.pages() <= MAX_RECV_BYTES / PAGE_SIZE);
        }
        // Every byte outside the linear span is covered once, in order; no two fragments
        // share a byte of a page.
        let mut pos = 0;
        let mut used: Vec<(usize, usize, usize)> = Vec::new();
        for f in &frags {
            if pos == lin && lin_len > 0 {
                pos += lin_len;
            }
            assert_eq!(f.dst_off, pos, "{size}: fragments tile the request");
            assert!(f.len >= 1 && f.off + f.len <= PAGE_SIZE, "{f:?}");
            assert!(
                lin_len == 0 || f.dst_off + f.len <= lin || f.dst_off >= lin + lin_len,
                "{f:?} covers linear bytes"
            );
            for &(p, o, n) in used.iter().filter(|u| u.0 == f.page) {
                assert!(
                    f.off >= o + n || f.off + f.len <= o,
                    "{f:?} overlaps page {p}"
                );
            }
            used.push((f.page, f.off, f.len));
            pos += f.len;
        }
        if pos == lin && lin_len > 0 {
            pos += lin_len;
        }
        assert_eq!(pos, size, "every byte placed");
        entries(&l)
    }

    #[test]
    fn whole_page_layout_is_one_entry_per_page() {
        let e = check(3 * PAGE_SIZE + 5, Shape::default(), 1);
        let want: Vec<(u32, u32, u64)> = vec![
            (0, 4096, 0),
            (4096, 4096, 4096),
            (8192, 4096, 8192),
            (12288, 5, 12288),
        ];
        let got: Vec<(u32, u32, u64)> = e.iter().map(|m| (m.src_off, m.len, m.dst_off)).collect();
        assert_eq!(got, want);
        assert!(check(0, Shape::default(), 1).is_empty());
    }

    #[test]
    fn layouts_stay_within_slot_and_pool_bounds() {
        let mut seed = 3u64;
        let mut sizes = vec![
            0,
            1,
            4095,
            4096,
            4097,
            1 << 20,
            MAX_RECV_BYTES - 1,
            MAX_RECV_BYTES,
        ];
        for _ in 0..40 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            sizes.push((seed % MAX_RECV_BYTES as u64) as usize + 1);
        }
        let shapes = [
            Shape::default(),
            Shape {
                odd: true,
                linear_bytes: 0,
            },
            Shape {
                odd: false,
                linear_bytes: 1,
            },
            Shape {
                odd: false,
                linear_bytes: 12_345,
            },
            Shape {
                odd: true,
                linear_bytes: 4097,
            },
            Shape {
                odd: true,
                linear_bytes: MAX_RECV_BYTES,
            },
        ];
        let (mut odd_src, mut odd_len, mut short) = (false, false, false);
        for (k, &size) in sizes.iter().enumerate() {
            for shape in shapes {
                for e in check(size, shape, k as u64) {
                    if shape.odd {
                        odd_src |= e.src_off % 2 == 1;
                        odd_len |= e.len % 2 == 1 && (e.dst_off + e.len as u64) < size as u64;
                        short |= e.len < 64 && (e.dst_off + e.len as u64) < size as u64;
                    }
                }
            }
        }
        assert!(
            odd_src && odd_len && short,
            "odd layouts have odd offsets and lengths"
        );
    }

    #[test]
    fn pieces_cover_a_range_once_with_linear_gaps() {
        for shape in [
            Shape::default(),
            Shape {
                odd: true,
                linear_bytes: 10_001,
            },
            Shape {
                odd: false,
                linear_bytes: 3,
            },
        ] {
            let size = 100_003;
            let l = Layout::new(size, shape, 9);
            let e = entries(&l);
            let (lin, lin_len) = l.linear();
            // Where each request byte goes, from the entries: Some(bounce offset) or linear.
            let mut want = vec![None; size];
            for m in &e {
                for i in 0..m.len as usize {
                    want[m.dst_off as usize + i] = Some(m.src_off as usize + i);
                }
            }
            assert_eq!(want.iter().filter(|w| w.is_none()).count(), lin_len);
            for (from, to) in [
                (0, size),
                (1, 4097),
                (lin, lin + lin_len),
                (size - 1, size),
                (7, 7),
            ] {
                let mut pos = from;
                for p in pieces(&e, from, to) {
                    assert_eq!(p.at, pos);
                    assert!(p.len > 0);
                    for i in 0..p.len {
                        let got = match p.dest {
                            Dest::Bounce(o) => Some(o + i),
                            Dest::Linear => None,
                        };
                        assert_eq!(got, want[p.at + i], "byte {}", p.at + i);
                    }
                    pos += p.len;
                }
                assert_eq!(pos, to.max(from));
            }
        }
    }

    fn meta(src_off: u32, len: u32, dst_off: u64) -> LoadMeta {
        LoadMeta {
            src_off,
            len,
            dst_off,
        }
    }

    fn all(p: &mut Pieces<'_>) -> Result<Vec<Piece>> {
        let mut v = Vec::new();
        while let Some(x) = p.try_next()? {
            v.push(x);
        }
        Ok(v)
    }

    #[test]
    fn pieces_refuse_wrapping_and_out_of_order_entries() {
        // An entry whose request bytes wrap: refused, and the pieces end there.
        let e = [meta(0, 10, 0), meta(100, 8, u64::MAX - 3)];
        let mut p = pieces(&e, 0, usize::MAX);
        assert_eq!(
            p.try_next(),
            Ok(Some(Piece {
                at: 0,
                len: 10,
                dest: Dest::Bounce(0)
            }))
        );
        assert_eq!(
            p.try_next(),
            Ok(Some(Piece {
                at: 10,
                len: (u64::MAX - 3 - 10) as usize,
                dest: Dest::Linear
            }))
        );
        assert_eq!(p.try_next(), Err(Error::Internal("fragment entry wraps")));
        assert_eq!(p.try_next(), Ok(None), "nothing after an error");
        assert_eq!(pieces(&e, 0, usize::MAX).count(), 2, "`next` ends early");

        // Entries out of order: the second lies before bytes already placed.
        let e = [meta(0, 10, 0), meta(4096, 4, 5)];
        assert_eq!(
            all(&mut pieces(&e, 0, 20)),
            Err(Error::Internal("fragment entries out of order"))
        );
    }

    #[test]
    fn pieces_accept_entries_up_to_the_boundaries() {
        // An entry ending exactly at the top of the request space.
        let top = u64::MAX - 8;
        let e = [meta(u32::MAX - 8, 8, top)];
        let got = all(&mut pieces(&e, top as usize, usize::MAX)).unwrap();
        assert_eq!(
            got,
            [Piece {
                at: top as usize,
                len: 8,
                dest: Dest::Bounce(u32::MAX as usize - 8)
            }]
        );
        // A range ending inside an entry, then one starting inside it.
        let e = [meta(4096, 100, 0), meta(0, 50, 150)];
        let got = all(&mut pieces(&e, 0, 60)).unwrap();
        assert_eq!(
            got,
            [Piece {
                at: 0,
                len: 60,
                dest: Dest::Bounce(4096)
            }]
        );
        let got = all(&mut pieces(&e, 60, 200)).unwrap();
        assert_eq!(
            got,
            [
                Piece {
                    at: 60,
                    len: 40,
                    dest: Dest::Bounce(4156)
                },
                Piece {
                    at: 100,
                    len: 50,
                    dest: Dest::Linear
                },
                Piece {
                    at: 150,
                    len: 50,
                    dest: Dest::Bounce(0)
                },
            ]
        );
        assert!(
            all(&mut pieces(&e, 9, 3)).unwrap().is_empty(),
            "`to` before `from`"
        );
        assert!(all(&mut pieces(&e, 200, 200)).unwrap().is_empty());
    }
}
