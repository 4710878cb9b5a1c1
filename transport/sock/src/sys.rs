//! Thin socket layer over libc: the only place raw socket syscalls happen.
//!
//! Writes use `MSG_NOSIGNAL` because the plugin lives in foreign processes that may not
//! ignore `SIGPIPE`; a vanished peer must become an error value, not a signal.

use std::io::IoSlice;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::mem::RawBuf;

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

/// Blocking send of `len` bytes at `ptr` (helper threads). A range that wraps around the address
/// space is refused before anything is sent.
///
/// # Safety
/// `ptr..ptr+len` is readable for the duration of the call.
pub unsafe fn send_all(fd: RawFd, ptr: *const u8, len: usize) -> Result<()> {
    let mut rest = RawBuf::new(ptr.cast_mut(), len)?;
    while !rest.is_empty() {
        // SAFETY: `rest` lies inside the range the caller guarantees readable.
        let n = unsafe { libc::send(fd, rest.ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(Error::from_errno("send on data socket", e)),
            }
        }
        rest = sent_past(rest, n as usize)?;
    }
    Ok(())
}

/// What is left of `buf` once its first `n` bytes went through a socket; a count past its end
/// is an error, never a pointer outside it.
fn sent_past(buf: RawBuf, n: usize) -> Result<RawBuf> {
    match buf.split_at(n) {
        Ok((_, rest)) => Ok(rest),
        Err(_) => Err(Error::Internal(
            "socket call reported more bytes than asked",
        )),
    }
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
        first += consume_iov(&mut iov[first..], n as usize)?;
    }
    Ok(())
}

/// Advances `iov` past `n` received bytes: the iovecs they filled, and the received part of the
/// next one, whose base and length then describe what is left of it. Returns how many iovecs
/// are done (filled, or empty after the filled ones); a count past their end is an error.
fn consume_iov(iov: &mut [libc::iovec], mut n: usize) -> Result<usize> {
    let mut done = 0;
    while let Some(v) = iov.get_mut(done) {
        let buf = RawBuf::new(v.iov_base.cast(), v.iov_len)?;
        if n < buf.len() {
            let rest = sent_past(buf, n)?;
            v.iov_base = rest.ptr().cast();
            v.iov_len = rest.len();
            return Ok(done);
        }
        n -= buf.len();
        done += 1;
    }
    if n > 0 {
        return Err(Error::Internal(
            "socket call reported more bytes than asked",
        ));
    }
    Ok(done)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn consume_iov_advances_within_the_iovecs() {
        let (mut a, mut b, mut c) = ([0u8; 8], [0u8; 0], [0u8; 16]);
        let c_ptr = c.as_mut_ptr();
        let mut v = [iov(&mut a), iov(&mut b), iov(&mut c)];
        assert_eq!(consume_iov(&mut v, 3), Ok(0), "inside the first");
        assert_eq!(v[0].iov_len, 5);
        assert_eq!(
            consume_iov(&mut v, 5),
            Ok(2),
            "the first filled exactly; the empty one after it is done too"
        );
        assert_eq!(consume_iov(&mut v[2..], 15), Ok(0));
        assert_eq!(
            (v[2].iov_base.cast(), v[2].iov_len),
            (c_ptr.wrapping_add(15), 1)
        );
        assert_eq!(
            consume_iov(&mut v[2..], 1),
            Ok(1),
            "the boundary: all filled"
        );
        assert_eq!(v[2].iov_len, 1, "a filled iovec is left as it was");
    }

    #[test]
    fn consume_iov_refuses_counts_past_the_end_and_wrapping_iovecs() {
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut v = [iov(&mut a), iov(&mut b)];
        assert_eq!(
            consume_iov(&mut v, 9),
            Err(Error::Internal(
                "socket call reported more bytes than asked"
            ))
        );
        assert_eq!(consume_iov(&mut v, usize::MAX).map_err(|_| ()), Err(()));
        let mut w = [libc::iovec {
            iov_base: usize::MAX as *mut libc::c_void,
            iov_len: 2,
        }];
        assert_eq!(
            consume_iov(&mut w, 1),
            Err(Error::Internal("byte range wraps around the address space"))
        );
        assert_eq!(w[0].iov_len, 2, "left untouched");
    }

    #[test]
    fn send_all_refuses_a_wrapping_range_before_sending() {
        // SAFETY: the range is refused before any byte is read.
        let r = unsafe { send_all(-1, usize::MAX as *const u8, 2) };
        assert_eq!(
            r,
            Err(Error::Internal("byte range wraps around the address space"))
        );
        // SAFETY: no byte to read.
        assert_eq!(unsafe { send_all(-1, core::ptr::null(), 0) }, Ok(()));
    }

    #[test]
    fn send_all_and_recv_all_iov_move_every_byte() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: fresh descriptors nobody else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let src: Vec<u8> = (0..100u8).collect();
        // SAFETY: `src` is readable; 100 bytes fit in the socket buffer.
        unsafe { send_all(a.as_raw_fd(), src.as_ptr(), src.len()) }.unwrap();
        let (mut x, mut y) = ([0u8; 30], [0u8; 70]);
        let mut v = [iov(&mut x), iov(&mut y)];
        // SAFETY: both iovecs are writable arrays alive for the call.
        unsafe { recv_all_iov(b.as_raw_fd(), &mut v) }.unwrap();
        assert_eq!(&x[..], &src[..30]);
        assert_eq!(&y[..], &src[30..]);
    }
}
