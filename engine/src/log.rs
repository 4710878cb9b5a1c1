//! A tiny leveled logger to stderr, shared by tcpx and the ncclNet plugins it loads.
//!
//! The level comes from `TCPX_LOG` (error|warn|info|debug|trace, default warn), read once.
//! Plugins log through NCCL's variadic logger: `csrc/log_shim.c` formats their message and
//! [`nccl_logger`] hands that shim to `init`, so plugin lines land here with their subsystems
//! (`nccl:INIT|NET`; `nccl:ALL` for the all-bits flags GPUDirect-TCPX puts on every WARN).
//!
//! Repeated plugin lines are rate-limited, since GPUDirect-TCPX WARNs on every host receive:
//! a call site (the plugin's `file`, `line` and level) prints its first 8 lines, then only its
//! 16th, 32nd, 64th … line, each with `(seen N times; repeats logged at powers of two)`. The
//! counts live in a fixed table of 64 call sites (the least-seen site gives its slot to a new
//! one), so memory is bounded and a line allocates nothing. Lines without a file are never
//! limited, since different messages could not be told apart.

use std::ffi::{c_char, c_int, c_ulong, CStr};
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Once, RwLock};

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

/// `flags` meaning every subsystem (NCCL's `NCCL_ALL = ~0`). A plugin that carried it
/// through a 32-bit type passes the low half only, which is the same intent.
fn all_subsystems(flags: c_ulong) -> bool {
    flags == c_ulong::MAX || flags == c_ulong::from(u32::MAX)
}

/// Writes `nccl`, then `:ALL` or `:` and the set subsystems joined by `|`.
fn write_target(out: &mut impl fmt::Write, flags: c_ulong) -> fmt::Result {
    out.write_str("nccl")?;
    if all_subsystems(flags) {
        return out.write_str(":ALL");
    }
    let mut sep = ':';
    for (bit, name) in SUBSYSTEMS.iter().enumerate() {
        if flags & (1 << bit) != 0 {
            out.write_char(sep)?;
            out.write_str(name)?;
            sep = '|';
        }
    }
    Ok(())
}

/// Lines of one call site printed before rate limiting starts.
const REPEAT_FIRST: u64 = 8;
/// Call sites whose repeats are counted.
const REPEAT_SITES: usize = 64;

/// What to do with one plugin line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Print,
    /// Print, saying how often the site was seen.
    PrintCounted(u64),
    Drop,
}

#[derive(Clone, Copy)]
struct Site {
    file: usize,
    line: c_int,
    level: c_int,
    count: u64,
}

/// Occurrence counts per call site (module doc: the policy).
struct Repeats {
    sites: [Site; REPEAT_SITES],
}

impl Repeats {
    const fn new() -> Repeats {
        Repeats {
            sites: [Site {
                file: 0,
                line: 0,
                level: 0,
                count: 0,
            }; REPEAT_SITES],
        }
    }

    /// Counts one line of the site (`file` is its address: a site's `__FILE__` or
    /// `__PRETTY_FUNCTION__` is one static string) and says whether to print it.
    fn note(&mut self, file: usize, line: c_int, level: c_int) -> Verdict {
        if file == 0 {
            return Verdict::Print;
        }
        let mut least = 0;
        let mut found = None;
        for (i, s) in self.sites.iter().enumerate() {
            if s.count != 0 && (s.file, s.line, s.level) == (file, line, level) {
                found = Some(i);
                break;
            }
            if s.count < self.sites[least].count {
                least = i;
            }
        }
        let i = found.unwrap_or_else(|| {
            self.sites[least] = Site {
                file,
                line,
                level,
                count: 0,
            };
            least
        });
        let site = &mut self.sites[i];
        site.count = site.count.saturating_add(1);
        match site.count {
            n if n <= REPEAT_FIRST => Verdict::Print,
            n if n.is_power_of_two() => Verdict::PrintCounted(n),
            _ => Verdict::Drop,
        }
    }
}

static REPEATS: Mutex<Repeats> = Mutex::new(Repeats::new());

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
        let raw_level = level;
        let Some(level) = nccl_level(level) else {
            return;
        };
        if !enabled(level) || msg.is_null() {
            return;
        }
        let verdict =
            REPEATS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(file as usize, line, raw_level);
        if verdict == Verdict::Drop {
            return;
        }
        // SAFETY: the shim passes its stack buffer holding `len` formatted bytes.
        let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
        let text = String::from_utf8_lossy(bytes);
        let file = if file.is_null() {
            None
        } else {
            // SAFETY: NCCL loggers receive `__FILE__`, a NUL-terminated static string.
            Some(unsafe { CStr::from_ptr(file) }.to_string_lossy())
        };
        let mut target = StackStr::<96>::new();
        let _ = write_target(&mut target, flags);
        let mut message = StackStr::<1152>::new();
        let _ = message.write_str(text.trim_end_matches('\n'));
        if let Verdict::PrintCounted(n) = verdict {
            let _ = write!(
                message,
                " (seen {n} times; repeats logged at powers of two)"
            );
        }
        emit(&Record {
            level,
            target: target.as_str(),
            file: file.as_deref(),
            line: u32::try_from(line).unwrap_or(0),
            message: message.as_str(),
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

    fn target(flags: c_ulong) -> String {
        let mut s = String::new();
        write_target(&mut s, flags).unwrap();
        s
    }

    #[test]
    fn all_bits_print_as_all() {
        assert_eq!(target(!0), "nccl:ALL");
        assert_eq!(target(c_ulong::from(u32::MAX)), "nccl:ALL");
        assert_eq!(target(16 | 1), "nccl:INIT|NET");
        assert_eq!(target(0), "nccl");
        // Every known subsystem but not all bits is still a list.
        assert!(target(0xffff).starts_with("nccl:INIT|COLL|"));
    }

    #[test]
    fn repeats_print_the_first_lines_then_powers_of_two_with_a_count() {
        let mut r = Repeats::new();
        let printed: Vec<(u64, Verdict)> = (1..=100)
            .map(|n| (n, r.note(0x1000, 7, 2)))
            .filter(|(_, v)| *v != Verdict::Drop)
            .collect();
        let mut want: Vec<(u64, Verdict)> = (1..=8).map(|n| (n, Verdict::Print)).collect();
        want.extend([16, 32, 64].map(|n| (n, Verdict::PrintCounted(n))));
        assert_eq!(printed, want);
        // Another line, level or file is another site, counted on its own.
        assert_eq!(r.note(0x1000, 8, 2), Verdict::Print);
        assert_eq!(r.note(0x1000, 7, 3), Verdict::Print);
        assert_eq!(r.note(0x2000, 7, 2), Verdict::Print);
        // Lines without a file are never limited.
        assert!((0..100).all(|_| r.note(0, 7, 2) == Verdict::Print));
    }

    #[test]
    fn repeats_are_bounded_and_the_least_seen_site_gives_way() {
        let mut r = Repeats::new();
        // A busy site, then more distinct sites than the table holds.
        for _ in 0..20 {
            r.note(0x1, 1, 2);
        }
        for f in 0..(2 * REPEAT_SITES) {
            assert_eq!(r.note(0x100 + f, 1, 2), Verdict::Print);
        }
        // The busy site kept its count: its 32nd line is printed with the count.
        let verdicts: Vec<Verdict> = (21..=32).map(|_| r.note(0x1, 1, 2)).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::PrintCounted(32)));
        assert!(verdicts[..11].iter().all(|v| *v == Verdict::Drop));
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
