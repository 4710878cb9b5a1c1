//! The `extern "C"` functions of the v7 table: argument checks, panic containment and the
//! one mapping from [`Error`] to `ncclResult_t`. All behaviour lives in [`crate::comm`].

use core::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tcpx_core::abi::v7::Properties;
use tcpx_core::abi::{result, DevHandle, Logger, NcclResult, HANDLE_MAX_SIZE, PTR_CUDA, PTR_HOST};
use tcpx_core::abi::{NET_DEVICE_HOST, NET_DEVICE_UNPACK, NET_UNPACK_VERSION};
use tcpx_core::unpack::PAGE_SIZE;
use tcpx_core::wire::sock::SockHandle;

use crate::comm::{unpack_device, Connecting, ListenComm, RecvComm, Request, SendComm};
use crate::error::{Error, Result};
use crate::{config, cuda, dev};

/// Runs `f`, turning errors into their code and panics into `ncclInternalError`.
fn guard(f: impl FnOnce() -> Result<()>) -> NcclResult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => result::SUCCESS,
        Ok(Err(e)) => {
            crate::log_warn(&format!("tcpxsock: {e}"));
            e.code()
        }
        Err(_) => {
            crate::log_warn("tcpxsock: internal panic");
            result::INTERNAL_ERROR
        }
    }
}

/// The out-pointer `p`, or an error naming `what` when it is NULL.
///
/// # Safety
/// `p` is NULL or an aligned pointer to a `T` that nothing else accesses for `'a`.
// The &'static str is only the error context; the borrow comes from the raw pointer.
#[allow(clippy::mut_from_ref)]
unsafe fn out<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T> {
    // SAFETY: NULL becomes `None`; otherwise valid and unaliased for `'a` (the caller's
    // contract).
    unsafe { p.as_mut() }.ok_or(Error::InvalidArgument(what))
}

/// The optional out-pointer `p`.
///
/// # Safety
/// As [`out`].
unsafe fn opt_out<'a, T>(p: *mut T) -> Option<&'a mut T> {
    // SAFETY: as in `out`.
    unsafe { p.as_mut() }
}

/// A comm or request this plugin handed out, shared: requests live inside their comm, so an
/// exclusive borrow of either would alias the other.
///
/// # Safety
/// `p` is NULL or a live object of type `T` that this plugin handed out, not freed for `'a`.
unsafe fn ours<'a, T>(p: *mut c_void, what: &'static str) -> Result<&'a T> {
    // SAFETY: NULL becomes `None`; otherwise a live `T` of ours (the caller's contract), and
    // only read through shared references (every method used from here takes `&self`).
    unsafe { p.cast::<T>().as_ref() }.ok_or(Error::InvalidArgument(what))
}

/// Which of this plugin's comms a pointer names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CommKind {
    Send,
    Recv,
}

/// The send and recv comms handed out and not yet closed, by address: `regMr` is given either
/// kind through one `void*`, and learns here which it is (setup calls only; never the data
/// path).
static COMMS: std::sync::Mutex<std::collections::BTreeMap<usize, CommKind>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn comms() -> std::sync::MutexGuard<'static, std::collections::BTreeMap<usize, CommKind>> {
    COMMS.lock().unwrap_or_else(|e| e.into_inner())
}

fn size_arg(size: c_int) -> Result<usize> {
    usize::try_from(size).map_err(|_| Error::InvalidArgument("negative size"))
}

/// Tags `Mr`s so a foreign mhandle is caught before its fields are trusted.
const MR_MAGIC: u32 = 0x524d_5854;

/// A registered region. Registration is bookkeeping only on the TCP path: the type decides
/// how requests on it travel (CUDA sends are staged, CUDA receives land in bounce pages).
struct Mr {
    magic: u32,
    kind: c_int,
    /// The GPU a CUDA region is bound to: the calling thread's current one at `regMr`, as TCPX
    /// binds it (which is also the buffer's own GPU: another is refused).
    ordinal: usize,
}

/// The CUDA device of `mhandle`'s region, or `None` for host / NULL mhandles.
///
/// # Safety
/// `mhandle` is NULL or an `Mr` from [`reg_mr`] not yet deregistered (the magic catches some
/// mistakes, but reading a foreign pointer is already undefined).
unsafe fn mr_cuda(mhandle: *mut c_void) -> Option<usize> {
    // SAFETY: NULL becomes `None`; otherwise a live `Mr` from `reg_mr` (the caller's
    // contract).
    let mr = unsafe { mhandle.cast::<Mr>().as_ref() }?;
    (mr.magic == MR_MAGIC && mr.kind == PTR_CUDA).then_some(mr.ordinal)
}

pub(crate) unsafe extern "C" fn init(logger: Logger) -> NcclResult {
    guard(|| {
        crate::set_logger(logger);
        // A bad TCPX_SOCK_* value is an error, as everywhere else (the log names it).
        if let Err(e) = config::check() {
            crate::log_warn(&format!("tcpxsock: {e}"));
            return Err(Error::InvalidArgument(
                "bad TCPX_SOCK_* value (see the log)",
            ));
        }
        let cfg = config::current();
        let devs = dev::discover(cfg.ifname.as_deref())?;
        if devs.is_empty() {
            return Err(Error::Internal(
                "no network interface matches TCPX_SOCK_IFNAME",
            ));
        }
        dev::install(devs);
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn devices(ndev: *mut c_int) -> NcclResult {
    guard(|| {
        // SAFETY: `ndev` is NULL or NCCL's out-pointer for this call.
        *unsafe { out(ndev, "ndev") }? = dev::count() as c_int;
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn get_properties(d: c_int, props: *mut Properties) -> NcclResult {
    guard(|| {
        // SAFETY: `props` is NULL or NCCL's out-pointer for this call (a v7 `ncclNetProperties_t`).
        let p = unsafe { out(props, "props") }?;
        let dv = dev::get(d)?;
        let unpack = unpack_device(&config::current());
        *p = Properties {
            name: dv.name.as_ptr().cast_mut(),
            pci_path: dv
                .pci_path
                .as_ref()
                .map_or(core::ptr::null_mut(), |c| c.as_ptr().cast_mut()),
            guid: d as u64,
            // CUDA sends are staged through pinned memory, CUDA receives land in bounce pages.
            ptr_support: if cuda::present() {
                PTR_HOST | PTR_CUDA
            } else {
                PTR_HOST
            },
            speed: dv.speed_mbps,
            port: 0,
            latency: 0.0,
            max_comms: 65536,
            max_recvs: 1,
            net_device_type: if unpack {
                NET_DEVICE_UNPACK
            } else {
                NET_DEVICE_HOST
            },
            net_device_version: if unpack { NET_UNPACK_VERSION } else { 0 },
        };
        Ok(())
    })
}

/// The 128 bytes of an ncclNet connection handle.
///
/// # Safety
/// `handle` is NULL or points to `HANDLE_MAX_SIZE` writable bytes nothing else accesses for
/// `'a`.
unsafe fn handle_bytes<'a>(handle: *mut c_void) -> Result<&'a mut [u8]> {
    if handle.is_null() {
        return Err(Error::InvalidArgument("NULL handle"));
    }
    // SAFETY: non-NULL, and the caller's contract gives `HANDLE_MAX_SIZE` bytes (NCCL's
    // handles are NCCL_NET_HANDLE_MAXSIZE = 128 bytes).
    Ok(unsafe { core::slice::from_raw_parts_mut(handle.cast::<u8>(), HANDLE_MAX_SIZE) })
}

pub(crate) unsafe extern "C" fn listen(
    d: c_int,
    handle: *mut c_void,
    listen_comm: *mut *mut c_void,
) -> NcclResult {
    guard(|| {
        // SAFETY: `listenComm` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(listen_comm, "listenComm") }?;
        // SAFETY: `handle` is NULL or the caller's 128-byte handle buffer (the v7 contract).
        let l = ListenComm::new(d, unsafe { handle_bytes(handle) }?)?;
        *slot = Box::into_raw(l).cast();
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn connect(
    _dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    send_dev_comm: *mut *mut DevHandle,
) -> NcclResult {
    guard(|| {
        // SAFETY: `sendComm` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(send_comm, "sendComm") }?;
        *slot = core::ptr::null_mut();
        // SAFETY: `handle` is NULL or the 128-byte handle from the peer's `listen`, which
        // NCCL passes again on every retry of this connect (the v7 contract).
        let hb = unsafe { handle_bytes(handle) }?;
        let not_ours = |_| Error::InvalidArgument("not a tcpxsock handle");
        let h = SockHandle::parse(hb).map_err(not_ours)?;
        let raw = SockHandle::stage(hb).map_err(not_ours)? as usize;
        // The connect in progress lives in the caller's handle between calls.
        let mut stage = if raw == 0 {
            Connecting::start(&h)?
        } else {
            // SAFETY: a non-zero stage was stored by an earlier call with this handle.
            unsafe { Box::from_raw(raw as *mut Connecting) }
        };
        // TCPX's connect never touches `sendDevComm` (send comms have no device handle); host
        // mode clears it.
        if !stage.tcpx() {
            // SAFETY: `sendDevComm` is NULL or NCCL's out-pointer for this call.
            if let Some(d) = unsafe { opt_out(send_dev_comm) } {
                *d = core::ptr::null_mut();
            }
        }
        match stage.step() {
            Ok(true) => {
                SockHandle::set_stage(hb, 0).map_err(not_ours)?;
                let c = Box::into_raw(stage.finish()?);
                comms().insert(c as usize, CommKind::Send);
                *slot = c.cast();
                Ok(())
            }
            Ok(false) => {
                let p = Box::into_raw(stage) as usize as u64;
                SockHandle::set_stage(hb, p).map_err(not_ours)?;
                Ok(())
            }
            Err(e) => {
                SockHandle::set_stage(hb, 0).map_err(not_ours)?;
                Err(e)
            }
        }
    })
}

pub(crate) unsafe extern "C" fn accept(
    listen_comm: *mut c_void,
    recv_comm: *mut *mut c_void,
    recv_dev_comm: *mut *mut DevHandle,
) -> NcclResult {
    guard(|| {
        // SAFETY: `recvComm` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(recv_comm, "recvComm") }?;
        *slot = core::ptr::null_mut();
        // SAFETY: `listen_comm` is NULL or a listen comm from `listen` not yet closed, which
        // NCCL drives from one thread at a time (so the exclusive borrow is unaliased).
        let l = unsafe { out(listen_comm.cast::<ListenComm>(), "listenComm") }?;
        // SAFETY: `recvDevComm` is NULL or NCCL's out-pointer for this call.
        let dev = unsafe { opt_out(recv_dev_comm) };
        // TCPX fills the caller's device handle in place: with `*recvDevComm == NULL` it would
        // write through NULL once the comm is there. Refused before anything moves, so a later
        // call with a handle still gets the connection.
        if l.tcpx() && dev.as_ref().is_some_and(|d| d.is_null()) {
            return Err(Error::Internal(
                "accept: *recvDevComm is NULL; TCPX mode fills the caller's \
                 ncclNetDeviceHandle in place (pass a pointer to a zeroed one)",
            ));
        }
        if let Some(c) = l.accept()? {
            if let Some(d) = dev {
                // SAFETY: a non-NULL `*recvDevComm` is the caller's device handle to fill
                // in place (TCPX's accept contract).
                match unsafe { opt_out(*d) } {
                    Some(h) if c.tcpx() => {
                        c.fill_dev_handle(h);
                    }
                    _ => *d = core::ptr::null_mut(),
                }
            }
            let c = Box::into_raw(c);
            comms().insert(c as usize, CommKind::Recv);
            *slot = c.cast();
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn reg_mr(
    comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    kind: c_int,
    mhandle: *mut *mut c_void,
) -> NcclResult {
    guard(|| {
        // SAFETY: `mhandle` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(mhandle, "mhandle") }?;
        *slot = core::ptr::null_mut();
        let len = size_arg(size)?;
        if comm.is_null() && unpack_device(&config::current()) {
            return Err(Error::Internal("regMr with a NULL comm (TCPX refuses it)"));
        }
        let ordinal = match kind {
            PTR_HOST => 0,
            PTR_CUDA if !cuda::present() => {
                // guard() logs the error; NCCL-style callers then fall back to host memory.
                return Err(Error::InvalidArgument(
                    "regMr(CUDA): no CUDA driver or device on this host",
                ));
            }
            PTR_CUDA if data as usize % PAGE_SIZE != 0 => {
                return Err(Error::Internal(
                    "regMr(CUDA): address not 4096-byte aligned; TCPX registers whole pages \
                     (register from the 4 KiB boundary below the buffer)",
                ));
            }
            PTR_CUDA => {
                // TCPX binds a CUDA registration to the calling thread's current GPU.
                let bound = cuda::home_ordinal();
                if len > 0 && !data.is_null() {
                    let owner = cuda::buffer_ordinal(data, len)?;
                    if owner != bound {
                        crate::log_warn(&format!(
                            "tcpxsock: regMr(CUDA) of GPU {owner}'s memory while GPU {bound} is \
                             current on the calling thread"
                        ));
                        return Err(Error::Internal(
                            "regMr(CUDA): the buffer is not on the calling thread's current \
                             GPU, which TCPX binds the registration to",
                        ));
                    }
                }
                // What CUDA transfers on this comm need (staging ring, landing streams) is
                // made now, at setup: made at the first transfer instead, the driver calls
                // can wait behind a kernel of this context that itself waits for that transfer
                // (NCCL's kernels do), and neither ever moves.
                let kind = comms().get(&(comm as usize)).copied();
                match kind {
                    Some(CommKind::Send) => {
                        // SAFETY: the table holds only live comms of that kind (removed at
                        // close).
                        let c = unsafe { ours::<SendComm>(comm, "sendComm") }?;
                        c.prepare_cuda(bound)?;
                    }
                    Some(CommKind::Recv) => {
                        // SAFETY: as above.
                        let c = unsafe { ours::<RecvComm>(comm, "recvComm") }?;
                        c.prepare_cuda()?;
                    }
                    None => {}
                }
                bound
            }
            _ => return Err(Error::InvalidArgument("regMr: unsupported pointer type")),
        };
        *slot = Box::into_raw(Box::new(Mr {
            magic: MR_MAGIC,
            kind,
            ordinal,
        }))
        .cast();
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn dereg_mr(_comm: *mut c_void, mhandle: *mut c_void) -> NcclResult {
    guard(|| {
        if !mhandle.is_null() {
            // SAFETY: non-NULL mhandles come from reg_mr's Box::into_raw.
            drop(unsafe { Box::from_raw(mhandle.cast::<Mr>()) });
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn isend(
    send_comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    _tag: c_int,
    mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    guard(|| {
        // SAFETY: `request` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(request, "request") }?;
        *slot = core::ptr::null_mut();
        // SAFETY: `send_comm` is NULL or a send comm from `connect` not yet closed.
        let c = unsafe { ours::<SendComm>(send_comm, "sendComm") }?;
        if c.tcpx() && mhandle.is_null() {
            return Err(Error::Internal(
                "isend with a NULL mhandle (TCPX refuses it)",
            ));
        }
        // SAFETY: `mhandle` is NULL or a registration from `reg_mr` on this comm, still
        // registered (NCCL deregisters only after the requests using it completed).
        let cuda = unsafe { mr_cuda(mhandle) };
        *slot = c
            .isend(data.cast(), size_arg(size)?, cuda)?
            .map_or(core::ptr::null_mut(), |r| r.cast_mut().cast());
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn irecv(
    recv_comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut c_int,
    _tags: *mut c_int,
    mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    guard(|| {
        // SAFETY: `request` is NULL or NCCL's out-pointer for this call.
        let slot = unsafe { out(request, "request") }?;
        *slot = core::ptr::null_mut();
        if n != 1 {
            return Err(Error::Internal(
                "irecv supports exactly one buffer (maxRecvs 1)",
            ));
        }
        // SAFETY: `recv_comm` is NULL or a recv comm from `accept` not yet closed.
        let c = unsafe { ours::<RecvComm>(recv_comm, "recvComm") }?;
        // SAFETY: `mhandles` is NULL or NCCL's array of `n` (= 1, checked) mhandles.
        let mh = unsafe { opt_out(mhandles) }.map_or(core::ptr::null_mut(), |m| *m);
        if c.tcpx() && mh.is_null() {
            return Err(Error::Internal(
                "irecv with a NULL mhandle (TCPX refuses it)",
            ));
        }
        // SAFETY: `data` is NULL or NCCL's array of `n` (= 1) buffer pointers.
        let buf = unsafe { opt_out(data) }.map_or(core::ptr::null_mut(), |d| *d);
        // SAFETY: `sizes` is NULL or NCCL's array of `n` (= 1) sizes.
        let size = size_arg(*unsafe { out(sizes, "sizes") }?)?;
        // SAFETY: `mh` is NULL or a registration from `reg_mr` on this comm, still registered
        // (NCCL deregisters only after the requests using it completed).
        let cuda = unsafe { mr_cuda(mh) }.is_some();
        *slot = c.irecv(buf.cast(), size, cuda)?.cast_mut().cast();
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn iflush(
    recv_comm: *mut c_void,
    _n: c_int,
    _data: *mut *mut c_void,
    _sizes: *mut c_int,
    _mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    guard(|| {
        // SAFETY: NCCL passes a recv comm of ours or NULL.
        let tcpx = match unsafe { recv_comm.cast::<RecvComm>().as_ref() } {
            Some(c) => c.tcpx(),
            None => unpack_device(&config::current()),
        };
        if tcpx {
            // TCPX's iflush is no no-op: it reads `request[0]` as a request and writes
            // `sizes[0]`, and callers pass a NULL slot there. Nothing is written here.
            return Err(Error::Internal(
                "iflush in TCPX mode: Google's plugin would dereference request[0]; \
                 do not call iflush on an UNPACK device",
            ));
        }
        // Host receives need no flush: a NULL request tells NCCL there is nothing to wait for.
        // SAFETY: `request` is NULL or NCCL's out-pointer for this call.
        *unsafe { out(request, "request") }? = core::ptr::null_mut();
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn test(
    request: *mut c_void,
    done: *mut c_int,
    sizes: *mut c_int,
) -> NcclResult {
    guard(|| {
        // SAFETY: `done` is NULL or NCCL's out-pointer for this call.
        let d = unsafe { out(done, "done") }?;
        *d = 0;
        // SAFETY: `request` is NULL or a request from `isend`/`irecv` of a comm not yet closed.
        let r = unsafe { ours::<Request>(request, "request") }?;
        // SAFETY: requests are only handed out by open comms.
        if let Some(size) = unsafe { r.test() }? {
            *d = 1;
            // TCPX mode reports no size (TCPX's `test` never writes it).
            // SAFETY: `sizes` is NULL or NCCL's out-pointer for the received size.
            if let (Some(s), Some(n)) = (unsafe { opt_out(sizes) }, size) {
                *s = n as c_int;
            }
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn close_send(comm: *mut c_void) -> NcclResult {
    guard(|| {
        if !comm.is_null() {
            comms().remove(&(comm as usize));
            // SAFETY: send comms come from connect's Box::into_raw; closed once.
            unsafe { Box::from_raw(comm.cast::<SendComm>()) }.close();
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn close_recv(comm: *mut c_void) -> NcclResult {
    guard(|| {
        if !comm.is_null() {
            comms().remove(&(comm as usize));
            // SAFETY: recv comms come from accept's Box::into_raw; closed once.
            unsafe { Box::from_raw(comm.cast::<RecvComm>()) }.close();
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn close_listen(comm: *mut c_void) -> NcclResult {
    guard(|| {
        if !comm.is_null() {
            // SAFETY: listen comms come from listen's Box::into_raw; closed once.
            drop(unsafe { Box::from_raw(comm.cast::<ListenComm>()) });
        }
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn get_device_mr(
    _comm: *mut c_void,
    _mhandle: *mut c_void,
    dptr: *mut *mut c_void,
) -> NcclResult {
    // No device-side memory registration on the TCP path.
    guard(|| {
        // SAFETY: `dptr` is NULL or NCCL's out-pointer for this call.
        *unsafe { out(dptr, "dptr") }? = core::ptr::null_mut();
        Ok(())
    })
}

pub(crate) unsafe extern "C" fn irecv_consumed(
    recv_comm: *mut c_void,
    n: c_int,
    request: *mut c_void,
) -> NcclResult {
    guard(|| {
        if n != 1 {
            return Err(Error::Internal("irecvConsumed supports exactly one buffer"));
        }
        // SAFETY: `recv_comm` is NULL or a recv comm from `accept` not yet closed.
        let c = unsafe { ours::<RecvComm>(recv_comm, "recvComm") }?;
        // SAFETY: `request` is NULL or a request from `irecv`; requests live inside their
        // comm, which stays open, and both are only borrowed shared here.
        let r = unsafe { ours::<Request>(request, "request") }?;
        match r.recv_owner() {
            Some(o) if core::ptr::eq(o, c) => c.consumed(r.index()),
            _ => Err(Error::Internal("irecvConsumed with a foreign request")),
        }
    })
}
