//! Where each byte of a bounce receive lands (TCPX mode): in a bounce page, described by a
//! `LoadMeta` entry of the request's slot, or straight in the posted buffer ("linear bytes":
//! TCPX's header-split misses, which have no entry). Pure arithmetic, so every layout rule is
//! checked here without sockets.

use tcpx_core::unpack::{LoadMeta, ENTRIES_PER_SLOT, MAX_RECV_BYTES, PAGE_SIZE};

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
        let len = self.shape.linear_bytes.min(self.size);
        ((self.size - len) / 2, len)
    }

    /// The fragments, in request order.
    pub(crate) fn frags(&self) -> Frags {
        Frags {
            size: self.size,
            linear: self.linear(),
            odd: self.shape.odd,
            // Never zero: xorshift would stay at zero.
            rng: self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            pos: 0,
            page: 0,
            off: PAGE_SIZE,
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
    size: usize,
    linear: (usize, usize),
    odd: bool,
    rng: u64,
    /// Next request byte to place.
    pos: usize,
    /// Current page and its next free byte (`PAGE_SIZE`: the page is closed).
    page: usize,
    off: usize,
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
        self.off = if self.odd {
            1 + 2 * self.rnd(MAX_ODD_START / 2 + 1)
        } else {
            0
        };
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
        let (lin_start, lin_len) = self.linear;
        if lin_len > 0 && self.pos == lin_start {
            self.pos += lin_len;
        }
        if self.pos >= self.size {
            return None;
        }
        // A fragment never covers linear bytes: it ends where they start.
        let seg_end = if lin_len > 0 && self.pos < lin_start {
            lin_start
        } else {
            self.size
        };
        if !self.opened || self.off >= PAGE_SIZE {
            self.open_page();
        }
        let room = PAGE_SIZE - self.off;
        let want = if !self.odd {
            room
        } else if self.split() && self.in_page == 0 {
            1 + self.rnd(MAX_ODD_SPLIT)
        } else {
            room - self.rnd(MAX_ODD_TAIL + 1)
        };
        let len = want.min(seg_end - self.pos);
        let f = Frag {
            page: self.page,
            off: self.off,
            len,
            dst_off: self.pos,
        };
        self.pos += len;
        self.off += len;
        self.in_page += 1;
        if self.odd {
            if self.split() && self.in_page == 1 {
                self.off += self.rnd(MAX_ODD_GAP + 1);
            } else {
                self.off = PAGE_SIZE;
            }
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

/// The pieces of request bytes `from..to` of a receive whose fragments are `frags` (in request
/// order, not overlapping): bytes no fragment covers are linear bytes.
pub(crate) fn pieces(frags: &[LoadMeta], from: usize, to: usize) -> Pieces<'_> {
    let i = frags.partition_point(|f| f.dst_off as usize + f.len as usize <= from);
    Pieces {
        frags,
        i,
        pos: from,
        end: to,
    }
}

/// See [`pieces`].
pub(crate) struct Pieces<'a> {
    frags: &'a [LoadMeta],
    i: usize,
    pos: usize,
    end: usize,
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.pos >= self.end {
            return None;
        }
        let at = self.pos;
        let p = match self.frags.get(self.i) {
            Some(f) if f.dst_off as usize <= at => {
                let fend = f.dst_off as usize + f.len as usize;
                let len = fend.min(self.end) - at;
                if at + len == fend {
                    self.i += 1;
                }
                Piece {
                    at,
                    len,
                    dest: Dest::Bounce(f.src_off as usize + (at - f.dst_off as usize)),
                }
            }
            next => Piece {
                at,
                len: next.map_or(self.end, |f| (f.dst_off as usize).min(self.end)) - at,
                dest: Dest::Linear,
            },
        };
        self.pos += p.len;
        Some(p)
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
}
