//! Shared helpers for tcpx's cross-crate integration tests.
//!
//! The main one is [`CountingAlloc`], the allocator behind every "this path never touches the
//! heap" test: install it as `#[global_allocator]` in a dedicated test binary, then wrap the
//! code under test in [`count_allocs`] or [`assert_no_alloc`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// A global allocator that forwards to [`System`] and counts allocations per thread.
///
/// The counter is a thread-local, so tests running in parallel on other threads do not
/// disturb each other; it is const-initialised, so reading or bumping it never allocates
/// (a lazily initialised thread-local could recurse into the allocator). `alloc`,
/// `alloc_zeroed` and `realloc` each count as one allocation; `dealloc` is not counted.
///
/// Install it once per test binary (a binary has one global allocator):
///
/// ```
/// use std::hint::black_box;
///
/// #[global_allocator]
/// static ALLOC: tcpx_tests::CountingAlloc = tcpx_tests::CountingAlloc;
///
/// fn main() {
///     // In a test: `assert_no_alloc(|| engine.poll())`.
///     assert_eq!(tcpx_tests::assert_no_alloc(|| black_box(2) + 2), 4);
///     assert_eq!(tcpx_tests::count_allocs(|| drop(black_box(Box::new(1u8)))), 1);
/// }
/// ```
///
/// Without the `#[global_allocator]` line the counters stay at zero and every assertion
/// passes vacuously, so each such binary should also keep a sanity test that
/// [`count_allocs`] sees a `Box::new` (see `tests/no_alloc_core.rs`).
pub struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn bump() {
    // try_with: during thread teardown the slot may be gone; losing that count is harmless.
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter update touches only a const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        // SAFETY: forwarded contract of `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract of `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations made by the current thread since it started or since [`reset_allocs`].
pub fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

/// Set the current thread's allocation count back to zero.
pub fn reset_allocs() {
    ALLOCS.with(|n| n.set(0));
}

/// Run `f` and return how many allocations the current thread made meanwhile, plus `f`'s
/// result. Work `f` hands to other threads is not counted.
pub fn count_allocs_with<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = allocs();
    let r = f();
    (allocs() - before, r)
}

/// Run `f` and return how many allocations the current thread made meanwhile.
pub fn count_allocs(f: impl FnOnce()) -> usize {
    count_allocs_with(f).0
}

/// Run `f`, panic if it allocated on the current thread, and return its result.
#[track_caller]
pub fn assert_no_alloc<R>(f: impl FnOnce() -> R) -> R {
    let (n, r) = count_allocs_with(f);
    assert_eq!(n, 0, "expected no heap allocation, saw {n}");
    r
}

/// Installs [`CountingAlloc`] as the test binary's global allocator and adds the test that
/// keeps its zero counts honest: the counter must see a `Box::new`.
///
/// ```ignore
/// tcpx_tests::install_counting_alloc!();
/// ```
#[macro_export]
macro_rules! install_counting_alloc {
    () => {
        #[global_allocator]
        static ALLOC: $crate::CountingAlloc = $crate::CountingAlloc;

        /// The zero counts of this binary can be trusted only if the counter sees a real
        /// allocation.
        #[test]
        fn counter_sees_allocations() {
            assert_eq!(
                $crate::count_allocs(|| drop(::std::hint::black_box(Box::new(7u64)))),
                1
            );
        }
    };
}
