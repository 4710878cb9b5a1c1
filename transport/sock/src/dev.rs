//! Devices: the network interfaces the plugin exposes, chosen like `NCCL_SOCKET_IFNAME`.
//!
//! The list is built at `init` from `getifaddrs` and `/sys/class/net`, then kept for the
//! process lifetime so the C strings handed out in properties stay valid.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::RwLock;

use crate::error::{Error, Result};

/// Link speed reported when `/sys/class/net/<if>/speed` is absent (loopback, virtual NICs).
pub const DEFAULT_SPEED_MBPS: i32 = 10_000;

/// One exposed interface.
#[derive(Debug)]
pub struct Device {
    /// Interface name, NUL-terminated for `Properties::name`.
    pub name: CString,
    /// The IPv4 address listeners bind to.
    pub addr: IpAddr,
    /// Canonical sysfs path of the PCI device, if the interface has one.
    pub pci_path: Option<CString>,
    /// Link speed in Mbps.
    pub speed_mbps: i32,
}

/// Parsed `NCCL_SOCKET_IFNAME`-style filter: `[^][=]name[,name...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfFilter {
    exclude: bool,
    exact: bool,
    names: Vec<String>,
}

impl IfFilter {
    /// Parses the filter; `^` excludes the listed names, `=` makes names exact, not prefixes.
    pub fn parse(spec: &str) -> Self {
        let mut s = spec.trim();
        let exclude = s.starts_with('^');
        if exclude {
            s = &s[1..];
        }
        let exact = s.starts_with('=');
        if exact {
            s = &s[1..];
        }
        let names = s
            .split(',')
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        IfFilter {
            exclude,
            exact,
            names,
        }
    }

    /// Whether interface `name` passes the filter.
    pub fn accepts(&self, name: &str) -> bool {
        let hit = self.names.iter().any(|n| {
            if self.exact {
                name == n
            } else {
                name.starts_with(n.as_str())
            }
        });
        hit != self.exclude
    }
}

/// UP interfaces with an IPv4 address, in `getifaddrs` order, first address per name.
fn up_ipv4_interfaces() -> Result<Vec<(String, Ipv4Addr)>> {
    let mut out: Vec<(String, Ipv4Addr)> = Vec::new();
    let mut head: *mut libc::ifaddrs = core::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(Error::System("getifaddrs", errno()));
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a live node of the list returned by getifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of its stated family.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: family is AF_INET, so the address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if !out.iter().any(|(n, _)| *n == name) {
            out.push((name, ip));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn probe(name: &str, ip: Ipv4Addr) -> Device {
    let pci_path = std::fs::canonicalize(format!("/sys/class/net/{name}/device"))
        .ok()
        .and_then(|p| CString::new(p.into_os_string().into_encoded_bytes()).ok());
    let speed_mbps = std::fs::read_to_string(format!("/sys/class/net/{name}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SPEED_MBPS);
    Device {
        name: CString::new(name).unwrap_or_default(),
        addr: IpAddr::V4(ip),
        pci_path,
        speed_mbps,
    }
}

/// Chooses the devices: the filter if given; otherwise every non-loopback, non-docker
/// interface, falling back to `lo` so the plugin works on any box.
pub fn discover(spec: Option<&str>) -> Result<Vec<Device>> {
    let ifs = up_ipv4_interfaces()?;
    let chosen: Vec<_> = match spec {
        Some(s) => {
            let f = IfFilter::parse(s);
            ifs.iter().filter(|(n, _)| f.accepts(n)).cloned().collect()
        }
        None => {
            let f = IfFilter::parse("^docker,lo");
            let v: Vec<_> = ifs.iter().filter(|(n, _)| f.accepts(n)).cloned().collect();
            if v.is_empty() {
                ifs.iter().filter(|(n, _)| n == "lo").cloned().collect()
            } else {
                v
            }
        }
    };
    Ok(chosen.into_iter().map(|(n, ip)| probe(&n, ip)).collect())
}

/// The devices of the last `init`. Leaked on purpose: properties hand out their names.
static DEVICES: RwLock<Vec<&'static Device>> = RwLock::new(Vec::new());

/// Replaces the device list (each `init`).
pub fn install(devs: Vec<Device>) {
    let leaked = devs.into_iter().map(|d| &*Box::leak(Box::new(d))).collect();
    *DEVICES.write().unwrap_or_else(|e| e.into_inner()) = leaked;
}

/// Number of devices.
pub fn count() -> usize {
    DEVICES.read().unwrap_or_else(|e| e.into_inner()).len()
}

/// Device `i`, if it exists.
pub fn get(i: i32) -> Result<&'static Device> {
    let devs = DEVICES.read().unwrap_or_else(|e| e.into_inner());
    usize::try_from(i)
        .ok()
        .and_then(|i| devs.get(i).copied())
        .ok_or(Error::InvalidArgument("no such device"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_syntax_matches_nccl() {
        let f = IfFilter::parse("eth,ib");
        assert!(f.accepts("eth0") && f.accepts("ib1") && !f.accepts("lo"));
        let f = IfFilter::parse("^docker,lo");
        assert!(f.accepts("eth0") && !f.accepts("docker0") && !f.accepts("lo"));
        let f = IfFilter::parse("=eth0");
        assert!(f.accepts("eth0") && !f.accepts("eth01"));
        let f = IfFilter::parse("^=eth0");
        assert!(!f.accepts("eth0") && f.accepts("eth01"));
    }

    #[test]
    fn lo_is_found_by_name() {
        let d = discover(Some("lo")).expect("getifaddrs");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name.to_str().unwrap(), "lo");
        assert!(d[0].pci_path.is_none());
    }
}
