//! RAII wrappers over plugin comms, registrations and requests, and the calls that use them.
//!
//! A comm is closed, and a registration deregistered, when its last user is dropped:
//! registrations and requests hold their comm, and everything holds the plugin library.
//! The hot-path calls (`isend`, `irecv`, `test`, `irecv_consumed`) never allocate.
//!
//! What callers of real plugins must survive is handled here, as NCCL does it:
//! - `accept` on an UNPACK device gets a pointer to a zeroed device handle owned by the comm,
//!   its type and version preset from the device's properties (GPUDirect-TCPX fills it in
//!   place and would write through NULL); `connect` gets a pointer to NULL, as NCCL's send
//!   side does. Afterwards the out-pointer is read, whether the plugin filled our handle or
//!   pointed it at its own.
//! - `test` may never write the sizes (GPUDirect-TCPX does not): each is preset to a sentinel
//!   and a size still untouched when the request is done is the posted size
//!   ([`Request::size_reported`] tells which).
//! - `iflush` is refused on UNPACK comms: GPUDirect-TCPX's `iflush` is not a no-op.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use tcpx_core::abi::{ptr_type, v10, DevHandle, HANDLE_MAX_SIZE, NET_DEVICE_HOST};
/// Which memory a registration covers (`regMr`'s `type`: [`ptr_type`]).
pub use tcpx_core::mem::MemKind;

use super::props::DeviceType;
use super::table::{Connect, Irecv, Isend, RecvArgs, RegMr, MAX_RECVS};
use super::{dev_index, Net, Plugin};
use crate::error::{Error, Result};

mod calls;

/// The opaque bytes a listener publishes and a connector consumes (exchanged out of band).
///
/// `connect` may keep state in it between retries, so retry with the same value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ConnectHandle(pub [u8; HANDLE_MAX_SIZE]);

impl ConnectHandle {
    /// The raw bytes, to send to the peer.
    pub fn as_bytes(&self) -> &[u8; HANDLE_MAX_SIZE] {
        &self.0
    }
    /// Rebuilds a handle received from the peer.
    pub fn from_bytes(bytes: [u8; HANDLE_MAX_SIZE]) -> Self {
        ConnectHandle(bytes)
    }
}

impl Default for ConnectHandle {
    fn default() -> Self {
        ConnectHandle([0; HANDLE_MAX_SIZE])
    }
}

impl fmt::Debug for ConnectHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        write!(f, "ConnectHandle({used} bytes)")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Listen,
    Send,
    Recv,
}

/// A device handle lent to the plugin to fill in place; its heap address never moves.
struct DevStorage(Box<DevHandle>);

// SAFETY: plain data whose `handle` pointer tcpx only copies, never dereferences.
unsafe impl Send for DevStorage {}
// SAFETY: as above; shared references only read it.
unsafe impl Sync for DevStorage {}

/// A plugin comm pointer and what closes it. Shared by the comm, its registrations and
/// its requests; closed when the last of them goes.
pub struct CommInner {
    plugin: Arc<Plugin>,
    ptr: NonNull<c_void>,
    kind: Kind,
    /// The offload of the comm's device, where known (listen and recv comms).
    device_type: Option<DeviceType>,
    /// What the device-handle out-pointer pointed to after the call that made the comm.
    dev_handle: Option<DevHandle>,
    closed: bool,
    /// The handle passed to the plugin to fill in place: its address stays valid (and the
    /// plugin may keep it) as long as the comm; freed after the comm is closed.
    _dev_storage: Option<DevStorage>,
}

// SAFETY: the comm pointer is an opaque token owned by the plugin; the public wrappers are
// `!Sync`, so a comm is driven by one thread at a time, which is what plugins expect.
unsafe impl Send for CommInner {}
// SAFETY: shared references only read the pointer value; calls go through `!Sync` wrappers.
unsafe impl Sync for CommInner {}

impl CommInner {
    /// `dev` is what the device-handle out-pointer holds after the call; `storage` the
    /// handle we passed in it, if any.
    fn new(
        plugin: &Arc<Plugin>,
        ptr: NonNull<c_void>,
        kind: Kind,
        device_type: Option<DeviceType>,
        dev: *mut DevHandle,
        storage: Option<DevStorage>,
    ) -> Arc<Self> {
        // SAFETY: a non-NULL device handle from connect/accept is ours (`storage`) or the
        // plugin's, alive as long as the comm.
        let dev_handle = unsafe { dev.as_ref() }
            .copied()
            // A handle the plugin left unfilled, or a HOST one, describes no offload.
            .filter(|h| !h.handle.is_null() && h.net_device_type != NET_DEVICE_HOST);
        Arc::new(CommInner {
            plugin: Arc::clone(plugin),
            ptr,
            kind,
            device_type,
            dev_handle,
            closed: false,
            _dev_storage: storage,
        })
    }

    /// Whether the comm's device (or the handle the plugin attached) is UNPACK.
    fn is_unpack(&self) -> bool {
        self.device_type == Some(DeviceType::Unpack)
            || self
                .dev_handle
                .is_some_and(|h| h.net_device_type == tcpx_core::abi::NET_DEVICE_UNPACK)
    }

    fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let t = &self.plugin.table;
        let (f, name) = match self.kind {
            Kind::Listen => (t.close_listen, "closeListen"),
            Kind::Send => (t.close_send, "closeSend"),
            Kind::Recv => (t.close_recv, "closeRecv"),
        };
        let f = f.ok_or_else(|| self.plugin.missing(name))?;
        let p = &self.plugin;
        // SAFETY: the comm came from this plugin and is closed exactly once.
        p.check(name, p.call(name, || unsafe { f(self.ptr.as_ptr()) }))
    }
}

impl Drop for CommInner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            crate::log_warn!("net", "{e}");
        }
    }
}

/// Marker making the public wrappers `Send` but not `Sync`.
type NotSync = PhantomData<Cell<()>>;

mod private {
    /// Keeps [`super::Comm`] implementable only here.
    pub trait Sealed {
        fn inner(&self) -> &std::sync::Arc<super::CommInner>;
    }
}

/// A send or receive comm: what memory can be registered on.
pub trait Comm: private::Sealed {
    /// The device offload handle the plugin attached, if any (UNPACK on TCPX receives);
    /// `None` for HOST devices and where the plugin left the handle NULL or unfilled.
    fn dev_handle(&self) -> Option<&DevHandle> {
        self.inner().dev_handle.as_ref()
    }
}

/// A listening endpoint; accepts the peer that connects to its [`ConnectHandle`].
pub struct ListenComm {
    inner: Arc<CommInner>,
    handle: ConnectHandle,
    /// The device listened on, and its offload (`netDeviceType`, `netDeviceVersion`) read
    /// once at `listen`: every accept retry needs them, none should ask the plugin again.
    dev: usize,
    device_type: DeviceType,
    device_version: i32,
    /// The device handle lent to accept retries until one returns a comm, which then owns
    /// it (declared after `inner`: freed only after the listen comm is closed).
    pending: Option<DevStorage>,
    _not_sync: NotSync,
}

impl ListenComm {
    /// The handle to give the peer.
    pub fn handle(&self) -> &ConnectHandle {
        &self.handle
    }

    /// The device listened on.
    pub fn dev(&self) -> usize {
        self.dev
    }

    /// The offload of the device listened on.
    pub fn device_type(&self) -> DeviceType {
        self.device_type
    }
}

/// The sending end of a connection.
pub struct SendComm {
    inner: Arc<CommInner>,
    _not_sync: NotSync,
}

/// The receiving end of a connection.
pub struct RecvComm {
    inner: Arc<CommInner>,
    _not_sync: NotSync,
}

impl private::Sealed for SendComm {
    fn inner(&self) -> &Arc<CommInner> {
        &self.inner
    }
}
impl Comm for SendComm {}
impl private::Sealed for RecvComm {
    fn inner(&self) -> &Arc<CommInner> {
        &self.inner
    }
}
impl Comm for RecvComm {}

impl fmt::Debug for ListenComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListenComm({:p})", self.inner.ptr)
    }
}
impl fmt::Debug for SendComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendComm({:p})", self.inner.ptr)
    }
}
impl fmt::Debug for RecvComm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecvComm({:p})", self.inner.ptr)
    }
}

/// Memory registered on one comm; deregistered on drop (the comm stays open until then).
pub struct MemReg {
    comm: Arc<CommInner>,
    mhandle: *mut c_void,
    deregistered: bool,
    _not_sync: NotSync,
}

// SAFETY: `mhandle` is an opaque plugin token; see `CommInner` for the threading rule.
unsafe impl Send for MemReg {}

impl MemReg {
    /// The plugin's memory handle (for device code via `get_device_mr`, or logging).
    pub fn mhandle(&self) -> *mut c_void {
        self.mhandle
    }

    fn dereg(&mut self) -> Result<()> {
        if self.deregistered {
            return Ok(());
        }
        self.deregistered = true;
        let p = &self.comm.plugin;
        let f = p.table.dereg_mr.ok_or_else(|| p.missing("deregMr"))?;
        // SAFETY: the handle was registered on this comm, which is still open.
        p.check(
            "deregMr",
            p.call("deregMr", || unsafe {
                f(self.comm.ptr.as_ptr(), self.mhandle)
            }),
        )
    }
}

impl Drop for MemReg {
    fn drop(&mut self) {
        if let Err(e) = self.dereg() {
            crate::log_warn!("net", "{e}");
        }
    }
}

impl fmt::Debug for MemReg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemReg({:p} on {:p})", self.mhandle, self.comm.ptr)
    }
}

/// One receive of a grouped `irecv` (or one range of an `iflush`).
#[derive(Debug, Clone, Copy)]
pub struct RecvBuf<'a> {
    pub data: *mut c_void,
    pub size: usize,
    /// Ignored by TCPX, which matches by posting order.
    pub tag: i32,
    pub mr: &'a MemReg,
}

/// What `test`'s sizes are preset to: a size still equal to it once done was not written.
const SIZE_UNTOUCHED: c_int = -1;

/// An in-flight plugin request. Poll it with [`Net::test`]; once done, drop it (or hand a
/// receive to [`Net::irecv_consumed`]). Holds its comm open.
pub struct Request {
    comm: Arc<CommInner>,
    ptr: NonNull<c_void>,
    n: u8,
    done: bool,
    /// What `test` wrote, or [`SIZE_UNTOUCHED`].
    sizes: [c_int; MAX_RECVS],
    /// The sizes posted (isend's size, irecv's sizes): the answer where `test` wrote none.
    posted: [usize; MAX_RECVS],
    _not_sync: NotSync,
}

// SAFETY: the request pointer is an opaque plugin token; see `CommInner`.
unsafe impl Send for Request {}

impl Request {
    fn new(comm: &Arc<CommInner>, ptr: *mut c_void, posted: &[usize]) -> Option<Request> {
        NonNull::new(ptr).map(|ptr| {
            let mut p = [0; MAX_RECVS];
            p[..posted.len()].copy_from_slice(posted);
            Request {
                comm: Arc::clone(comm),
                ptr,
                n: posted.len() as u8,
                done: false,
                sizes: [SIZE_UNTOUCHED; MAX_RECVS],
                posted: p,
                _not_sync: PhantomData,
            }
        })
    }

    /// Whether `test` has reported completion.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Number of grouped buffers (1 for a send).
    pub fn len(&self) -> usize {
        usize::from(self.n)
    }

    /// Always false: a request covers at least one buffer.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes moved by buffer `i`, once done: the size `test` reported, or the posted size
    /// where the plugin wrote none (GPUDirect-TCPX never does). `None` while in flight, for
    /// `i` out of range, and for a negative size the plugin did report.
    pub fn size(&self, i: usize) -> Option<usize> {
        if !self.done || i >= self.len() {
            return None;
        }
        match self.sizes[i] {
            SIZE_UNTOUCHED => Some(self.posted[i]),
            s => usize::try_from(s).ok(),
        }
    }

    /// Whether `test` reported buffer `i`'s size itself (false while in flight, for `i` out
    /// of range, and where [`Request::size`] is the posted size). A receiver can check a
    /// reported size against what it expected; an unreported one says nothing.
    pub fn size_reported(&self, i: usize) -> bool {
        self.done && i < self.len() && self.sizes[i] != SIZE_UNTOUCHED
    }

    /// The size posted for buffer `i`.
    pub fn posted_size(&self, i: usize) -> Option<usize> {
        (i < self.len()).then(|| self.posted[i])
    }

    /// The plugin's request pointer.
    pub fn as_ptr(&self) -> *mut c_void {
        self.ptr.as_ptr()
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Request({:p}, done: {})", self.ptr, self.done)
    }
}
