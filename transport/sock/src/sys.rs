//! Thin socket layer over libc: the only place raw socket syscalls happen.
//!
//! Writes use `MSG_NOSIGNAL` because the plugin lives in foreign processes that may not
//! ignore `SIGPIPE`; a vanished peer must become an error value, not a signal.

use std::io::IoSlice;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, v: i32) -> Result<()> {
    // SAFETY: passes a pointer to a live c_int of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            core::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(Error::System("setsockopt", errno()));
    }
    Ok(())
}

/// Applies the data-path options: no Nagle, optional fixed buffer sizes.
pub fn tune(s: &TcpStream, buf_bytes: usize) -> Result<()> {
    s.set_nodelay(true)
        .map_err(|e| Error::System("TCP_NODELAY", e.raw_os_error().unwrap_or(0)))?;
    if buf_bytes > 0 {
        let v = buf_bytes.min(i32::MAX as usize) as i32;
        // Best effort: the kernel caps these at rmem_max/wmem_max.
        let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, v);
        let _ = setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, v);
    }
    Ok(())
}

/// Starts a non-blocking connect; completion is checked with [`connect_done`].
pub fn connect_start(addr: SocketAddr) -> Result<TcpStream> {
    let (family, sa, len) = sockaddr(addr);
    // SAFETY: plain socket creation; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(Error::System("socket", errno()));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sa` is a sockaddr_storage holding `len` valid bytes.
    let rc = unsafe { libc::connect(fd, (&sa as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 && errno() != libc::EINPROGRESS {
        return Err(Error::System("connect", errno()));
    }
    Ok(TcpStream::from(owned))
}

/// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while pending.
pub fn connect_done(s: &TcpStream) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    if rc < 0 {
        return Err(Error::System("poll", errno()));
    }
    if rc == 0 {
        return Ok(false);
    }
    match s.take_error() {
        Ok(None) => Ok(true),
        Ok(Some(e)) => Err(Error::System("connect", e.raw_os_error().unwrap_or(0))),
        Err(e) => Err(Error::System("SO_ERROR", e.raw_os_error().unwrap_or(0))),
    }
}

fn sockaddr(addr: SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { core::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                ss,
                core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { core::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                ss,
                core::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

/// Which of a comm's sockets a non-blocking call is on, for its error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sock {
    /// The control socket (and the hello on any socket while connecting).
    Control,
    /// A data socket moved by the calling thread (a direct request).
    Data,
}

impl Sock {
    fn send_err(self) -> &'static str {
        match self {
            Sock::Control => "send on control socket",
            Sock::Data => "send on data socket",
        }
    }
    fn recv_err(self) -> &'static str {
        match self {
            Sock::Control => "recv on control socket",
            Sock::Data => "recv on data socket",
        }
    }
    fn eof(self) -> &'static str {
        match self {
            Sock::Control => "peer closed the control socket",
            Sock::Data => "peer closed a data socket mid-chunk",
        }
    }
}

/// Non-blocking vectored send. `Ok(None)` = would block.
pub fn send_nb(fd: RawFd, bufs: &[IoSlice<'_>], sock: Sock) -> Result<Option<usize>> {
    // SAFETY: msghdr is plain data; zero is valid, the iovec fields are set below.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    loop {
        // SAFETY: IoSlice is ABI-compatible with iovec; the slices outlive the call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(Error::from_errno(sock.send_err(), e)),
        }
    }
}

/// Non-blocking receive. `Ok(None)` = would block; EOF is [`Error::Remote`].
pub fn recv_nb(fd: RawFd, buf: &mut [u8], sock: Sock) -> Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Some(n as usize));
        }
        if n == 0 {
            return Err(Error::Remote(sock.eof()));
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Ok(None),
            e => return Err(Error::from_errno(sock.recv_err(), e)),
        }
    }
}

/// Blocking send of `len` bytes at `ptr` (helper threads).
///
/// # Safety
/// `ptr..ptr+len` is readable for the duration of the call.
pub unsafe fn send_all(fd: RawFd, mut ptr: *const u8, mut len: usize) -> Result<()> {
    while len > 0 {
        // SAFETY: the caller guarantees the range is readable.
        let n = unsafe { libc::send(fd, ptr.cast(), len, libc::MSG_NOSIGNAL) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(Error::from_errno("send on data socket", e)),
            }
        }
        let n = n as usize;
        // SAFETY: n <= len, so the pointer stays within the range.
        ptr = unsafe { ptr.add(n) };
        len -= n;
    }
    Ok(())
}

/// Blocking receive filling every iovec completely (helper threads).
///
/// # Safety
/// Every iovec describes writable memory that stays valid for the call.
pub unsafe fn recv_all_iov(fd: RawFd, iov: &mut [libc::iovec]) -> Result<()> {
    let mut first = 0;
    while first < iov.len() {
        // SAFETY: msghdr is plain data; zero is valid.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = iov[first..].as_mut_ptr();
        msg.msg_iovlen = (iov.len() - first) as _;
        // SAFETY: the caller guarantees the iovecs are writable.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_WAITALL) };
        if n == 0 {
            return Err(Error::Remote("peer closed a data socket mid-chunk"));
        }
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(Error::from_errno("recv on data socket", e)),
            }
        }
        let mut n = n as usize;
        while n > 0 {
            let v = &mut iov[first];
            if n >= v.iov_len {
                n -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: advancing within the iovec's own range.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                n = 0;
            }
        }
        while first < iov.len() && iov[first].iov_len == 0 {
            first += 1;
        }
    }
    Ok(())
}

/// Wakes any thread blocked on the socket; errors are irrelevant at close.
pub fn shutdown(s: &TcpStream) {
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// 64 random bits from the kernel (nonces, shuffle seeds); falls back to time and pid.
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: writes at most 8 bytes into `v`.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n == 8 {
        return v;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
}
