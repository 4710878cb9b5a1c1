//! The `extern "C"` functions the C++ shim calls (declared in `cpp/tcpx_nixl.h`), and the
//! plugin entry points libnixl looks up.
//!
//! Each function checks its raw arguments, runs the [`Backend`] method inside `catch_unwind`,
//! logs a failure once, and returns the status [`Error::status`] maps it to.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::backend::{self, Backend, XferArgs};
use crate::config::OPTIONS;
use crate::error::{Arg, Error, Status};
use crate::registry::MdId;
use crate::xfer::{Desc, Op};

/// A borrowed byte string (C `TcpxStr`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TcpxStr {
    /// First byte; may be null when `len` is 0.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl TcpxStr {
    /// Borrows a Rust byte slice for a callback.
    fn of(b: &[u8]) -> Self {
        Self {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }
}

/// One custom parameter (C `TcpxParam`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TcpxParam {
    /// Parameter name.
    pub key: TcpxStr,
    /// Parameter value.
    pub value: TcpxStr,
}

/// Optional transfer arguments (C `TcpxXferOpts`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TcpxXferOpts {
    /// Whether `notif` is to be delivered.
    pub has_notif: bool,
    /// The notification message.
    pub notif: TcpxStr,
}

// The C side (cpp/tcpx_nixl.h, shim.cc) asserts the same sizes and offsets.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Desc>() == 32);
    assert!(offset_of!(Desc, len) == 8);
    assert!(offset_of!(Desc, dev_id) == 16);
    assert!(offset_of!(Desc, md) == 24);
    assert!(size_of::<TcpxStr>() == 16);
    assert!(size_of::<TcpxParam>() == 32);
    assert!(offset_of!(TcpxParam, value) == 16);
    assert!(size_of::<TcpxXferOpts>() == 24);
    assert!(offset_of!(TcpxXferOpts, notif) == 8);
};

/// C `TcpxBytesSink`: copies bytes into a C++ string.
pub type BytesSink = Option<unsafe extern "C" fn(*mut c_void, *const u8, usize) -> bool>;
/// C `TcpxPairSink`: appends a pair of byte strings.
pub type PairSink = Option<unsafe extern "C" fn(*mut c_void, TcpxStr, TcpxStr) -> bool>;

extern "C" {
    fn tcpx_shim_plugin_init() -> *mut c_void;
    fn tcpx_shim_plugin_fini();
    fn tcpx_shim_vtable_mismatches() -> usize;
}

/// Runs `f` with panics caught; logs and maps errors.
fn guard(what: &str, f: impl FnOnce() -> Result<Status, Error>) -> i32 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(s)) => s as i32,
        Ok(Err(e)) => {
            crate::log!(Warn, "{what}: {e}");
            e.status() as i32
        }
        Err(_) => {
            crate::log!(Error, "{what}: internal panic");
            Status::Backend as i32
        }
    }
}

/// Like [`guard`] for functions with no status to return.
fn guard_value<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        crate::log!(Error, "{what}: internal panic");
        fallback
    })
}

/// # Safety
/// `s.ptr` must point to `s.len` readable bytes (or be anything when `s.len` is 0) that stay
/// valid for `'a`.
unsafe fn bytes<'a>(s: TcpxStr) -> Result<&'a [u8], Error> {
    if s.len == 0 {
        return Ok(&[]);
    }
    if s.ptr.is_null() {
        return Err(Error::invalid(
            Arg::Bytes,
            "null pointer with non-zero length",
        ));
    }
    // SAFETY: non-null and, per the caller's contract, `len` readable bytes for `'a`.
    Ok(unsafe { std::slice::from_raw_parts(s.ptr, s.len) })
}

/// # Safety
/// As [`bytes`].
unsafe fn text<'a>(s: TcpxStr, arg: Arg) -> Result<&'a str, Error> {
    // SAFETY: `text` has `bytes`'s contract, which its caller upholds.
    let b = unsafe { bytes(s) }?;
    std::str::from_utf8(b).map_err(|_| Error::invalid(arg, "not UTF-8"))
}

/// # Safety
/// `p` must be null or point to `n` valid descriptors that stay valid for `'a`.
unsafe fn descs<'a>(p: *const Desc, n: usize) -> Result<&'a [Desc], Error> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid(Arg::Descs, "null descriptor array"));
    }
    // SAFETY: non-null, `n` descriptors per the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// # Safety
/// `be` must be null or a pointer from [`tcpx_nixl_backend_create`] not yet destroyed.
unsafe fn backend<'a>(be: *const Backend) -> Result<&'a Backend, Error> {
    // SAFETY: per the caller's contract the pointer is null or a live `Backend`.
    unsafe { be.as_ref() }.ok_or(Error::NoBackend)
}

/// # Safety
/// `out` must be null or writable.
unsafe fn put<T>(out: *mut T, v: T) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(Arg::Metadata, "null output pointer"));
    }
    // SAFETY: non-null and writable per the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// The plugin table: what libnixl's loader asks for first.
///
/// # Safety
/// Called by libnixl's loader; takes no arguments.
#[no_mangle]
pub unsafe extern "C" fn nixl_plugin_init() -> *mut c_void {
    // SAFETY: the shim returns a pointer to its constant-initialised static table.
    unsafe { tcpx_shim_plugin_init() }
}

/// Plugin unload hook: nothing to release (engines are destroyed individually).
///
/// # Safety
/// Called by libnixl's loader; takes no arguments.
#[no_mangle]
pub unsafe extern "C" fn nixl_plugin_fini() {
    // SAFETY: the shim's fini does nothing and cannot fail.
    unsafe { tcpx_shim_plugin_fini() }
}

/// Number of engine vtable slots that are not where NIXL 1.5.x expects them (must be 0).
pub fn vtable_mismatches() -> usize {
    // SAFETY: a pure function of the shim's compiled class layout.
    unsafe { tcpx_shim_vtable_mismatches() }
}

/// Reports each backend option and its default.
///
/// # Safety
/// `sink` must be callable with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_backend_options(sink: PairSink, ctx: *mut c_void) {
    guard_value("get_backend_options", (), || {
        let Some(sink) = sink else { return };
        for (k, v) in OPTIONS {
            // SAFETY: the shim's sink copies both strings before returning.
            if !unsafe { sink(ctx, TcpxStr::of(k.as_bytes()), TcpxStr::of(v.as_bytes())) } {
                crate::log!(Error, "get_backend_options: could not return option {k}");
                return;
            }
        }
    })
}

/// Whether the backend serves VRAM in this process.
#[no_mangle]
pub extern "C" fn tcpx_nixl_vram_supported() -> bool {
    guard_value("get_backend_mems", false, backend::vram_supported)
}

/// Creates a backend; null (after a log line saying why) when the arguments are rejected.
///
/// # Safety
/// `agent` and each parameter must be valid byte strings; `params` must point to `n_params`
/// entries (or be null when 0).
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_backend_create(
    agent: TcpxStr,
    params: *const TcpxParam,
    n_params: usize,
) -> *mut Backend {
    let made = catch_unwind(AssertUnwindSafe(|| -> Result<Backend, Error> {
        // SAFETY: `agent` points to its `len` bytes for the call (this function's contract).
        let agent = unsafe { text(agent, Arg::Agent) }?;
        let raw = if n_params == 0 {
            &[][..]
        } else if params.is_null() {
            return Err(Error::invalid(Arg::Bytes, "null parameter array"));
        } else {
            // SAFETY: non-null, `n_params` entries per this function's contract.
            unsafe { std::slice::from_raw_parts(params, n_params) }
        };
        let mut kv = Vec::with_capacity(raw.len());
        for p in raw {
            // SAFETY: each parameter's strings point to their `len` bytes for the call (this
            // function's contract).
            let key = unsafe { text(p.key, Arg::Bytes) }?;
            // SAFETY: as for the key.
            let value = unsafe { text(p.value, Arg::Bytes) }.map_err(|_| Error::Config {
                key: key.to_owned(),
                reason: "value is not UTF-8".into(),
            })?;
            kv.push((key, value));
        }
        let b = Backend::new(agent, kv)?;
        crate::log!(
            Info,
            "agent {:?}: control listener at {} ({} channels)",
            b.agent(),
            b.control().advertised(),
            b.config().channels
        );
        Ok(b)
    }));
    match made {
        Ok(Ok(b)) => Box::into_raw(Box::new(b)),
        Ok(Err(e)) => {
            crate::log!(Error, "creating the TCPX backend failed: {e}");
            std::ptr::null_mut()
        }
        Err(_) => {
            crate::log!(Error, "creating the TCPX backend failed: internal panic");
            std::ptr::null_mut()
        }
    }
}

/// Destroys a backend from [`tcpx_nixl_backend_create`]; closes its listener.
///
/// # Safety
/// `be` must be null or a live backend pointer, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_backend_destroy(be: *mut Backend) {
    if be.is_null() {
        return;
    }
    guard_value("destroy_engine", (), || {
        // SAFETY: `be` came from `Box::into_raw` in create and is destroyed exactly once.
        drop(unsafe { Box::from_raw(be) })
    })
}

/// Reports the effective configuration through `sink`.
///
/// # Safety
/// `be` live or null; `sink` callable with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_backend_params(
    be: *const Backend,
    sink: PairSink,
    ctx: *mut c_void,
) -> i32 {
    guard("getBackendParams", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let b = unsafe { backend(be) }?;
        let sink = sink.ok_or(Error::Output("backend params"))?;
        let bound = b
            .control()
            .listener()
            .local_addr()
            .map_err(|err| Error::Io {
                what: "reading the control listener's address",
                err,
            })?;
        for (k, v) in b.config().to_params(bound) {
            // SAFETY: the shim's sink copies both strings before returning.
            if !unsafe { sink(ctx, TcpxStr::of(k.as_bytes()), TcpxStr::of(v.as_bytes())) } {
                return Err(Error::Output("backend params"));
            }
        }
        Ok(Status::Success)
    })
}

/// `supportsRemote`.
///
/// # Safety
/// `be` must be null or a live backend pointer.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_supports_remote(be: *const Backend) -> bool {
    guard_value("supportsRemote", false, || {
        // SAFETY: `be` is null or the live backend the shim's engine owns (this function's
        // contract); the engine destroys it only after its last call.
        unsafe { backend(be) }.is_ok_and(|b| b.supports_remote())
    })
}

/// `supportsLocal`.
///
/// # Safety
/// `be` must be null or a live backend pointer.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_supports_local(be: *const Backend) -> bool {
    guard_value("supportsLocal", false, || {
        // SAFETY: `be` is null or the live backend the shim's engine owns (this function's
        // contract); the engine destroys it only after its last call.
        unsafe { backend(be) }.is_ok_and(|b| b.supports_local())
    })
}

/// `supportsNotif`.
///
/// # Safety
/// `be` must be null or a live backend pointer.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_supports_notif(be: *const Backend) -> bool {
    guard_value("supportsNotif", false, || {
        // SAFETY: `be` is null or the live backend the shim's engine owns (this function's
        // contract); the engine destroys it only after its last call.
        unsafe { backend(be) }.is_ok_and(|b| b.supports_notif())
    })
}

/// `registerMem`. `meta` (the user's opaque bytes) is not needed for DRAM or VRAM.
///
/// # Safety
/// `be` live or null; `desc` and `out_md` valid pointers; `meta` a valid byte string.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_register_mem(
    be: *const Backend,
    desc: *const Desc,
    _meta: TcpxStr,
    mem: i32,
    out_md: *mut MdId,
) -> i32 {
    guard("registerMem", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let b = unsafe { backend(be) }?;
        // SAFETY: `desc` is null or points to one descriptor the caller keeps for the call.
        let d = unsafe { desc.as_ref() }.ok_or(Error::invalid(Arg::Descs, "null descriptor"))?;
        let md = b.register_mem(d, mem)?;
        // SAFETY: `out_md` is null (refused) or points to the shim's writable `MdId`.
        unsafe { put(out_md, md) }?;
        Ok(Status::Success)
    })
}

/// `deregisterMem`.
///
/// # Safety
/// `be` live or null.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_deregister_mem(be: *const Backend, md: MdId) -> i32 {
    guard("deregisterMem", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        unsafe { backend(be) }?.deregister_mem(md)?;
        Ok(Status::Success)
    })
}

/// Hands `data` to a bytes sink.
///
/// # Safety
/// `sink` must be callable with `ctx`.
unsafe fn give(sink: BytesSink, ctx: *mut c_void, data: &[u8], what: &'static str) -> Status {
    match sink {
        // SAFETY: the shim's sink copies the bytes before returning.
        Some(f) if unsafe { f(ctx, data.as_ptr(), data.len()) } => Status::Success,
        _ => Error::Output(what).status(),
    }
}

/// `getPublicData`: the region token of a local registration.
///
/// # Safety
/// `be` live or null; `sink` callable with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_get_public_data(
    be: *const Backend,
    md: MdId,
    sink: BytesSink,
    ctx: *mut c_void,
) -> i32 {
    guard("getPublicData", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let token = unsafe { backend(be) }?.public_data(md)?;
        // SAFETY: `sink` is the shim's byte sink for `ctx` (this function's contract); it copies
        // `token` before returning.
        Ok(unsafe { give(sink, ctx, &token, "public data") })
    })
}

/// `loadRemoteMD`.
///
/// # Safety
/// `be` live or null; `desc`, `out_md` valid; `blob` and `agent` valid byte strings.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_load_remote_md(
    be: *const Backend,
    desc: *const Desc,
    blob: TcpxStr,
    mem: i32,
    agent: TcpxStr,
    out_md: *mut MdId,
) -> i32 {
    guard("loadRemoteMD", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let b = unsafe { backend(be) }?;
        // SAFETY: `desc` is null or points to one descriptor the caller keeps for the call.
        let d = unsafe { desc.as_ref() }.ok_or(Error::invalid(Arg::Descs, "null descriptor"))?;
        // SAFETY: `blob` and `agent` point to their `len` bytes, which the shim's
        // `std::string`s keep alive for the call.
        let (blob, agent) = unsafe { (bytes(blob)?, text(agent, Arg::Agent)?) };
        let md = b.load_remote_md(d, blob, mem, agent)?;
        // SAFETY: `out_md` is null (refused) or points to the shim's writable `MdId`.
        unsafe { put(out_md, md) }?;
        Ok(Status::Success)
    })
}

/// `loadLocalMD`.
///
/// # Safety
/// `be` live or null; `out_md` valid.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_load_local_md(
    be: *const Backend,
    md: MdId,
    out_md: *mut MdId,
) -> i32 {
    guard("loadLocalMD", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let alias = unsafe { backend(be) }?.load_local_md(md)?;
        // SAFETY: `out_md` is null (refused) or points to the shim's writable `MdId`.
        unsafe { put(out_md, alias) }?;
        Ok(Status::Success)
    })
}

/// `unloadMD`.
///
/// # Safety
/// `be` live or null.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_unload_md(be: *const Backend, md: MdId) -> i32 {
    guard("unloadMD", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        unsafe { backend(be) }?.unload_md(md)?;
        Ok(Status::Success)
    })
}

/// `getConnInfo`.
///
/// # Safety
/// `be` live or null; `sink` callable with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_get_conn_info(
    be: *const Backend,
    sink: BytesSink,
    ctx: *mut c_void,
) -> i32 {
    guard("getConnInfo", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let b = unsafe { backend(be) }?;
        // SAFETY: `sink` is the shim's byte sink for `ctx` (this function's contract); it
        // copies the bytes, which `b` keeps alive for the call.
        Ok(unsafe { give(sink, ctx, b.conn_info(), "connection info") })
    })
}

/// `loadRemoteConnInfo`.
///
/// # Safety
/// `be` live or null; `agent` and `info` valid byte strings.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_load_remote_conn_info(
    be: *const Backend,
    agent: TcpxStr,
    info: TcpxStr,
) -> i32 {
    guard("loadRemoteConnInfo", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract); the
        // strings point to their `len` bytes, kept alive by the shim for the call.
        let (b, agent, info) = unsafe { (backend(be)?, text(agent, Arg::Agent)?, bytes(info)?) };
        b.load_remote_conn_info(agent, info)?;
        Ok(Status::Success)
    })
}

/// `connect`.
///
/// # Safety
/// `be` live or null; `agent` a valid byte string.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_connect(be: *const Backend, agent: TcpxStr) -> i32 {
    guard("connect", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract); the
        // strings point to their `len` bytes, kept alive by the shim for the call.
        let (b, agent) = unsafe { (backend(be)?, text(agent, Arg::Agent)?) };
        b.connect(agent)?;
        Ok(Status::Success)
    })
}

/// `disconnect`.
///
/// # Safety
/// `be` live or null; `agent` a valid byte string.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_disconnect(be: *const Backend, agent: TcpxStr) -> i32 {
    guard("disconnect", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract); the
        // strings point to their `len` bytes, kept alive by the shim for the call.
        let (b, agent) = unsafe { (backend(be)?, text(agent, Arg::Agent)?) };
        b.disconnect(agent)?;
        Ok(Status::Success)
    })
}

/// The raw arguments shared by prep and post.
struct RawXfer {
    op: i32,
    local: *const Desc,
    n_local: usize,
    local_mem: i32,
    remote: *const Desc,
    n_remote: usize,
    remote_mem: i32,
    agent: TcpxStr,
    opts: *const TcpxXferOpts,
}

impl RawXfer {
    /// # Safety
    /// Every pointer must be valid for its count (or null) for `'a`.
    unsafe fn args<'a>(&self) -> Result<XferArgs<'a>, Error> {
        // SAFETY: `opts` is null or points to the shim's `TcpxXferOpts` for `'a` (this
        // function's contract).
        let opts = unsafe { self.opts.as_ref() };
        let notif = match opts {
            // SAFETY: a notification the shim passes points to its `len` bytes for `'a`.
            Some(o) if o.has_notif => Some(unsafe { bytes(o.notif) }?),
            _ => None,
        };
        // SAFETY: each descriptor array is null or holds its count of descriptors, and the
        // agent name points to its `len` bytes, all valid for `'a` (this function's contract).
        let (local, remote, agent) = unsafe {
            (
                descs(self.local, self.n_local)?,
                descs(self.remote, self.n_remote)?,
                text(self.agent, Arg::Agent)?,
            )
        };
        Ok(XferArgs {
            op: Op::from_raw(self.op)?,
            local,
            local_mem: self.local_mem,
            remote,
            remote_mem: self.remote_mem,
            agent,
            notif,
        })
    }
}

/// `prepXfer`: on success `*handle` is the new request id.
///
/// # Safety
/// `be` live or null; arrays valid for their counts; `agent` a valid byte string; `opts` null
/// or valid; `handle` valid.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_prep_xfer(
    be: *const Backend,
    op: i32,
    local: *const Desc,
    n_local: usize,
    local_mem: i32,
    remote: *const Desc,
    n_remote: usize,
    remote_mem: i32,
    agent: TcpxStr,
    opts: *const TcpxXferOpts,
    handle: *mut usize,
) -> i32 {
    let raw = RawXfer {
        op,
        local,
        n_local,
        local_mem,
        remote,
        n_remote,
        remote_mem,
        agent,
        opts,
    };
    guard("prepXfer", || {
        // SAFETY: `be` is null or the shim engine's live backend, and every array and string
        // in `raw` is valid for its count for this call (this function's contract).
        let (b, a) = unsafe { (backend(be)?, raw.args()?) };
        let id = b.prep_xfer(&a)?;
        // SAFETY: `handle` is null (refused) or points to the shim's writable request id.
        unsafe { put(handle, id) }?;
        Ok(Status::Success)
    })
}

/// `postXfer`: `*handle` is the prepared request (0 = prepare now, written back).
///
/// # Safety
/// As [`tcpx_nixl_prep_xfer`].
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_post_xfer(
    be: *const Backend,
    op: i32,
    local: *const Desc,
    n_local: usize,
    local_mem: i32,
    remote: *const Desc,
    n_remote: usize,
    remote_mem: i32,
    agent: TcpxStr,
    opts: *const TcpxXferOpts,
    handle: *mut usize,
) -> i32 {
    let raw = RawXfer {
        op,
        local,
        n_local,
        local_mem,
        remote,
        n_remote,
        remote_mem,
        agent,
        opts,
    };
    guard("postXfer", || {
        if handle.is_null() {
            return Err(Error::invalid(Arg::Request, "null handle pointer"));
        }
        // SAFETY: `be` is null or the shim engine's live backend, and every array and string
        // in `raw` is valid for its count for this call (this function's contract).
        let (b, a) = unsafe { (backend(be)?, raw.args()?) };
        // SAFETY: `handle` is non-null (checked above) and points to the shim's aligned,
        // initialised request id (this function's contract).
        let mut h = unsafe { handle.read() };
        let s = b.post_xfer(&a, &mut h);
        // SAFETY: as for the read: the same non-null, writable request id.
        unsafe { handle.write(h) };
        s
    })
}

/// `checkXfer`.
///
/// # Safety
/// `be` live or null.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_check_xfer(be: *const Backend, handle: usize) -> i32 {
    guard("checkXfer", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        unsafe { backend(be) }?.check_xfer(handle)
    })
}

/// `releaseReqH`.
///
/// # Safety
/// `be` live or null.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_release_req(be: *const Backend, handle: usize) -> i32 {
    guard("releaseReqH", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        unsafe { backend(be) }?.release_req(handle)?;
        Ok(Status::Success)
    })
}

/// `getNotifs`: appends every queued `(sender, message)` through `sink`.
///
/// # Safety
/// `be` live or null; `sink` callable with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_get_notifs(
    be: *const Backend,
    sink: PairSink,
    ctx: *mut c_void,
) -> i32 {
    guard("getNotifs", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract).
        let b = unsafe { backend(be) }?;
        let sink = sink.ok_or(Error::Output("notifications"))?;
        b.take_notifs(|from, msg| {
            // SAFETY: the shim's sink copies both strings before returning.
            unsafe { sink(ctx, TcpxStr::of(from.as_bytes()), TcpxStr::of(msg)) }
        })?;
        Ok(Status::Success)
    })
}

/// `genNotif`.
///
/// # Safety
/// `be` live or null; `agent` and `msg` valid byte strings.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_gen_notif(
    be: *const Backend,
    agent: TcpxStr,
    msg: TcpxStr,
) -> i32 {
    guard("genNotif", || {
        // SAFETY: `be` is null or the shim engine's live backend (this function's contract); the
        // strings point to their `len` bytes, kept alive by the shim for the call.
        let (b, agent, msg) = unsafe { (backend(be)?, text(agent, Arg::Agent)?, bytes(msg)?) };
        b.gen_notif(agent, msg)?;
        Ok(Status::Success)
    })
}

/// `estimateXferCost`: the expected duration and margin, in microseconds.
///
/// # Safety
/// `be` live or null; `agent` a valid byte string; `out_us` and `out_margin_us` writable.
#[no_mangle]
pub unsafe extern "C" fn tcpx_nixl_estimate_xfer_cost(
    be: *const Backend,
    agent: TcpxStr,
    bytes: u64,
    handle: usize,
    out_us: *mut i64,
    out_margin_us: *mut i64,
) -> i32 {
    guard("estimateXferCost", || {
        // SAFETY: `be` is null or the shim engine's live backend; `agent` points to its `len`
        // bytes for the call (this function's contract).
        let (b, agent) = unsafe { (backend(be)?, text(agent, Arg::Agent)?) };
        let (d, m) = b.estimate_xfer_cost(agent, bytes, handle)?;
        let us = |t: std::time::Duration| t.as_micros().min(i64::MAX as u128) as i64;
        // SAFETY: `out_us` is null (refused) or points to the shim's writable `int64_t`.
        unsafe { put(out_us, us(d).max(1)) }?;
        // SAFETY: as above, for `out_margin_us`.
        unsafe { put(out_margin_us, us(m)) }?;
        Ok(Status::Success)
    })
}

#[cfg(test)]
mod tests;
