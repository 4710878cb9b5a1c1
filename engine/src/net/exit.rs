//! Says so when a plugin ends the process from inside one of our calls into it.
//!
//! Plugins call `exit()` themselves (GPUDirect-TCPX does when `cuInit` fails inside `init`,
//! on more than 2048 fragments in one receive, on socket errors), which otherwise looks
//! like tcpx vanishing without a word. Each call into a plugin marks its thread with the
//! plugin's name and the function ([`Plugin::call`](super::Plugin::call)); an `atexit`
//! handler, registered once, runs on the thread that called `exit()` and prints
//! `tcpx: ncclNet plugin <name> ended the process during <call>` when that thread is inside
//! a call. An `exit()` on one of the plugin's own threads is not attributed (no mark there).

use std::cell::Cell;
use std::ffi::c_int;
use std::io::Write as _;
use std::sync::Once;

/// The call in progress on this thread: (function, plugin name). The name points into the
/// `Plugin` that the caller holds for the duration of the call.
type Mark = (&'static str, *const str);

thread_local! {
    // `const` and without drop glue: no lazy initialisation, no allocation, and still
    // readable while `exit()` runs the atexit handlers.
    static CURRENT: Cell<Option<Mark>> = const { Cell::new(None) };
}

extern "C" {
    // glibc's `atexit` (from libc_nonshared via the default `-lc`): handlers run on the
    // thread that calls `exit()`, or at `dlclose` if tcpx itself lives in an unloaded object.
    fn atexit(handler: extern "C" fn()) -> c_int;
}

/// Registers the exit handler (once per process).
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: `report` is a plain `extern "C" fn` that lives as long as this code.
        if unsafe { atexit(report) } != 0 {
            crate::log_warn!(
                "net",
                "atexit failed: a plugin's exit() will not be reported"
            );
        }
    });
}

/// Marks this thread as inside `func` of `plugin` until dropped (restoring any outer mark).
pub(crate) struct CallMark {
    outer: Option<Mark>,
}

impl CallMark {
    #[inline]
    pub(crate) fn enter(func: &'static str, plugin: &str) -> CallMark {
        let outer = CURRENT.with(|c| c.replace(Some((func, plugin as *const str))));
        CallMark { outer }
    }
}

impl Drop for CallMark {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.outer));
    }
}

/// The call this thread is inside, if any: (function, plugin name).
#[cfg(test)]
fn current() -> Option<(&'static str, String)> {
    // SAFETY: a mark's name is alive while its `CallMark` is (tests hold both).
    CURRENT.with(|c| c.get().map(|(f, n)| (f, unsafe { &*n }.to_string())))
}

extern "C" fn report() {
    // Nothing may unwind out of an atexit handler.
    let _ = std::panic::catch_unwind(|| {
        let Ok(Some((func, name))) = CURRENT.try_with(Cell::get) else {
            return;
        };
        // SAFETY: the caller of the plugin function still holds the plugin (it is inside
        // the call that is ending the process), so its name is alive.
        let name = unsafe { &*name };
        let _ = writeln!(
            std::io::stderr(),
            "tcpx: ncclNet plugin {name} ended the process during {func}"
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_nest_and_restore() {
        assert_eq!(current(), None);
        {
            let _outer = CallMark::enter("init", "A");
            assert_eq!(current(), Some(("init", "A".to_string())));
            {
                let _inner = CallMark::enter("test", "B");
                assert_eq!(current(), Some(("test", "B".to_string())));
            }
            assert_eq!(current(), Some(("init", "A".to_string())));
        }
        assert_eq!(current(), None);
    }
}
