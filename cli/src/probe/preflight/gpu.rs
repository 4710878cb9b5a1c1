//! (6) The session's GPU: its PCI address (which RX pool RxDM must serve) and the TCPX NIC
//! nearest to it.

use std::ffi::{c_char, c_int, CStr};
use std::fmt::Write as _;
use std::path::Path;

use super::network::Nic;
use super::{Check, Status};

/// The PCI address of every CUDA device (lower case, as the plugin names RX pools), or
/// why there is none.
pub(super) fn cuda_devices() -> Result<Vec<String>, String> {
    use cudarc::driver::{result, sys, CudaContext};
    tcpx_kernels::gpu_available()?;
    let n = CudaContext::device_count().map_err(|e| e.to_string())?;
    (0..n)
        .map(|i| {
            let dev = result::device::get(i).map_err(|e| format!("device {i}: {e}"))?;
            let mut buf = [0 as c_char; 64];
            // SAFETY: the driver writes a NUL-terminated string of at most `len` bytes.
            let r = unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as c_int, dev) };
            if r != sys::CUresult::CUDA_SUCCESS {
                return Err(format!("device {i}: cuDeviceGetPCIBusId: {r:?}"));
            }
            // SAFETY: NUL-terminated by the driver within `buf`.
            let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
            Ok(s.to_string_lossy().to_ascii_lowercase())
        })
        .collect()
}

/// The sysfs name of a PCI address (`0000:04:00.0`; the driver may print an 8-digit
/// domain).
fn sysfs_pci(pci: &str) -> String {
    match pci.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => pci.to_string(),
    }
}

/// The TCPX NIC sharing the longest PCI path with the GPU (the same PCIe switch on A3).
pub(super) fn nearest_nic<'a>(gpu_path: &Path, nics: &'a [Nic]) -> Option<&'a Nic> {
    let shared = |n: &Nic| {
        n.pci.as_deref().map_or(0, |p| {
            gpu_path
                .components()
                .zip(p.components())
                .take_while(|(a, b)| a == b)
                .count()
        })
    };
    nics.iter()
        .filter(|n| n.pci.is_some())
        .max_by_key(|n| (shared(n), std::cmp::Reverse(n.name.clone())))
}

/// The session's GPU (`TCPX_GPU`, else device 0: a fresh thread has no current context,
/// so `cudaGetDevice` reports 0) and its PCI address.
pub(super) fn gpu_check(
    gpu: Option<i32>,
    cuda: &Result<Vec<String>, String>,
    sysfs: &Path,
    nics: &[Nic],
) -> (Check, Option<String>) {
    let name = "gpu";
    let pcis = match cuda {
        Ok(p) => p,
        Err(why) => {
            return (
                Check::new(Status::Missing, name, why.clone())
                    .fix("run on the A3 VM with the NVIDIA driver (containers: expose the GPUs)"),
                None,
            )
        }
    };
    let ordinal = gpu.unwrap_or(0);
    let Some(pci) = usize::try_from(ordinal).ok().and_then(|i| pcis.get(i)) else {
        return (
            Check::new(
                Status::Missing,
                name,
                format!(
                    "TCPX_GPU={ordinal}, but {} CUDA devices are visible",
                    pcis.len()
                ),
            )
            .fix("set TCPX_GPU to a visible device (CUDA_VISIBLE_DEVICES renumbers them)"),
            None,
        );
    };
    let source = match gpu {
        Some(_) => "TCPX_GPU",
        None => "TCPX_GPU unset: the device current on the creating thread, here",
    };
    let mut detail = format!("{source} {ordinal}, pci {pci}");
    let path = sysfs.join("bus/pci/devices").join(sysfs_pci(pci));
    if let Some(n) = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| nearest_nic(&p, nics))
    {
        let _ = write!(detail, ", nearest TCPX NIC {}", n.name);
    }
    (Check::new(Status::Ok, name, detail), Some(pci.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_check_names_the_device_and_its_nearest_nic() {
        let tmp = std::env::temp_dir().join(format!("tcpx-gpu-check-{}", std::process::id()));
        let sw = |s: &str| tmp.join("devices/pci0000:00").join(s);
        for d in ["sw1/0000:04:00.0", "sw1/0000:06:00.0", "sw2/0000:0c:00.0"] {
            std::fs::create_dir_all(sw(d)).unwrap();
        }
        std::fs::create_dir_all(tmp.join("bus/pci/devices")).unwrap();
        let link = tmp.join("bus/pci/devices/0000:04:00.0");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sw("sw1/0000:04:00.0"), &link).unwrap();
        let nic = |name: &str, p: &str| Nic {
            name: name.into(),
            operstate: "up".into(),
            pci: Some(std::fs::canonicalize(sw(p)).unwrap()),
        };
        let nics = [
            nic("eth2", "sw2/0000:0c:00.0"),
            nic("eth1", "sw1/0000:06:00.0"),
        ];
        let pcis = Ok(vec!["00000000:04:00.0".to_string()]);
        let (c, pci) = gpu_check(None, &pcis, &tmp, &nics);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c.detail.ends_with("nearest TCPX NIC eth1"), "{c:?}");
        assert_eq!(pci.as_deref(), Some("00000000:04:00.0"));
        let (c, pci) = gpu_check(Some(3), &pcis, &tmp, &nics);
        assert!(c.status == Status::Missing && pci.is_none(), "{c:?}");
        let (c, _) = gpu_check(None, &Err("no driver".into()), &tmp, &nics);
        assert!(c.status == Status::Missing && c.detail == "no driver");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
