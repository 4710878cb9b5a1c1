//! A tiny leveled logger to stderr, shared by tcpx and the ncclNet plugins it loads.
//!
//! The level comes from `TCPX_LOG` (error|warn|info|debug|trace, default warn), read once.
//! Plugins log through NCCL's variadic logger: `csrc/log_shim.c` formats their message and
//! [`nccl_logger`] hands that shim to `init`, so plugin lines land here with their subsystems.

use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Once, RwLock};

use tcpx_core::abi::{log_level, Logger};

/// Severity of a log line, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

impl Level {
    /// Upper-case name as printed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }

    /// Parses a `TCPX_LOG` value (case-insensitive).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            "trace" => Some(Level::Trace),
            _ => None,
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            1 => Level::Error,
            2 => Level::Warn,
            3 => Level::Info,
            4 => Level::Debug,
            _ => Level::Trace,
        }
    }
}

/// One log line, as handed to a hook.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub level: Level,
    /// Where it comes from: a tcpx module (`net`, `cli`) or `nccl:NET|INIT` for plugin lines.
    pub target: &'a str,
    /// Source location reported by a plugin, if any.
    pub file: Option<&'a str>,
    pub line: u32,
    pub message: &'a str,
}

/// Receives every enabled line instead of stderr (tests capture plugin output with it).
pub type Hook = Arc<dyn Fn(&Record<'_>) + Send + Sync>;

/// 0 = not read from the environment yet.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);
static HOOK: RwLock<Option<Hook>> = RwLock::new(None);

/// The current maximum level (reads `TCPX_LOG` on first use).
pub fn max_level() -> Level {
    let v = MAX_LEVEL.load(Ordering::Relaxed);
    if v != 0 {
        return Level::from_u8(v);
    }
    let level = std::env::var("TCPX_LOG")
        .ok()
        .and_then(|s| Level::parse(&s))
        .unwrap_or(Level::Warn);
    // A concurrent `set_max_level` wins over the environment.
    let _ = MAX_LEVEL.compare_exchange(0, level as u8, Ordering::Relaxed, Ordering::Relaxed);
    Level::from_u8(MAX_LEVEL.load(Ordering::Relaxed))
}

/// Overrides `TCPX_LOG` for the rest of the process.
pub fn set_max_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether a line at `level` would be emitted.
pub fn enabled(level: Level) -> bool {
    level <= max_level()
}

/// Routes lines to `hook` instead of stderr; `None` restores stderr.
pub fn set_hook(hook: Option<Hook>) {
    let mut slot = HOOK.write().unwrap_or_else(|e| e.into_inner());
    *slot = hook;
}

/// Emits one line (callers normally use the `log_*!` macros).
pub fn log(level: Level, target: &str, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    // Small messages are formatted without touching the heap.
    let mut buf = StackStr::<512>::new();
    let _ = buf.write_fmt(args);
    emit(&Record {
        level,
        target,
        file: None,
        line: 0,
        message: buf.as_str(),
    });
}

fn emit(rec: &Record<'_>) {
    let hook = HOOK
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(Arc::clone);
    if let Some(hook) = hook {
        hook(rec);
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = match rec.file {
        Some(file) => writeln!(
            err,
            "tcpx {} [{}] {}:{}: {}",
            rec.level.as_str(),
            rec.target,
            file,
            rec.line,
            rec.message
        ),
        None => writeln!(
            err,
            "tcpx {} [{}] {}",
            rec.level.as_str(),
            rec.target,
            rec.message
        ),
    };
}

/// Logs at an explicit level: `log_at!(Level::Info, "net", "loaded {}", name)`.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $target:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::log($level, $target, format_args!($($arg)+));
        }
    };
}
/// Logs an error line.
#[macro_export]
macro_rules! log_error { ($target:expr, $($arg:tt)+) => { $crate::log_at!($crate::log::Level::Error, $target, $($arg)+) }; }
/// Logs a warning line.
#[macro_export]
macro_rules! log_warn { ($target:expr, $($arg:tt)+) => { $crate::log_at!($crate::log::Level::Warn, $target, $($arg)+) }; }
/// Logs an info line.
#[macro_export]
macro_rules! log_info { ($target:expr, $($arg:tt)+) => { $crate::log_at!($crate::log::Level::Info, $target, $($arg)+) }; }
/// Logs a debug line.
#[macro_export]
macro_rules! log_debug { ($target:expr, $($arg:tt)+) => { $crate::log_at!($crate::log::Level::Debug, $target, $($arg)+) }; }
/// Logs a trace line.
#[macro_export]
macro_rules! log_trace { ($target:expr, $($arg:tt)+) => { $crate::log_at!($crate::log::Level::Trace, $target, $($arg)+) }; }

// ---- NCCL logger bridge -------------------------------------------------------------------

type SinkFn = extern "C" fn(
    level: c_int,
    flags: c_ulong,
    file: *const c_char,
    line: c_int,
    msg: *const c_char,
    len: usize,
);

extern "C" {
    fn tcpx_log_shim_install(sink: SinkFn);
    fn tcpx_log_shim_logger(
        level: c_int,
        flags: c_ulong,
        file: *const c_char,
        line: c_int,
        fmt: *const c_char,
        ...
    );
}

/// The logger to hand a plugin's `init`: installs the Rust sink on first use.
pub fn nccl_logger() -> Logger {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the shim stores the function pointer atomically; `nccl_sink` lives forever.
        unsafe { tcpx_log_shim_install(nccl_sink) };
    });
    Some(tcpx_log_shim_logger)
}

/// NCCL subsystem bits of the logger's `flags`, in bit order.
const SUBSYSTEMS: [&str; 16] = [
    "INIT",
    "COLL",
    "P2P",
    "SHM",
    "NET",
    "GRAPH",
    "TUNING",
    "ENV",
    "ALLOC",
    "CALL",
    "PROXY",
    "NVLS",
    "BOOTSTRAP",
    "REG",
    "PROFILE",
    "RAS",
];

/// Maps an NCCL level to ours; `None` for NONE and unknown levels.
fn nccl_level(level: c_int) -> Option<Level> {
    match level {
        log_level::WARN => Some(Level::Warn),
        log_level::ABORT => Some(Level::Error),
        log_level::VERSION | log_level::INFO => Some(Level::Info),
        log_level::TRACE => Some(Level::Trace),
        _ => None,
    }
}

/// Receives formatted plugin lines from the C shim.
extern "C" fn nccl_sink(
    level: c_int,
    flags: c_ulong,
    file: *const c_char,
    line: c_int,
    msg: *const c_char,
    len: usize,
) {
    // A panic must not unwind into the plugin's C frames.
    let _ = std::panic::catch_unwind(|| {
        let Some(level) = nccl_level(level) else {
            return;
        };
        if !enabled(level) || msg.is_null() {
            return;
        }
        // SAFETY: the shim passes its stack buffer holding `len` formatted bytes.
        let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
        let message = String::from_utf8_lossy(bytes);
        let file = if file.is_null() {
            None
        } else {
            // SAFETY: NCCL loggers receive `__FILE__`, a NUL-terminated static string.
            Some(unsafe { CStr::from_ptr(file) }.to_string_lossy())
        };
        let mut target = StackStr::<96>::new();
        let _ = target.write_str("nccl");
        let mut sep = ':';
        for (bit, name) in SUBSYSTEMS.iter().enumerate() {
            if flags & (1 << bit) != 0 {
                let _ = target.write_char(sep);
                let _ = target.write_str(name);
                sep = '|';
            }
        }
        emit(&Record {
            level,
            target: target.as_str(),
            file: file.as_deref(),
            line: u32::try_from(line).unwrap_or(0),
            message: message.trim_end_matches('\n'),
        });
    });
}

/// A fixed-capacity string that silently truncates (at a char boundary).
struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }
    fn as_str(&self) -> &str {
        // Only whole `str`s are ever copied in, so the prefix is valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parses_levels() {
        assert_eq!(Level::parse("TRACE"), Some(Level::Trace));
        assert_eq!(Level::parse(" warn "), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Trace);
    }

    #[test]
    fn stack_str_truncates_at_char_boundary() {
        let mut s = StackStr::<4>::new();
        let _ = s.write_str("abé"); // 'é' is 2 bytes: fits exactly
        let _ = s.write_str("z");
        assert_eq!(s.as_str(), "abé");
        let mut t = StackStr::<3>::new();
        let _ = t.write_str("abé");
        assert_eq!(t.as_str(), "ab");
    }

    #[test]
    fn shim_formats_and_routes_plugin_lines() {
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = Arc::clone(&lines);
        set_max_level(Level::Trace);
        set_hook(Some(Arc::new(move |r: &Record<'_>| {
            sink.lock().unwrap().push(format!(
                "{} {} {}:{} {}",
                r.level.as_str(),
                r.target,
                r.file.unwrap_or("-"),
                r.line,
                r.message
            ));
        })));
        let logger = nccl_logger().expect("logger");
        // SAFETY: a printf format with matching arguments, as a plugin would call it.
        unsafe {
            logger(
                log_level::WARN,
                16 | 1,
                c"unit.c".as_ptr(),
                42,
                c"x=%d s=%s f=%.1f".as_ptr(),
                7 as c_int,
                c"ok".as_ptr(),
                2.5f64,
            );
        }
        set_hook(None);
        let got = lines.lock().unwrap().clone();
        assert!(
            got.iter()
                .any(|l| l == "WARN nccl:INIT|NET unit.c:42 x=7 s=ok f=2.5"),
            "{got:?}"
        );
    }
}
