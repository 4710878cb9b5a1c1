//! C API of the tcpx engine: `libtcpx_p2p.{a,so}` behind the hand-written `include/tcpx.h`.
//!
//! Every export is `extern "C"`, catches panics, and returns an `int` status; [`status_of`] is
//! the one place a [`tcpx::Error`] becomes a code. Failure text goes to a thread-local slot
//! read by `tcpx_last_error`, so success paths (post, poll, release) never format or allocate.
// The C names are the API's names (one name per concept across Rust and the header).
#![allow(non_camel_case_types)]

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tcpx::engine::Devices;
use tcpx::engine::{
    Config, Direction, Listener, MemId, Memory, Progress, Segment, Session, XferId,
};
use tcpx::Error;

/// Success.
pub const TCPX_OK: c_int = 0;
/// A bad argument (NULL pointer, unknown id, segment outside its region, call out of order).
pub const TCPX_ERR_INVALID: c_int = -1;
/// An operation did not finish within its bound (handshake, `tcpx_transfer_wait`).
pub const TCPX_ERR_TIMEOUT: c_int = -2;
/// The ncclNet plugin failed: not found, not loadable, missing symbols, or a call failed.
pub const TCPX_ERR_PLUGIN: c_int = -3;
/// The session stopped working after an earlier failure; destroy it.
pub const TCPX_ERR_BROKEN: c_int = -4;
/// A feature this build or plugin does not offer (e.g. CUDA memory on a host-only plugin).
pub const TCPX_ERR_UNSUPPORTED: c_int = -5;
/// A configuration value out of range (struct field or environment variable).
pub const TCPX_ERR_CONFIG: c_int = -6;
/// The peer sent something that breaks the protocol (bad connection info, mismatch).
pub const TCPX_ERR_PROTOCOL: c_int = -7;
/// An operating-system I/O failure.
pub const TCPX_ERR_IO: c_int = -8;
/// A bug inside the library panicked; the call was abandoned (see `tcpx_last_error`).
pub const TCPX_ERR_PANIC: c_int = -9;
/// A CUDA failure (driver, context, unpack kernel, event).
pub const TCPX_ERR_GPU: c_int = -10;

/// `kind` of `tcpx_register`: ordinary host memory.
pub const TCPX_MEM_HOST: c_int = 0;
/// `kind` of `tcpx_register`: CUDA device memory on `device`.
pub const TCPX_MEM_CUDA: c_int = 1;

/// `dir` of `tcpx_transfer_post`: this side sends.
pub const TCPX_SEND: c_int = 0;
/// `dir` of `tcpx_transfer_post`: this side receives.
pub const TCPX_RECV: c_int = 1;

/// Engine configuration as C sees it; start from `tcpx_config_default`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct tcpx_config_t {
    /// Channels (send comm + recv comm pairs) per session; both peers must agree.
    pub channels: u32,
    /// Bytes per chunk (one ncclNet request), at most 4 MiB.
    pub chunk_bytes: u32,
    /// In-flight chunks per channel and direction, at most 16.
    pub window: u32,
    /// Transfers that may be live at once per session.
    pub max_transfers: u32,
    /// Segments per transfer.
    pub max_segments: u32,
    /// Plugin device (NIC) of every channel: an index, or -1 = `auto` (the default: the
    /// device(s) nearest the session's GPU, or the NUMA-local ones for host memory), -2 =
    /// `all` (every usable device, nearest first). `TCPX_DEVICES` lists of several devices
    /// have no C form.
    pub device: i32,
    /// Bound on the handshake and on waiting for a silent peer, in milliseconds.
    pub timeout_ms: u64,
    /// Path of an ncclNet plugin; NULL or "" = the embedded `tcpxsock`.
    pub plugin: *const c_char,
    /// The session's CUDA device, made current around the handshake and CUDA registrations
    /// (TCPX binds comms and registrations to the calling thread's current GPU); -1 = the
    /// device current on the thread calling `tcpx_listen`.
    pub gpu: i32,
    /// A transfer shorter than this many chunks is cut into about this many smaller ones
    /// (at least 128 KiB), 1..=64, 1 = never; a session uses the smaller of its two ends'
    /// values. 0 = the default (8 on a host with at least 8 CPUs, else 1). Env
    /// `TCPX_SPLIT_CHUNKS`.
    pub split_chunks: u32,
}

/// One contiguous piece of a transfer (C layout of [`Segment`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct tcpx_segment_t {
    /// Local region, as returned by `tcpx_register`.
    pub mem: u64,
    /// Offset inside the local region.
    pub offset: u64,
    /// Offset at the peer (bookkeeping only: the peers match segments by order).
    pub remote_offset: u64,
    /// Bytes; zero-length segments move nothing.
    pub len: u64,
}

// The header promises these layouts; the C test checks the same numbers on its side.
const _: () = {
    assert!(std::mem::size_of::<tcpx_config_t>() == 48);
    assert!(std::mem::offset_of!(tcpx_config_t, gpu) == 40);
    assert!(std::mem::offset_of!(tcpx_config_t, device) == 20);
    assert!(std::mem::offset_of!(tcpx_config_t, timeout_ms) == 24);
    assert!(std::mem::offset_of!(tcpx_config_t, plugin) == 32);
    assert!(std::mem::size_of::<tcpx_segment_t>() == 32);
    assert!(std::mem::offset_of!(tcpx_segment_t, len) == 24);
};

// Handles travel between C threads (one user at a time), so their contents must be `Send`.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<tcpx_listener_t>();
    send::<tcpx_session_t>();
};

/// First half of the handshake (opaque to C).
pub struct tcpx_listener_t {
    inner: Listener,
}

/// A connected session (opaque to C).
pub struct tcpx_session_t {
    session: Session,
    /// Room for `max_segments` converted segments, so `post` never allocates.
    scratch: Vec<Segment>,
    /// Set while a call runs; still set afterwards only if that call panicked midway, after
    /// which the session's state is unknown and every call answers `TCPX_ERR_BROKEN`.
    poisoned: bool,
}

/// The status code for an engine error. Exhaustive on purpose: a new variant must be mapped.
pub fn status_of(e: &Error) -> c_int {
    match e {
        Error::Invalid(_) | Error::BadMemory(_) => TCPX_ERR_INVALID,
        Error::Timeout(_) => TCPX_ERR_TIMEOUT,
        Error::PluginNotFound { .. }
        | Error::NotSharedObject { .. }
        | Error::NoSymbol { .. }
        | Error::Plugin { .. }
        | Error::MissingFunction { .. }
        | Error::NoDevices { .. }
        | Error::UnknownDeviceOffload { .. } => TCPX_ERR_PLUGIN,
        Error::Broken(_) => TCPX_ERR_BROKEN,
        Error::Unsupported(_) => TCPX_ERR_UNSUPPORTED,
        Error::Config(_) => TCPX_ERR_CONFIG,
        Error::Protocol(_) => TCPX_ERR_PROTOCOL,
        Error::Io(..) => TCPX_ERR_IO,
        Error::Gpu(_) => TCPX_ERR_GPU,
    }
}

thread_local! {
    // Const-initialised: touching it never allocates; only a failure stores text.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(text: String) {
    let bytes: Vec<u8> = text.into_bytes().into_iter().filter(|&b| b != 0).collect();
    let c = CString::new(bytes).unwrap_or_default();
    // try_with: during thread teardown the slot may be gone; the code still reaches C.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(c));
}

fn panic_text(p: &(dyn Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}

/// Runs `f` as the body of the export `name`: a panic or an error becomes a status code
/// with its text stored for `tcpx_last_error`.
fn call(name: &str, f: impl FnOnce() -> Result<c_int, Error>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_last_error(format!("{name}: {e}"));
            status_of(&e)
        }
        Err(p) => {
            set_last_error(format!("{name}: panic: {}", panic_text(&*p)));
            TCPX_ERR_PANIC
        }
    }
}

/// [`call`] on a session handle: rejects NULL and sessions poisoned by an earlier panic.
fn with_session(
    name: &str,
    s: Option<&mut tcpx_session_t>,
    f: impl FnOnce(&mut tcpx_session_t) -> Result<c_int, Error>,
) -> c_int {
    call(name, || {
        let s = s.ok_or(Error::Invalid("session is NULL"))?;
        if s.poisoned {
            return Err(Error::Broken(
                "an earlier call panicked inside this session".into(),
            ));
        }
        s.poisoned = true;
        let r = f(s);
        s.poisoned = false;
        r
    })
}

/// The out-pointer `p` as a reference, or `Invalid` naming `what` when NULL.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T` for the returned lifetime.
unsafe fn out<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T, Error> {
    // SAFETY: the caller guarantees `p` is NULL or an aligned pointer to a `T` it lets us
    // write for `'a`; `as_mut` turns NULL into `None`.
    unsafe { p.as_mut() }.ok_or(Error::Invalid(what))
}

fn config_from_c(c: &tcpx_config_t) -> Result<Config, Error> {
    let plugin = if c.plugin.is_null() {
        None
    } else {
        // SAFETY: the header requires `plugin` to be NULL or NUL-terminated for the call.
        let p = unsafe { CStr::from_ptr(c.plugin) }.to_bytes();
        (!p.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(p)))
    };
    let cfg = Config {
        plugin,
        devices: match c.device {
            -1 => Devices::Auto,
            -2 => Devices::All,
            d => Devices::one(u8::try_from(d).map_err(|_| {
                Error::Config(format!(
                    "device {d}: a device index 0..=255, -1 (auto) or -2 (all)"
                ))
            })?),
        },
        channels: c.channels as usize,
        chunk_bytes: c.chunk_bytes,
        split_chunks: match c.split_chunks {
            0 => tcpx::engine::default_split_chunks(),
            n => u16::try_from(n).unwrap_or(u16::MAX),
        },
        window: c.window as usize,
        max_transfers: c.max_transfers as usize,
        max_segments: c.max_segments as usize,
        timeout: Duration::from_millis(c.timeout_ms),
        gpu: (c.gpu >= 0).then_some(c.gpu),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A NUL-terminated copy of `path` that lives until the process exits. Each distinct path
/// is kept once, so repeated `tcpx_config_from_env` calls do not grow memory.
fn interned(path: &Path) -> *const c_char {
    static PATHS: Mutex<Vec<CString>> = Mutex::new(Vec::new());
    let bytes: Vec<u8> = path
        .as_os_str()
        .as_bytes()
        .iter()
        .copied()
        .filter(|&b| b != 0)
        .collect();
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = paths.iter().find(|p| p.as_bytes() == bytes.as_slice()) {
        return p.as_ptr();
    }
    let c = CString::new(bytes).unwrap_or_default();
    // The CString's buffer is its own heap block: it stays put when `paths` reallocates.
    let ptr = c.as_ptr();
    paths.push(c);
    ptr
}

fn config_to_c(cfg: &Config) -> Result<tcpx_config_t, Error> {
    let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let device = match &cfg.devices {
        Devices::Auto => -1,
        Devices::All => -2,
        Devices::List(l) if l.len() == 1 => i32::from(l[0]),
        Devices::List(l) => {
            return Err(Error::Config(format!(
                "TCPX_DEVICES={l}: the C configuration holds one device (or -1 auto, -2 all)"
            )))
        }
    };
    Ok(tcpx_config_t {
        channels: narrow(cfg.channels),
        chunk_bytes: cfg.chunk_bytes,
        window: narrow(cfg.window),
        max_transfers: narrow(cfg.max_transfers),
        max_segments: narrow(cfg.max_segments),
        device,
        timeout_ms: u64::try_from(cfg.timeout.as_millis()).unwrap_or(u64::MAX),
        plugin: cfg.plugin.as_deref().map_or(std::ptr::null(), interned),
        gpu: cfg.gpu.unwrap_or(-1),
        split_chunks: u32::from(cfg.split_chunks),
    })
}

/// Fills `*cfg` with the built-in defaults (embedded plugin, 2 channels, 512 KiB chunks).
///
/// # Safety
/// `cfg` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_config_default(cfg: *mut tcpx_config_t) -> c_int {
    call("tcpx_config_default", || {
        // SAFETY: `cfg` is NULL (refused) or valid for writes (this function's C contract).
        *unsafe { out(cfg, "cfg is NULL") }? = config_to_c(&Config::default())?;
        Ok(TCPX_OK)
    })
}

/// Fills `*cfg` with the defaults overridden by `TCPX_PLUGIN`, `TCPX_DEVICE`,
/// `TCPX_CHANNELS`, `TCPX_CHUNK_BYTES`, `TCPX_WINDOW`, `TCPX_TIMEOUT_MS`, `TCPX_GPU`.
///
/// # Safety
/// `cfg` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_config_from_env(cfg: *mut tcpx_config_t) -> c_int {
    call("tcpx_config_from_env", || {
        // SAFETY: `cfg` is NULL (refused) or valid for writes (this function's C contract).
        let cfg = unsafe { out(cfg, "cfg is NULL") }?;
        *cfg = config_to_c(&Config::from_env()?)?;
        Ok(TCPX_OK)
    })
}

/// Opens the configured net and one listen comm per channel.
///
/// # Safety
/// `cfg` is NULL or points to a readable config whose `plugin` is NULL or NUL-terminated;
/// `listener` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_listen(
    cfg: *const tcpx_config_t,
    listener: *mut *mut tcpx_listener_t,
) -> c_int {
    call("tcpx_listen", || {
        // SAFETY: `listener` is NULL (refused) or valid for writes (this function's C contract).
        let listener = unsafe { out(listener, "listener out-pointer is NULL") }?;
        *listener = std::ptr::null_mut();
        // SAFETY: `cfg` is NULL (refused) or points to a readable config (this function's C
        // contract); its `plugin` string is read by `config_from_c` under the same contract.
        let cfg = unsafe { cfg.as_ref() }.ok_or(Error::Invalid("cfg is NULL"))?;
        let cfg = config_from_c(cfg)?;
        let net = Session::open_net(&cfg)?;
        let inner = Session::listen(net, cfg)?;
        *listener = Box::into_raw(Box::new(tcpx_listener_t { inner }));
        Ok(TCPX_OK)
    })
}

/// Points `*data`/`*len` at the bytes to hand to the peer; they live as long as `l`.
///
/// # Safety
/// `l` is NULL or a live listener; `data` and `len` are NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_listener_conn_info(
    l: *const tcpx_listener_t,
    data: *mut *const u8,
    len: *mut usize,
) -> c_int {
    call("tcpx_listener_conn_info", || {
        // SAFETY: `l` is NULL (refused) or a live listener from `tcpx_listen` (C contract).
        let l = unsafe { l.as_ref() }.ok_or(Error::Invalid("listener is NULL"))?;
        // SAFETY: `data` is NULL (refused) or valid for writes (this function's C contract).
        let data = unsafe { out(data, "data out-pointer is NULL") }?;
        // SAFETY: `len` is NULL (refused) or valid for writes (this function's C contract).
        let len = unsafe { out(len, "len out-pointer is NULL") }?;
        let info = l.inner.conn_info();
        *data = info.as_ptr();
        *len = info.len();
        Ok(TCPX_OK)
    })
}

/// Frees a listener that will not be connected. NULL is ignored.
///
/// # Safety
/// `l` is NULL or a live listener, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tcpx_listener_destroy(l: *mut tcpx_listener_t) {
    call("tcpx_listener_destroy", || {
        if !l.is_null() {
            // SAFETY: a non-NULL `l` is a live listener, which `tcpx_listen` made with
            // `Box::into_raw`, and the caller does not use it afterwards (C contract).
            drop(unsafe { Box::from_raw(l) });
        }
        Ok(TCPX_OK)
    });
}

/// Completes the handshake with the peer's connection info; consumes `l` on every path.
///
/// # Safety
/// `l` is NULL or a live listener, not used afterwards; `peer` is NULL or readable for
/// `len` bytes; `session` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_listener_connect(
    l: *mut tcpx_listener_t,
    peer: *const u8,
    len: usize,
    session: *mut *mut tcpx_session_t,
) -> c_int {
    call("tcpx_listener_connect", || {
        // Taken first so the listener is freed whatever fails below.
        // SAFETY: a non-NULL `l` is a live listener from `tcpx_listen`'s `Box::into_raw` that
        // the caller gives up with this call (C contract), so it is reclaimed exactly once.
        let l = (!l.is_null()).then(|| unsafe { Box::from_raw(l) });
        // SAFETY: `session` is NULL (refused) or valid for writes (this function's C contract).
        let session = unsafe { out(session, "session out-pointer is NULL") }?;
        *session = std::ptr::null_mut();
        let l = l.ok_or(Error::Invalid("listener is NULL"))?;
        if peer.is_null() {
            return Err(Error::Invalid("peer connection info is NULL"));
        }
        // SAFETY: `peer` is non-NULL (checked above) and readable for `len` bytes for the
        // call (C contract).
        let peer = unsafe { std::slice::from_raw_parts(peer, len) };
        let s = l.inner.connect(peer)?;
        let scratch = Vec::with_capacity(s.config().max_segments);
        *session = Box::into_raw(Box::new(tcpx_session_t {
            session: s,
            scratch,
            poisoned: false,
        }));
        Ok(TCPX_OK)
    })
}

/// Closes every comm and frees the session. NULL is ignored.
///
/// # Safety
/// `s` is NULL or a live session, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tcpx_session_destroy(s: *mut tcpx_session_t) {
    call("tcpx_session_destroy", || {
        if !s.is_null() {
            // SAFETY: a non-NULL `s` is a live session, which `tcpx_listener_connect` made
            // with `Box::into_raw`, and the caller does not use it afterwards (C contract).
            drop(unsafe { Box::from_raw(s) });
        }
        Ok(TCPX_OK)
    });
}

/// Registers `len` bytes at `ptr` on every comm of the session. With a CUDA driver the range
/// is checked against what it knows (device memory of the named GPU inside one allocation for
/// CUDA memory; not device memory for host memory): a contradiction is `TCPX_ERR_INVALID`
/// with the reason in `tcpx_last_error`, and nothing is registered.
///
/// # Safety
/// `s` is NULL or a live session; `ptr..ptr+len` is memory of `kind` that stays valid
/// until `tcpx_deregister` returns; `mem_id` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_register(
    s: *mut tcpx_session_t,
    ptr: *mut c_void,
    len: usize,
    kind: c_int,
    device: c_int,
    mem_id: *mut u64,
) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_register", unsafe { s.as_mut() }, |s| {
        // SAFETY: `mem_id` is NULL (refused) or valid for writes (this function's C contract).
        let mem_id = unsafe { out(mem_id, "mem_id out-pointer is NULL") }?;
        let memory = match kind {
            TCPX_MEM_HOST => Memory::Host,
            TCPX_MEM_CUDA => Memory::Cuda { device },
            _ => {
                return Err(Error::Invalid(
                    "kind is neither TCPX_MEM_HOST nor TCPX_MEM_CUDA",
                ))
            }
        };
        // SAFETY: `ptr..ptr+len` is memory of `kind` that stays valid until `tcpx_deregister`
        // returns (C contract), which is `Session::register`'s contract; the engine rejects a
        // NULL `ptr` itself.
        *mem_id = unsafe { s.session.register(ptr, len, memory) }?.to_raw();
        Ok(TCPX_OK)
    })
}

/// Releases a registration; fails with `TCPX_ERR_INVALID` while chunks on it are in flight.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn tcpx_deregister(s: *mut tcpx_session_t, mem_id: u64) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_deregister", unsafe { s.as_mut() }, |s| {
        s.session.deregister(MemId::from_raw(mem_id))?;
        Ok(TCPX_OK)
    })
}

/// Validates and queues a transfer of `n` segments; chunks move on later polls.
///
/// # Safety
/// `s` is NULL or a live session; `segs` is readable for `n` segments (may be NULL when
/// `n` is 0); `xfer` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_transfer_post(
    s: *mut tcpx_session_t,
    dir: c_int,
    segs: *const tcpx_segment_t,
    n: usize,
    xfer: *mut u64,
) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_transfer_post", unsafe { s.as_mut() }, |s| {
        // SAFETY: `xfer` is NULL (refused) or valid for writes (this function's C contract).
        let xfer = unsafe { out(xfer, "xfer out-pointer is NULL") }?;
        let dir = match dir {
            TCPX_SEND => Direction::Send,
            TCPX_RECV => Direction::Recv,
            _ => return Err(Error::Invalid("dir is neither TCPX_SEND nor TCPX_RECV")),
        };
        let segs: &[tcpx_segment_t] = match (segs.is_null(), n) {
            (_, 0) => &[],
            (true, _) => return Err(Error::Invalid("segs is NULL and n > 0")),
            // SAFETY: non-NULL and readable for `n` segments for the call (C contract).
            (false, n) => unsafe { std::slice::from_raw_parts(segs, n) },
        };
        // Checked here so the scratch vector never grows past its preallocated room.
        if segs.len() > s.session.config().max_segments {
            return Err(Error::Invalid(
                "post: more segments than tcpx_config_t.max_segments",
            ));
        }
        s.scratch.clear();
        s.scratch.extend(segs.iter().map(|c| Segment {
            mem: MemId::from_raw(c.mem),
            offset: c.offset,
            remote_offset: c.remote_offset,
            len: c.len,
        }));
        *xfer = s.session.post(dir, &s.scratch)?.to_raw();
        Ok(TCPX_OK)
    })
}

/// Drives every channel once, then reports on `xfer`: 1 done, 0 pending, < 0 error.
///
/// # Safety
/// `s` is NULL or a live session; `bytes_done` and `bytes_total` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn tcpx_transfer_poll(
    s: *mut tcpx_session_t,
    xfer: u64,
    bytes_done: *mut u64,
    bytes_total: *mut u64,
) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_transfer_poll", unsafe { s.as_mut() }, |s| {
        // SAFETY: `bytes_done` is NULL (refused) or valid for writes (this function's C contract).
        let done = unsafe { out(bytes_done, "bytes_done out-pointer is NULL") }?;
        // SAFETY: `bytes_total` is NULL (refused) or valid for writes (this function's C contract).
        let total = unsafe { out(bytes_total, "bytes_total out-pointer is NULL") }?;
        match s.session.poll(XferId::from_raw(xfer))? {
            Progress::Pending {
                bytes_done,
                bytes_total,
            } => {
                (*done, *total) = (bytes_done, bytes_total);
                Ok(0)
            }
            Progress::Done { bytes } => {
                (*done, *total) = (bytes, bytes);
                Ok(1)
            }
        }
    })
}

/// Polls `xfer` until it is done, at most `timeout_ms`; `*bytes` gets its size.
///
/// # Safety
/// `s` is NULL or a live session; `bytes` is NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tcpx_transfer_wait(
    s: *mut tcpx_session_t,
    xfer: u64,
    timeout_ms: u64,
    bytes: *mut u64,
) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_transfer_wait", unsafe { s.as_mut() }, |s| {
        // SAFETY: `bytes` is NULL (refused) or valid for writes (this function's C contract).
        let bytes = unsafe { out(bytes, "bytes out-pointer is NULL") }?;
        *bytes = s
            .session
            .wait(XferId::from_raw(xfer), Duration::from_millis(timeout_ms))?;
        Ok(TCPX_OK)
    })
}

/// Forgets `xfer`; one still in flight finishes into memory and its slot is reused later.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn tcpx_transfer_release(s: *mut tcpx_session_t, xfer: u64) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_transfer_release", unsafe { s.as_mut() }, |s| {
        s.session.release(XferId::from_raw(xfer))?;
        Ok(TCPX_OK)
    })
}

/// Drives every channel once: 1 if anything moved, 0 if not, < 0 error.
///
/// # Safety
/// `s` is NULL or a live session.
#[no_mangle]
pub unsafe extern "C" fn tcpx_progress(s: *mut tcpx_session_t) -> c_int {
    // SAFETY: `s` is NULL or a session from `tcpx_listener_connect`, not destroyed, used by
    // one thread at a time (this function's C contract); `as_mut` turns NULL into `None`.
    with_session("tcpx_progress", unsafe { s.as_mut() }, |s| {
        Ok(c_int::from(s.session.progress()?))
    })
}

/// A static description of a status code (never NULL).
#[no_mangle]
pub extern "C" fn tcpx_strerror(code: c_int) -> *const c_char {
    let text: &'static CStr = match code {
        TCPX_OK => c"success",
        TCPX_ERR_INVALID => c"invalid argument or call out of order",
        TCPX_ERR_TIMEOUT => c"timed out",
        TCPX_ERR_PLUGIN => c"ncclNet plugin failure",
        TCPX_ERR_BROKEN => c"session broken by an earlier failure",
        TCPX_ERR_UNSUPPORTED => c"unsupported by this build or plugin",
        TCPX_ERR_CONFIG => c"bad configuration",
        TCPX_ERR_PROTOCOL => c"protocol violation by the peer",
        TCPX_ERR_IO => c"I/O error",
        TCPX_ERR_PANIC => c"internal error (panic) in libtcpx_p2p",
        TCPX_ERR_GPU => c"CUDA failure",
        c if c > 0 => c"not an error (positive status)",
        _ => c"unknown status code",
    };
    text.as_ptr()
}

/// The message of the last failed call on this thread, or "" if none failed yet. The text
/// stays valid until the next failing call on the same thread.
#[no_mangle]
pub extern "C" fn tcpx_last_error() -> *const c_char {
    let p = LAST_ERROR.try_with(|slot| {
        slot.try_borrow()
            .ok()
            .and_then(|s| s.as_ref().map(|c| c.as_ptr()))
    });
    p.ok().flatten().unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests;
