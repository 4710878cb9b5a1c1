//! Counts this module's Rust heap allocations per thread, so the Python tests can show that
//! `post`, `poll` and `release` allocate nothing on the Rust side.
//!
//! Per thread, not global: the embedded plugin's helper threads allocate on their own time,
//! and only the calling thread's allocations belong to the call. A thread-local `Cell` costs
//! one add per allocation, and no atomics.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pyo3::prelude::*;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: a thread being torn down may still free and allocate; it is not counted.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rust heap allocations made so far on the calling thread by this module (the engine and
/// the embedded plugin included). For tests.
#[pyfunction(name = "_thread_allocations")]
pub(crate) fn thread_allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}
