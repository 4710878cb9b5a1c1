//! A small TCP rendezvous that swaps conn info (a `ListenHandles` frame) between two peers.
//!
//! Sessions need each other's listen handles before they can connect; the CLI and the tests
//! use this helper to carry them. Frames are a little-endian `u32` length and the bytes;
//! every socket operation is bounded by the caller's timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Largest conn info accepted from a peer.
pub const MAX_INFO_BYTES: usize = 64 * 1024;

/// Accepts one peer on `listener`, sends `ours`, returns the peer's bytes.
pub fn accept_exchange(
    listener: &TcpListener,
    ours: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(io("bootstrap listen"))?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout("bootstrap: no peer connected"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(io("bootstrap accept")(e)),
        }
    };
    stream
        .set_nonblocking(false)
        .map_err(io("bootstrap accept"))?;
    exchange(stream, ours, deadline)
}

/// Connects to `addr` (retrying until the peer listens), sends `ours`, returns the peer's.
pub fn connect_exchange(
    addr: impl ToSocketAddrs,
    ours: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let deadline = Instant::now() + timeout;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(io("bootstrap resolve"))?
        .collect();
    let addr = *addrs.first().ok_or(Error::Config(
        "bootstrap: address resolves to nothing".into(),
    ))?;
    let stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout("bootstrap: peer not reachable"));
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    exchange(stream, ours, deadline)
}

fn exchange(mut s: TcpStream, ours: &[u8], deadline: Instant) -> Result<Vec<u8>, Error> {
    if ours.len() > MAX_INFO_BYTES {
        return Err(Error::Config(format!(
            "bootstrap: conn info of {} bytes exceeds {MAX_INFO_BYTES}",
            ours.len()
        )));
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).map_err(io("bootstrap"))?;
    s.set_write_timeout(Some(left)).map_err(io("bootstrap"))?;
    s.write_all(&(ours.len() as u32).to_le_bytes())
        .and_then(|_| s.write_all(ours))
        .map_err(io("bootstrap send"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io("bootstrap receive"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_INFO_BYTES {
        return Err(Error::Protocol(format!(
            "bootstrap: peer announced {len} bytes of conn info (max {MAX_INFO_BYTES})"
        )));
    }
    let mut theirs = vec![0u8; len];
    s.read_exact(&mut theirs).map_err(io("bootstrap receive"))?;
    Ok(theirs)
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_bytes_both_ways() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            connect_exchange(addr, b"client", Duration::from_secs(5)).unwrap()
        });
        let got = accept_exchange(&l, b"server-info", Duration::from_secs(5)).unwrap();
        assert_eq!(got, b"client");
        assert_eq!(t.join().unwrap(), b"server-info");
    }

    #[test]
    fn times_out_without_peer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = accept_exchange(&l, b"x", Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
    }

    #[test]
    fn rejects_oversized_peer_info() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&u32::MAX.to_le_bytes()).unwrap();
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        });
        let e = accept_exchange(&l, b"x", Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, Error::Protocol(_)), "{e}");
        t.join().unwrap();
    }
}
