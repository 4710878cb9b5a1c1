//! Owned, version-independent device properties.
//!
//! Whatever properties struct the plugin's ABI version fills, callers get one
//! [`DeviceProps`]; fields a version lacks take the value NCCL assumes for it.

use std::ffi::{c_char, CStr};
use std::fmt;

use tcpx_core::abi::{
    v7, v8, v9, NET_DEVICE_HOST, NET_DEVICE_UNPACK, NET_UNPACK_VERSION, PTR_CUDA, PTR_DMABUF,
    PTR_HOST,
};

/// Which buffer kinds a device can send from and receive into (`ptrSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PtrSupport(pub i32);

impl PtrSupport {
    /// Host memory.
    pub fn host(self) -> bool {
        self.0 & PTR_HOST != 0
    }
    /// CUDA device memory.
    pub fn cuda(self) -> bool {
        self.0 & PTR_CUDA != 0
    }
    /// DMA-BUF file descriptors (`regMrDmaBuf`).
    pub fn dmabuf(self) -> bool {
        self.0 & PTR_DMABUF != 0
    }
    /// Names of the set bits, e.g. `["HOST", "CUDA"]`; unknown bits are ignored.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (PTR_HOST, "HOST"),
            (PTR_CUDA, "CUDA"),
            (PTR_DMABUF, "DMABUF"),
        ]
        .into_iter()
        .filter(move |(bit, _)| self.0 & bit != 0)
        .map(|(_, name)| name)
    }
}

impl fmt::Display for PtrSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for name in self.names() {
            if !first {
                f.write_str("|")?;
            }
            f.write_str(name)?;
            first = false;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// The device-side offload a device asks the receiver to run (`netDeviceType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// No offload: data lands in the destination buffer.
    Host,
    /// TCPX-style: data lands in bounce pages, the receiver runs the unpack kernel.
    Unpack,
}

impl DeviceType {
    /// Name as in NCCL (`NCCL_NET_DEVICE_HOST` / `_UNPACK`), without prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Host => "HOST",
            DeviceType::Unpack => "UNPACK",
        }
    }
}

/// Owned properties of one device, the same for every ABI version.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProps {
    pub name: String,
    /// Path of the PCI device in /sys; `None` when the plugin reports NULL.
    pub pci_path: Option<String>,
    pub guid: u64,
    pub ptr_support: PtrSupport,
    /// Port speed in Mbps.
    pub speed_mbps: i32,
    pub port: i32,
    /// Network latency in microseconds.
    pub latency_us: f32,
    pub max_comms: i32,
    /// Most receives one `irecv` may group.
    pub max_recvs: i32,
    /// Registrations are usable with every comm (v8+; `false` before).
    pub reg_is_global: bool,
    /// Every CUDA receive needs `iflush` (v9+; `false` before).
    pub force_flush: bool,
    pub device_type: DeviceType,
    /// `netDeviceVersion` (0x7 for UNPACK).
    pub device_version: i32,
    /// Physical devices behind a virtual one (v9+; empty before).
    pub vdevs: Vec<i32>,
    /// Largest point-to-point transfer (v9+).
    pub max_p2p_bytes: Option<usize>,
    /// Largest collective transfer (v9+).
    pub max_coll_bytes: Option<usize>,
}

/// Why raw properties were rejected: (type, version) not known.
pub(crate) struct UnknownOffload(pub i32, pub i32);

/// Fields every version has, read from any of the raw structs.
pub(crate) struct Raw {
    pub name: *mut c_char,
    pub pci_path: *mut c_char,
    pub guid: u64,
    pub ptr_support: i32,
    pub reg_is_global: i32,
    pub force_flush: i32,
    pub speed: i32,
    pub port: i32,
    pub latency: f32,
    pub max_comms: i32,
    pub max_recvs: i32,
    pub net_device_type: i32,
    pub net_device_version: i32,
    pub vdevs: Option<v9::VDeviceProps>,
    pub max_p2p_bytes: Option<usize>,
    pub max_coll_bytes: Option<usize>,
}

impl From<&v7::Properties> for Raw {
    fn from(p: &v7::Properties) -> Raw {
        Raw {
            name: p.name,
            pci_path: p.pci_path,
            guid: p.guid,
            ptr_support: p.ptr_support,
            reg_is_global: 0,
            force_flush: 0,
            speed: p.speed,
            port: p.port,
            latency: p.latency,
            max_comms: p.max_comms,
            max_recvs: p.max_recvs,
            net_device_type: p.net_device_type,
            net_device_version: p.net_device_version,
            vdevs: None,
            max_p2p_bytes: None,
            max_coll_bytes: None,
        }
    }
}

impl From<&v8::Properties> for Raw {
    fn from(p: &v8::Properties) -> Raw {
        Raw {
            name: p.name,
            pci_path: p.pci_path,
            guid: p.guid,
            ptr_support: p.ptr_support,
            reg_is_global: p.reg_is_global,
            force_flush: 0,
            speed: p.speed,
            port: p.port,
            latency: p.latency,
            max_comms: p.max_comms,
            max_recvs: p.max_recvs,
            net_device_type: p.net_device_type,
            net_device_version: p.net_device_version,
            vdevs: None,
            max_p2p_bytes: None,
            max_coll_bytes: None,
        }
    }
}

impl From<&v9::Properties> for Raw {
    fn from(p: &v9::Properties) -> Raw {
        Raw {
            name: p.name,
            pci_path: p.pci_path,
            guid: p.guid,
            ptr_support: p.ptr_support,
            reg_is_global: p.reg_is_global,
            force_flush: p.force_flush,
            speed: p.speed,
            port: p.port,
            latency: p.latency,
            max_comms: p.max_comms,
            max_recvs: p.max_recvs,
            net_device_type: p.net_device_type,
            net_device_version: p.net_device_version,
            vdevs: Some(p.v_props),
            max_p2p_bytes: Some(p.max_p2p_bytes),
            max_coll_bytes: Some(p.max_coll_bytes),
        }
    }
}

/// Copies a plugin C string; NULL becomes `None`.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn owned(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per this function's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

impl Raw {
    /// Validates the offload and copies the strings out of plugin memory.
    ///
    /// # Safety
    /// `name` and `pci_path` are NULL or NUL-terminated strings owned by the plugin.
    pub unsafe fn into_props(self) -> Result<DeviceProps, UnknownOffload> {
        let device_type = match (self.net_device_type, self.net_device_version) {
            // HOST has no device code, so its version carries no meaning.
            (NET_DEVICE_HOST, _) => DeviceType::Host,
            (NET_DEVICE_UNPACK, NET_UNPACK_VERSION) => DeviceType::Unpack,
            (t, v) => return Err(UnknownOffload(t, v)),
        };
        let vdevs = match self.vdevs {
            Some(v) => {
                let n = usize::try_from(v.ndevs).unwrap_or(0).min(v.devs.len());
                v.devs[..n].to_vec()
            }
            None => Vec::new(),
        };
        Ok(DeviceProps {
            // SAFETY: `name` is NULL or a NUL-terminated string the plugin owns and keeps
            // while loaded (this function's contract); `owned` copies it now.
            name: unsafe { owned(self.name) }.unwrap_or_default(),
            // SAFETY: as for `name`.
            pci_path: unsafe { owned(self.pci_path) },
            guid: self.guid,
            ptr_support: PtrSupport(self.ptr_support),
            speed_mbps: self.speed,
            port: self.port,
            latency_us: self.latency,
            max_comms: self.max_comms,
            max_recvs: self.max_recvs,
            reg_is_global: self.reg_is_global != 0,
            force_flush: self.force_flush != 0,
            device_type,
            device_version: self.net_device_version,
            vdevs,
            max_p2p_bytes: self.max_p2p_bytes,
            max_coll_bytes: self.max_coll_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptr_support_names() {
        assert_eq!(PtrSupport(PTR_HOST | PTR_CUDA).to_string(), "HOST|CUDA");
        assert_eq!(PtrSupport(PTR_DMABUF).to_string(), "DMABUF");
        assert_eq!(PtrSupport(0).to_string(), "none");
        assert!(PtrSupport(PTR_CUDA).cuda() && !PtrSupport(PTR_CUDA).host());
    }

    #[test]
    fn rejects_unknown_offload() {
        let mut p = v7::Properties::zeroed();
        p.net_device_type = NET_DEVICE_UNPACK;
        p.net_device_version = 0x6;
        // SAFETY: both strings are NULL.
        let r = unsafe { Raw::from(&p).into_props() };
        assert!(matches!(r, Err(UnknownOffload(1, 6))));
        p.net_device_version = NET_UNPACK_VERSION;
        // SAFETY: as above.
        let ok = unsafe { Raw::from(&p).into_props() }
            .ok()
            .expect("UNPACK 0x7");
        assert_eq!(ok.device_type, DeviceType::Unpack);
        assert_eq!(ok.pci_path, None);
    }
}
