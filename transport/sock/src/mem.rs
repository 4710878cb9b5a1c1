//! Memory bookkeeping: the pluggable allocator of device-visible host regions (meta table,
//! bounce region), the bounce page pool, and the CUDA send staging ring's ranges.
//!
//! Which allocator: the one installed with [`set_mapped_allocator`] if any; else, when a CUDA
//! driver with a device is present, pinned device-mapped host memory
//! ([`crate::cuda::CudaMappedAllocator`]); else ordinary page-aligned host memory. The plugin
//! writes through `host` and publishes `device` in the dev handle.

use core::ffi::c_void;
use std::alloc::Layout;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use tcpx_core::span::Span;
use tcpx_core::unpack::PAGE_SIZE;
use tcpx_core::window::Window;

use crate::error::{Error, Result};

// Addresses, lengths and offsets convert between `usize` and `u64` without loss.
const _: () = assert!(usize::BITS == u64::BITS);

/// `len` bytes of raw memory at `ptr`: a [`Span`] of addresses with the pointer it came from.
/// Every sub-range is checked against it, so a range past its end or wrapping around the
/// address space is an error, never a pointer outside it. Says nothing about whether the bytes
/// may be read or written: that stays the caller's contract.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBuf {
    ptr: *mut u8,
    span: Span,
}

impl RawBuf {
    /// The `len` bytes at `ptr`; refused when they would wrap around the address space.
    pub(crate) fn new(ptr: *mut u8, len: usize) -> Result<Self> {
        match Span::new(ptr as usize as u64, len as u64) {
            Some(span) => Ok(RawBuf { ptr, span }),
            None => Err(Error::Internal("byte range wraps around the address space")),
        }
    }

    /// First byte.
    pub(crate) fn ptr(self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub(crate) fn len(self) -> usize {
        self.span.len() as usize
    }

    /// Whether it holds no byte.
    pub(crate) fn is_empty(self) -> bool {
        self.span.is_empty()
    }

    /// The first `n` bytes and the rest; refused when `n` is past the end.
    pub(crate) fn split_at(self, n: usize) -> Result<(RawBuf, RawBuf)> {
        let (a, b) = self
            .span
            .split_at(n as u64)
            .ok_or(Error::Internal("split past the end of a byte range"))?;
        Ok((
            RawBuf {
                ptr: self.ptr,
                span: a,
            },
            RawBuf {
                // In bounds: `n` is at most the length.
                ptr: self.ptr.wrapping_add(n),
                span: b,
            },
        ))
    }
}

/// A zeroed region visible to the CPU at `host` and to the consumer (GPU) at `device`.
#[derive(Debug, Clone, Copy)]
pub struct MappedRegion {
    /// CPU address the plugin writes through.
    pub host: *mut u8,
    /// Address published to the consumer in the device handle (equal to `host` for host memory).
    pub device: *mut c_void,
    /// Length in bytes.
    pub len: usize,
}

/// Source of device-visible regions. Implementations must return zeroed, 4 KiB-aligned
/// memory that stays valid until [`MappedAllocator::free`].
pub trait MappedAllocator: Send + Sync {
    /// Allocates `len` zeroed bytes.
    fn alloc(&self, len: usize) -> Result<MappedRegion>;
    /// Allocates `len` zeroed bytes for a comm of GPU `gpu` (TCPX binds a recv comm's memory to
    /// the GPU current at its first `accept`); allocators without devices ignore it.
    fn alloc_on(&self, len: usize, gpu: usize) -> Result<MappedRegion> {
        let _ = gpu;
        self.alloc(len)
    }
    /// Releases a region.
    ///
    /// # Safety
    /// `region` came from `alloc` of this allocator and is freed once, with no user left.
    unsafe fn free(&self, region: MappedRegion);
}

/// The default allocator: plain page-aligned host memory; device alias = host address.
#[derive(Debug, Default)]
pub struct HostAllocator;

impl MappedAllocator for HostAllocator {
    fn alloc(&self, len: usize) -> Result<MappedRegion> {
        let layout = Layout::from_size_align(len.max(1), PAGE_SIZE)
            .map_err(|_| Error::InvalidArgument("region size"))?;
        // SAFETY: the layout has non-zero size.
        let host = unsafe { std::alloc::alloc_zeroed(layout) };
        if host.is_null() {
            return Err(Error::System("bounce allocation", libc::ENOMEM));
        }
        Ok(MappedRegion {
            host,
            device: host.cast(),
            len,
        })
    }

    unsafe fn free(&self, region: MappedRegion) {
        let layout = Layout::from_size_align(region.len.max(1), PAGE_SIZE)
            .expect("layout was valid at alloc");
        // SAFETY: per the contract, `host` came from alloc_zeroed with this layout.
        unsafe { std::alloc::dealloc(region.host, layout) };
    }
}

static HOST_ALLOCATOR: HostAllocator = HostAllocator;
/// `None` = choose automatically (CUDA if present, else host).
static ALLOCATOR: RwLock<Option<&'static dyn MappedAllocator>> = RwLock::new(None);
/// Bumped by every [`set_mapped_allocator`].
static ALLOCATOR_GEN: AtomicUsize = AtomicUsize::new(0);

/// Installs the allocator used for meta tables and bounce regions of comms accepted later,
/// replacing the automatic choice.
pub fn set_mapped_allocator(a: &'static dyn MappedAllocator) {
    *ALLOCATOR.write().unwrap_or_else(|e| e.into_inner()) = Some(a);
    ALLOCATOR_GEN.fetch_add(1, Ordering::AcqRel);
}

fn allocator() -> &'static dyn MappedAllocator {
    if let Some(a) = *ALLOCATOR.read().unwrap_or_else(|e| e.into_inner()) {
        return a;
    }
    if crate::cuda::present() {
        &crate::cuda::CUDA_ALLOCATOR
    } else {
        &HOST_ALLOCATOR
    }
}

/// Which allocator [`OwnedRegion::new`] uses now: changes with every
/// [`set_mapped_allocator`], so memory made by different allocators is never mixed up.
pub(crate) fn allocator_id() -> usize {
    ALLOCATOR_GEN.load(Ordering::Acquire)
}

/// A region that returns itself to its allocator on drop.
pub(crate) struct OwnedRegion {
    pub(crate) region: MappedRegion,
    alloc: &'static dyn MappedAllocator,
}

// SAFETY: the region is plain memory owned by this value; raw pointers do not tie it to a thread.
unsafe impl Send for OwnedRegion {}
// SAFETY: shared access only hands out the pointers; writers coordinate through the comm.
unsafe impl Sync for OwnedRegion {}

impl OwnedRegion {
    /// Allocates from the installed allocator, for GPU `gpu` when there is one.
    pub(crate) fn new(len: usize, gpu: Option<usize>) -> Result<Self> {
        let alloc = allocator();
        let region = match gpu {
            Some(g) => alloc.alloc_on(len, g)?,
            None => alloc.alloc(len)?,
        };
        if region.host.is_null()
            || region.len < len
            || region.host as usize % PAGE_SIZE != 0
            || RawBuf::new(region.host, region.len).is_err()
        {
            return Err(Error::Internal("allocator returned an unusable region"));
        }
        Ok(OwnedRegion { region, alloc })
    }
}

impl Drop for OwnedRegion {
    fn drop(&mut self) {
        // SAFETY: the region came from `self.alloc` and this is its only owner.
        unsafe { self.alloc.free(self.region) };
    }
}

/// Free bounce pages, by index, taken from the front. Released pages go back to the front
/// (most recently used first, so the pages in use stay few and cache-warm), or, with
/// `shuffle`, to the back (every page cycles through, for the most scattering).
pub(crate) struct PagePool {
    free: VecDeque<u32>,
    scatter: bool,
}

impl PagePool {
    /// A pool of `npages` pages, optionally in a shuffled order derived from `seed`.
    pub(crate) fn new(npages: usize, shuffle: bool, seed: u64) -> Self {
        let mut v: Vec<u32> = (0..npages as u32).collect();
        if shuffle {
            let mut s = seed | 1;
            for i in (1..v.len()).rev() {
                // xorshift64: deterministic per comm, no dependency needed.
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                v.swap(i, (s % (i as u64 + 1)) as usize);
            }
        }
        // Capacity equals the page count, so pushes never reallocate.
        let mut free = VecDeque::with_capacity(npages);
        free.extend(v);
        PagePool {
            free,
            scatter: shuffle,
        }
    }

    /// Pages currently free.
    pub(crate) fn available(&self) -> usize {
        self.free.len()
    }

    /// Fills `out` with free pages; all or nothing.
    pub(crate) fn take(&mut self, out: &mut [u32]) -> bool {
        if out.len() > self.free.len() {
            return false;
        }
        for o in out.iter_mut() {
            *o = self.free.pop_front().expect("length checked");
        }
        true
    }

    /// Returns pages to the pool.
    pub(crate) fn give(&mut self, pages: &[u32]) {
        debug_assert!(self.free.len() + pages.len() <= self.free.capacity());
        if self.scatter {
            self.free.extend(pages.iter().copied());
        } else {
            // Reversed, so the next request gets them in their previous order.
            for &p in pages.iter().rev() {
                self.free.push_front(p);
            }
        }
    }
}

/// Space in a fixed staging buffer for requests that are released in the order they were
/// taken (a send comm's CUDA staging ring): each takes one contiguous range, at the head, or
/// from the start when the end has too little room; the oldest goes back first.
pub(crate) struct StageRing {
    /// The ring's offsets, `[0, capacity)`.
    ring: Span,
    /// Offset of every live range, oldest first (at most one per request slot); a range ends
    /// where `head` was when the next one was taken, so only starts are kept.
    live: Window<u64, { tcpx_core::ring::TCPX_REQUESTS }>,
    /// Where the next range goes if it fits.
    head: u64,
}

impl StageRing {
    pub(crate) fn new(cap: usize) -> Self {
        StageRing {
            ring: Span::from_len(cap as u64),
            live: Window::new(),
            head: 0,
        }
    }

    /// Bytes the ring holds.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.len() as usize
    }

    /// Takes `len` (≥ 1) contiguous bytes; their offset, or `None` while too few are free.
    pub(crate) fn take(&mut self, len: usize) -> Option<usize> {
        self.take_span(len).map(|s| s.base() as usize)
    }

    /// Takes `len` (≥ 1) contiguous bytes: their offsets in the ring, or `None` while too few
    /// are free.
    fn take_span(&mut self, len: usize) -> Option<Span> {
        if len == 0 || self.live.is_full() {
            return None;
        }
        let len = len as u64;
        let got = match self.live.head() {
            None => self.ring.sub(0, len),
            // Live bytes are [tail, head): room after head, else before tail.
            Some((_, &tail)) if self.head > tail => self
                .ring
                .sub(self.head, len)
                .or_else(|| Span::from_len(tail).sub(0, len)),
            // Wrapped: live bytes are [tail, end) and [0, head); room is [head, tail).
            Some((_, &tail)) => Span::from_len(tail).sub(self.head, len),
        }?;
        self.live.push(got.base()).ok()?;
        self.head = got.end();
        Some(got)
    }

    /// Gives back the oldest range.
    pub(crate) fn give_oldest(&mut self) {
        debug_assert!(!self.live.is_empty(), "nothing to give back");
        self.live.pop_head();
        if self.live.is_empty() {
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_ring_ranges_never_overlap_and_all_space_comes_back() {
        let mut r = StageRing::new(100);
        assert_eq!(r.take(0), None);
        assert_eq!(r.take(101), None);
        assert_eq!(r.take(40), Some(0));
        assert_eq!(r.take(40), Some(40));
        assert_eq!(
            r.take(30),
            None,
            "20 left at the end, none before the oldest"
        );
        r.give_oldest();
        assert_eq!(r.take(30), Some(0), "wraps to the start");
        assert_eq!(r.take(11), None, "only 10 between head and the oldest");
        assert_eq!(r.take(10), Some(30));
        r.give_oldest();
        r.give_oldest();
        r.give_oldest();
        assert_eq!(r.take(100), Some(0), "empty again: the whole ring");

        // Random sequences against a byte map of what is live.
        let mut seed = 7u64;
        let mut rnd = |m: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m as u64) as usize
        };
        let cap = 4096;
        let mut r = StageRing::new(cap);
        let mut owner = vec![usize::MAX; cap];
        let mut fifo = std::collections::VecDeque::new();
        for step in 0..20_000 {
            if fifo.len() < MAX_TEST_LIVE && rnd(3) > 0 {
                let len = 1 + rnd(cap / 3);
                if let Some(off) = r.take(len) {
                    assert!(off + len <= cap);
                    for b in &mut owner[off..off + len] {
                        assert_eq!(*b, usize::MAX, "step {step}: range overlaps a live one");
                        *b = step;
                    }
                    fifo.push_back((off, len));
                } else {
                    assert!(!fifo.is_empty(), "an empty ring refused {len} bytes");
                }
            } else if let Some((off, len)) = fifo.pop_front() {
                r.give_oldest();
                owner[off..off + len].fill(usize::MAX);
            }
        }
    }

    #[test]
    fn stage_ring_refuses_out_of_range_lengths_and_takes_exact_fits() {
        let mut r = StageRing::new(100);
        assert_eq!(r.take(usize::MAX), None, "longer than the ring");
        assert_eq!(r.take(usize::MAX - 50), None);
        assert_eq!(r.take(100), Some(0), "the whole ring fits");
        assert_eq!(r.take(1), None, "full");
        r.give_oldest();
        assert_eq!(r.take(60), Some(0));
        assert_eq!(r.take(40), Some(60), "ends exactly at the end of the ring");
        r.give_oldest();
        assert_eq!(r.take(61), None, "the free start is 60 bytes");
        assert_eq!(
            r.take(usize::MAX),
            None,
            "head + len would wrap: refused, no overflow"
        );
        assert_eq!(r.take(60), Some(0), "exactly the free start");
        assert_eq!(r.take(1), None, "wrapped and full: head meets the oldest");
        r.give_oldest();
        assert_eq!(r.take(usize::MAX), None, "refused, no overflow");
        assert_eq!(r.take(40), Some(60), "exactly the room up to the end");

        let mut empty = StageRing::new(0);
        assert_eq!(empty.take(1), None, "a ring of no bytes");
        assert_eq!(empty.capacity(), 0);
    }

    #[test]
    fn raw_buf_sub_ranges_are_checked() {
        let mut bytes = [0u8; 64];
        let b = RawBuf::new(bytes.as_mut_ptr(), bytes.len()).unwrap();
        assert_eq!(
            (b.ptr(), b.len(), b.is_empty()),
            (bytes.as_mut_ptr(), 64, false)
        );
        let (head, rest) = b.split_at(24).unwrap();
        assert_eq!((head.ptr(), head.len()), (bytes.as_mut_ptr(), 24));
        assert_eq!(
            (rest.ptr(), rest.len()),
            (bytes.as_mut_ptr().wrapping_add(24), 40)
        );
        let (all, none) = b.split_at(64).unwrap();
        assert_eq!(all.len(), 64, "the whole range");
        assert!(none.is_empty());
        assert_eq!(none.ptr(), bytes.as_mut_ptr().wrapping_add(64));
        assert_eq!(
            b.split_at(65).unwrap_err(),
            Error::Internal("split past the end of a byte range")
        );
        assert!(b.split_at(usize::MAX).is_err());
        assert!(RawBuf::new(core::ptr::null_mut(), 0).unwrap().is_empty());

        // Ranges that wrap around the address space are refused; the top byte is not.
        let top = usize::MAX as *mut u8;
        assert_eq!(
            RawBuf::new(top, 2).unwrap_err(),
            Error::Internal("byte range wraps around the address space")
        );
        assert!(RawBuf::new(bytes.as_mut_ptr(), usize::MAX).is_err());
        let last = (usize::MAX - 1) as *mut u8;
        assert_eq!(RawBuf::new(last, 1).map(RawBuf::len), Ok(1));
    }

    const MAX_TEST_LIVE: usize = tcpx_core::ring::TCPX_REQUESTS;

    #[test]
    fn pool_is_a_permutation_and_refuses_overdraw() {
        let mut p = PagePool::new(64, true, 42);
        let mut a = [0u32; 60];
        assert!(p.take(&mut a));
        let mut b = [0u32; 5];
        assert!(!p.take(&mut b), "only 4 left");
        let mut sorted = a.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 60);
        assert!(a.windows(2).any(|w| w[1] != w[0] + 1), "shuffled");
        p.give(&a);
        assert_eq!(p.available(), 64);
    }

    #[test]
    fn unshuffled_pool_reuses_the_last_released_pages_first() {
        let mut p = PagePool::new(1024, false, 0);
        let mut a = [0u32; 8];
        assert!(p.take(&mut a));
        assert_eq!(a, [0, 1, 2, 3, 4, 5, 6, 7], "in order at first");
        let mut b = [0u32; 8];
        assert!(p.take(&mut b));
        p.give(&a);
        let mut c = [0u32; 8];
        assert!(p.take(&mut c));
        assert_eq!(c, a, "released pages come back first, in their order");
        p.give(&b);
        p.give(&c);
        assert_eq!(p.available(), 1024);
        let mut all = vec![0u32; 1024];
        assert!(p.take(&mut all));
        all.sort_unstable();
        assert!(
            all.iter().enumerate().all(|(i, &x)| x == i as u32),
            "no page lost or doubled"
        );
    }

    #[test]
    fn host_allocator_gives_zeroed_aligned_memory() {
        let r = OwnedRegion::new(3 * PAGE_SIZE, None).unwrap();
        assert_eq!(r.region.host as usize % PAGE_SIZE, 0);
        // SAFETY: the region is 3 pages long and zeroed by the allocator.
        let s = unsafe { core::slice::from_raw_parts(r.region.host, 3 * PAGE_SIZE) };
        assert!(s.iter().all(|b| *b == 0));
    }
}
