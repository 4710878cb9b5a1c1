//! Which plugin devices (NICs) a session's channels use: reads what the ranking in
//! `tcpx_core::topology` needs — the GPU's and each device's PCI path and NUMA node — from the
//! driver and sysfs, and maps channels to devices by `Config::devices`.
//!
//! On an A3 High VM each pair of GPUs shares a PCIe switch with one TCPX NIC; `auto` (the
//! default) gives a GPU session the NIC(s) behind its own switch, a host session its NUMA
//! node's.

use std::fmt::Write as _;
use std::path::Path;

use tcpx_core::topology::{self, Device, Devices, Locality};

use super::gpu::GpuBinding;
use crate::error::{Error, Result};
use crate::net::{DeviceProps, Net};

/// One plugin device as the ranking sees it, read once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The plugin's device index.
    pub index: usize,
    /// The plugin's name for it (the interface, for TCPX and tcpxsock).
    pub name: String,
    /// Its sysfs PCI path (`pciPath`), canonical; `None` for virtual devices.
    pub pci_path: Option<String>,
    /// Its NUMA node, from sysfs; `None` where unknown.
    pub numa: Option<u32>,
    /// Whether the plugin takes CUDA pointers on it.
    pub cuda: bool,
}

impl DeviceInfo {
    fn of(index: usize, p: &DeviceProps) -> DeviceInfo {
        let pci_path = p
            .pci_path
            .as_deref()
            .map(|s| canonical(Path::new(s)).unwrap_or_else(|| s.to_owned()));
        DeviceInfo {
            index,
            name: p.name.clone(),
            numa: pci_path.as_deref().and_then(|s| numa_node(Path::new(s))),
            pci_path,
            cuda: p.ptr_support.cuda(),
        }
    }

    fn ranked(&self) -> Device<'_> {
        Device {
            pci_path: self.pci_path.as_deref(),
            numa: self.numa,
            cuda: self.cuda,
        }
    }
}

/// Where a session's memory lives, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// GPU `device`, its canonical sysfs path and NUMA node where known.
    Gpu {
        device: i32,
        pci_path: Option<String>,
        numa: Option<u32>,
    },
    /// Host memory, on the calling thread's NUMA node where known.
    Host { numa: Option<u32> },
}

impl Place {
    /// The place of GPU `device` (`None`: host memory, this thread's node).
    pub fn of(gpu: Option<i32>) -> Place {
        match gpu {
            Some(device) => {
                let pci_path = GpuBinding::pci_bus_id(device)
                    .and_then(|id| canonical(&Path::new("/sys/bus/pci/devices").join(id)));
                let numa = pci_path.as_deref().and_then(|p| numa_node(Path::new(p)));
                Place::Gpu {
                    device,
                    pci_path,
                    numa,
                }
            }
            None => Place::Host { numa: this_numa() },
        }
    }

    fn locality(&self) -> Locality<'_> {
        match self {
            Place::Gpu { pci_path, numa, .. } => Locality::Gpu {
                pci_path: pci_path.as_deref(),
                numa: *numa,
            },
            Place::Host { numa } => Locality::Host { numa: *numa },
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let numa = |n: &Option<u32>| n.map_or("?".to_owned(), |n| n.to_string());
        match self {
            Place::Gpu {
                device,
                pci_path,
                numa: n,
            } => write!(
                f,
                "GPU {device} ({}, NUMA {})",
                pci_path.as_deref().unwrap_or("PCI path unknown"),
                numa(n)
            ),
            Place::Host { numa: n } => write!(f, "host memory (NUMA {})", numa(n)),
        }
    }
}

/// Every device of `net` as the ranking sees it.
pub fn devices(net: &Net) -> Result<Vec<DeviceInfo>> {
    (0..net.devices()?)
        .map(|i| Ok(DeviceInfo::of(i, &net.properties(i)?)))
        .collect()
}

/// Where one device ranks for memory at a place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rank {
    /// 0 = nearest.
    pub rank: usize,
    /// PCI levels from the memory's device up to the first bridge it shares with this one;
    /// `None` without both paths.
    pub distance: Option<u16>,
}

/// Each device's [`Rank`] for memory at `place`, in device order.
pub fn ranks(place: &Place, devs: &[DeviceInfo]) -> Result<Vec<Rank>> {
    let ranked: Vec<Device<'_>> = devs.iter().map(DeviceInfo::ranked).collect();
    let mut order = vec![0u8; ranked.len()];
    let order = topology::rank(place.locality(), &ranked, &mut order).map_err(config)?;
    let mut out = vec![
        Rank {
            rank: 0,
            distance: None
        };
        devs.len()
    ];
    for (rank, &i) in order.iter().enumerate() {
        let i = usize::from(i);
        out[i] = Rank {
            rank,
            distance: topology::distance(place.locality(), &ranked[i]),
        };
    }
    Ok(out)
}

/// The device of each of `channels` channels, by `choice` for memory at `place`; logged once
/// at INFO in one line.
pub fn channel_devices(
    net: &Net,
    choice: &Devices,
    channels: usize,
    place: &Place,
) -> Result<Vec<u8>> {
    let devs = devices(net)?;
    let ranked: Vec<Device<'_>> = devs.iter().map(DeviceInfo::ranked).collect();
    let list = choice.resolve(place.locality(), &ranked).map_err(config)?;
    let mut map = vec![0u8; channels];
    list.assign_channels(&mut map).map_err(config)?;
    let mut line = String::new();
    for (c, &d) in map.iter().enumerate() {
        let _ = write!(
            line,
            "{}{c}->{d} ({})",
            if c == 0 { "" } else { ", " },
            devs[usize::from(d)].name
        );
    }
    crate::log_info!(
        "engine",
        "session devices ({choice}) for {place}: channel->device {line}"
    );
    Ok(map)
}

fn config(e: topology::TopologyError) -> Error {
    Error::Config(format!("TCPX_DEVICES: {e}"))
}

fn canonical(p: &Path) -> Option<String> {
    std::fs::canonicalize(p)
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// `numa_node` of the device at `path`, or of the nearest device above it that has one (a
/// virtio NIC's path names the virtio device below its PCI function); `-1` (no affinity) and
/// unreadable files are `None`.
fn numa_node(path: &Path) -> Option<u32> {
    let file = path
        .ancestors()
        .take_while(|p| p.components().count() > 2)
        .map(|p| p.join("numa_node"))
        .find(|f| f.exists())?;
    let s = std::fs::read_to_string(file).ok()?;
    s.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

/// The NUMA node of the CPU this thread runs on, where sysfs says.
fn this_numa() -> Option<u32> {
    extern "C" {
        fn sched_getcpu() -> std::ffi::c_int;
    }
    // SAFETY: a plain query of glibc with no arguments.
    let cpu = u32::try_from(unsafe { sched_getcpu() }).ok()?;
    let dir = std::fs::read_dir(format!("/sys/devices/system/cpu/cpu{cpu}")).ok()?;
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numa_nodes_read_from_sysfs_files() {
        let dir = std::env::temp_dir().join(format!("tcpx-numa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, want) in [("1\n", Some(1)), ("-1\n", None), ("x", None)] {
            std::fs::write(dir.join("numa_node"), text).unwrap();
            assert_eq!(numa_node(&dir), want, "{text:?}");
        }
        let below = dir.join("virtio3");
        std::fs::create_dir_all(&below).unwrap();
        std::fs::write(dir.join("numa_node"), "2\n").unwrap();
        assert_eq!(
            numa_node(&below),
            Some(2),
            "the PCI function above a virtio device"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(numa_node(&dir), None, "no file");
    }

    /// A3 High: GPU 5 behind the third switch; the NICs as the plugin reports them (one per
    /// switch) plus a control NIC without CUDA. `auto` picks the GPU's own NIC, `all` puts it
    /// first, ranks follow PCI distance.
    #[test]
    fn a3_high_gpu_sessions_use_their_switch_s_nic() {
        let nic = |i: usize, bus: &str, root: &str, numa: u32| {
            DeviceInfo {
            index: i,
            name: format!("eth{}", i + 1),
            pci_path: Some(format!(
                "/sys/devices/pci0000:{root}/0000:{root}:00.0/0000:{bus}:00.0/0000:{bus}:01.0/0000:{bus}:02.0"
            )),
            numa: Some(numa),
            cuda: true,
        }
        };
        let devs = [
            nic(0, "11", "10", 0),
            nic(1, "21", "20", 0),
            nic(2, "81", "80", 1),
            nic(3, "91", "90", 1),
            DeviceInfo {
                index: 4,
                name: "eth0".into(),
                pci_path: Some("/sys/devices/pci0000:00/0000:00:04.0".into()),
                numa: Some(0),
                cuda: false,
            },
        ];
        let gpu = Place::Gpu {
            device: 5,
            pci_path: Some(
                "/sys/devices/pci0000:80/0000:80:00.0/0000:81:00.0/0000:81:01.0/0000:82:00.0"
                    .into(),
            ),
            numa: Some(1),
        };
        let ranked: Vec<Device<'_>> = devs.iter().map(DeviceInfo::ranked).collect();
        let auto = Devices::Auto.resolve(gpu.locality(), &ranked).unwrap();
        assert_eq!(auto.as_slice(), &[2]);
        let all = Devices::All.resolve(gpu.locality(), &ranked).unwrap();
        assert_eq!(all.as_slice(), &[2, 3, 0, 1]);
        let r = ranks(&gpu, &devs).unwrap();
        assert_eq!(r[2].rank, 0, "{r:?}");
        assert_eq!(r[4].rank, 4, "the control NIC ranks last: {r:?}");
        assert!(r[2].distance < r[3].distance, "{r:?}");
    }
}
