//! The backend's control listener: the TCP endpoint peers reach us on (its address goes into
//! the `getConnInfo` blob), and the address we advertise for it.
//!
//! The listener is bound when the engine is created so the advertised address is real; the
//! backend thread (`remote`) accepts peers' control streams on it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};

use crate::error::Error;

/// A bound control listener and the address peers should use for it.
#[derive(Debug)]
pub struct Control {
    listener: TcpListener,
    advertised: SocketAddr,
}

impl Control {
    /// Binds `addr`; with an unspecified IP, advertises this host's own address.
    pub fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listener = TcpListener::bind(addr).map_err(|err| Error::Io {
            what: "binding the control listener",
            err,
        })?;
        let bound = listener.local_addr().map_err(|err| Error::Io {
            what: "reading the control listener's address",
            err,
        })?;
        let advertised = if bound.ip().is_unspecified() {
            SocketAddr::new(host_ip(bound.is_ipv4()), bound.port())
        } else {
            bound
        };
        Ok(Self {
            listener,
            advertised,
        })
    }

    /// The address put into `getConnInfo`.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// The listening socket, for the engine's control thread.
    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }
}

/// An address of this host that other hosts can use: the host name's first non-loopback
/// address of the wanted family (no packet is sent to find it), else loopback.
fn host_ip(v4: bool) -> IpAddr {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let found = if name.is_empty() {
        None
    } else {
        (name, 0u16).to_socket_addrs().ok().and_then(|mut addrs| {
            addrs.find(|a| {
                let ip = a.ip();
                ip.is_ipv4() == v4 && !ip.is_loopback() && !ip.is_unspecified()
            })
        })
    };
    match found {
        Some(a) => a.ip(),
        None => {
            crate::log!(
                Warn,
                "control: no non-loopback address for host {name:?}; advertising loopback"
            );
            if v4 {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            } else {
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn loopback_listener_is_reachable_at_its_advertised_address() {
        let c = Control::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(c.advertised().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(c.advertised().port(), 0);
        TcpStream::connect(c.advertised()).unwrap();
    }

    #[test]
    fn unspecified_bind_advertises_a_concrete_address() {
        let c = Control::bind("0.0.0.0:0".parse().unwrap()).unwrap();
        assert!(!c.advertised().ip().is_unspecified());
        assert_ne!(c.advertised().port(), 0);
        TcpStream::connect(c.advertised()).unwrap();
    }
}
