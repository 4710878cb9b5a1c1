//! The engine tests' support: GPU checks (`engine`), the fake ncclNet plugin built with the
//! system C compiler (`fake`), and reading the fake plugin's call counters.

#![allow(dead_code)]

pub mod engine;
pub mod fake;

use std::path::Path;

#[allow(unused_imports)] // not every test binary builds a fake plugin
pub use fake::{build, tmp_dir};

/// Reads one of the fake plugin's call counters (same path = same loaded instance).
pub fn counter(path: &Path, what: &str) -> i32 {
    // SAFETY: the test plugin has no initialisers with side effects.
    let lib = unsafe { libloading::Library::new(path) }.expect("reopen plugin");
    // SAFETY: `fake_counter` is `int fake_counter(const char*)` in fake_net.c.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn(*const std::ffi::c_char) -> i32> =
            lib.get(b"fake_counter\0").expect("fake_counter");
        let what = std::ffi::CString::new(what).unwrap();
        f(what.as_ptr())
    }
}
