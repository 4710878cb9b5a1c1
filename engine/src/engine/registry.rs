//! Registered memory: regions named by [`MemId`], each registered on every comm.
//!
//! A region is registered once per channel on both the send and the receive comm, because
//! ncclNet memory handles belong to one comm. Chunks hold a count on their region so a
//! region with bytes in flight cannot be deregistered underneath the plugin.

use tcpx_core::id::{GenId, Generation};
use tcpx_core::mem::MemKind;

use crate::error::{Error, Result};
use crate::net::MemReg;

/// Marker of region ids ([`MemId`]).
#[derive(Debug)]
pub enum Mem {}

/// A registered region, valid until `deregister`. Stale ids are detected (generation);
/// `to_raw`/`from_raw` give the single integer C callers hold.
pub type MemId = GenId<Mem>;

/// Where a region lives: its memory kind ([`MemKind`]) plus, for device memory, the CUDA
/// device it is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Memory {
    /// Host memory.
    Host,
    /// Device memory of CUDA device `device`.
    Cuda { device: i32 },
}

impl Memory {
    /// The memory kind, without the device.
    pub const fn kind(&self) -> MemKind {
        match self {
            Memory::Host => MemKind::Host,
            Memory::Cuda { .. } => MemKind::Device,
        }
    }
}

/// How a region is registered with the plugin: one or more windows of one plugin
/// registration each. TCPX registers CUDA memory only from a 4 KiB-aligned address, so the
/// first window starts at the aligned address below the region (the region's own bounds stay
/// the caller's); a v7 plugin takes an `int` size, so a region larger than that is covered by
/// windows of at most `max` bytes that overlap by [`Windows::OVERLAP`], at least the largest
/// chunk: every chunk then lies whole inside the window [`Windows::of`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Address of the first window.
    pub base: u64,
    /// Bytes from `base` to the region's end.
    pub len: u64,
    /// Distance between window starts (a multiple of the alignment); `len` when one window.
    pub step: u64,
    /// Bytes per window but the last, which ends with the region.
    pub size: u64,
    pub count: usize,
}

impl Windows {
    /// Overlap of neighbouring windows: the largest chunk (one ncclNet request, 4 MiB).
    pub const OVERLAP: u64 = tcpx_core::unpack::MAX_RECV_BYTES as u64;

    /// Windows over `[ptr, ptr + len)` starting at `ptr` rounded down to `align` (a power of
    /// two), each at most `max` bytes.
    pub fn plan(ptr: u64, len: u64, align: u64, max: u64) -> Windows {
        let base = ptr & !(align - 1);
        let len = len + (ptr - base);
        if len <= max {
            return Windows {
                base,
                len,
                step: len,
                size: len,
                count: 1,
            };
        }
        // Starts stay aligned: the window size and the step are multiples of the alignment.
        let size = max & !(align - 1);
        debug_assert!(size > Self::OVERLAP && Self::OVERLAP % align == 0);
        let step = size - Self::OVERLAP;
        let count = (len - size).div_ceil(step) as usize + 1;
        Windows {
            base,
            len,
            step,
            size,
            count,
        }
    }

    /// Start and length of window `i`.
    pub fn span(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.step;
        (self.base + start, self.size.min(self.len - start))
    }

    /// The window holding a chunk that starts at address `addr` and is at most
    /// [`Windows::OVERLAP`] bytes long.
    #[inline]
    pub fn of(&self, addr: u64) -> usize {
        if self.count == 1 {
            return 0;
        }
        (((addr - self.base) / self.step) as usize).min(self.count - 1)
    }
}

pub(crate) struct Region {
    pub base: *mut u8,
    pub len: u64,
    pub memory: Memory,
    pub windows: Windows,
    /// (send comm registration, recv comm registration) of window `w` on channel `c` at
    /// `c * windows.count + w`.
    pub regs: Vec<(MemReg, MemReg)>,
    /// Chunks posted on this region and not yet retired.
    pub in_flight: u64,
}

impl Region {
    /// The registrations (send, recv) on channel `c` that hold the chunk starting at `addr`.
    #[inline]
    pub fn regs_for(&self, c: usize, addr: u64) -> &(MemReg, MemReg) {
        &self.regs[c * self.windows.count + self.windows.of(addr)]
    }
}

// SAFETY: `base` is an address the caller promised stays valid while registered; the
// region is only touched by the session that owns it, on whichever thread holds it.
unsafe impl Send for Region {}

pub(crate) struct Slot {
    gen: Generation,
    region: Option<Region>,
}

/// All regions of a session. Lookups are by index + generation, no hashing.
#[derive(Default)]
pub(crate) struct Registry {
    slots: Vec<Slot>,
}

impl Registry {
    pub fn insert(&mut self, region: Region) -> MemId {
        if let Some((i, s)) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.region.is_none())
        {
            s.region = Some(region);
            return s.gen.next(i as u32);
        }
        let gen = Generation::default();
        self.slots.push(Slot {
            gen,
            region: Some(region),
        });
        gen.id((self.slots.len() - 1) as u32)
    }

    pub fn get(&self, id: MemId) -> Result<&Region> {
        match self.slots.get(id.index() as usize) {
            Some(Slot {
                gen,
                region: Some(r),
            }) if gen.issued(id) => Ok(r),
            _ => Err(Error::Invalid("unknown or deregistered MemId")),
        }
    }

    /// By index alone, for chunks that already validated their id at post time.
    pub fn by_index(&mut self, index: u32) -> &mut Region {
        self.slots[index as usize]
            .region
            .as_mut()
            .expect("a region with chunks in flight cannot be removed")
    }

    pub fn remove(&mut self, id: MemId) -> Result<Region> {
        let r = self.get(id)?;
        if r.in_flight > 0 {
            return Err(Error::Invalid(
                "deregister: the region still has chunks in flight",
            ));
        }
        Ok(self.slots[id.index() as usize]
            .region
            .take()
            .expect("checked above"))
    }
}

#[cfg(test)]
mod tests {
    use super::Windows;

    const MIB: u64 = 1 << 20;

    /// Every chunk of at most OVERLAP bytes, wherever it starts, lies whole inside the window
    /// `of` names; windows start aligned, stay within `max`, and cover the region exactly.
    #[test]
    fn windows_cover_every_chunk() {
        for &(ptr, len, align, max) in &[
            (0x1000_0200u64, 100u64, 4096u64, 1u64 << 31),
            (0x7000_0000, 3 << 30, 4096, (1 << 31) - 1),
            (0x7000_0123, (3 << 30) + 5, 4096, (1 << 31) - 1),
            (0x7000_0000, 10 * MIB, 1, 6 * MIB),
            (0x9000, 64 * MIB + 7, 4096, 9 * MIB + 5),
        ] {
            let w = Windows::plan(ptr, len, align, max);
            let end = ptr + len;
            assert!(w.base <= ptr && ptr - w.base < align, "{w:?}");
            assert_eq!(w.base + w.len, end);
            let (last_start, last_len) = w.span(w.count - 1);
            assert_eq!(last_start + last_len, end, "{w:?}");
            for i in 0..w.count {
                let (s, l) = w.span(i);
                assert_eq!(s % align, w.base % align);
                assert!(l <= max && l > 0, "window {i} of {w:?} is {l} bytes");
            }
            let chunks = (0..2000u64)
                .map(|k| ptr + (k * 7_919_993) % len)
                .chain([ptr, end - 1, w.base + w.step - 1, w.base + w.step])
                .filter(|&s| s >= ptr && s < end);
            for start in chunks {
                let clen = Windows::OVERLAP.min(end - start);
                let (s, l) = w.span(w.of(start));
                assert!(
                    s <= start && start + clen <= s + l,
                    "chunk [{start:#x}, +{clen}) outside window {} [{s:#x}, +{l}) of {w:?}",
                    w.of(start)
                );
            }
        }
    }

    #[test]
    fn small_regions_take_one_window_from_the_aligned_base() {
        let w = Windows::plan(0x1000_0200, 100, 4096, u64::MAX);
        assert_eq!((w.base, w.len, w.count), (0x1000_0000, 0x200 + 100, 1));
        assert_eq!(w.of(0x1000_0250), 0);
        let w = Windows::plan(0x1000_0200, 100, 1, u64::MAX);
        assert_eq!((w.base, w.len), (0x1000_0200, 100));
        let w = Windows::plan(0x7000_0000, 3 << 30, 4096, (1 << 31) - 1);
        assert_eq!(w.count, 2, "{w:?}");
    }
}
