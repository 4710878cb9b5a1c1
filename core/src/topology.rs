//! NIC topology: which plugin devices a session uses, and which device each channel uses.
//!
//! Pure functions over what the std side reads from sysfs (PCI paths, NUMA nodes) and from the
//! plugin's properties; nothing here touches the file system or allocates.
//!
//! Devices are ranked nearest first by one key, compared field by field:
//! 1. in a GPU session, devices that take CUDA pointers before those that do not;
//! 2. more components shared between the device's PCI path and the GPU's (compared component
//!    by component, so `0000:01:00.0` never matches `0000:01:00.1`); a device without a path,
//!    or a session without a GPU path, shares none;
//! 3. on the session's NUMA node before elsewhere (an unknown node matches nothing);
//! 4. then the lower device index.

use core::cmp::Reverse;
use core::fmt;
use core::str::FromStr;

use crate::plan::MAX_CHANNELS;

/// Most devices a [`DeviceList`] holds, and so the most a session spreads over. Channels are
/// capped at [`MAX_CHANNELS`] too, so a longer list could never be used whole.
pub const MAX_DEVICES: usize = 16;

/// Most devices [`rank`] orders: device indices are `u8`.
pub const MAX_RANKED: usize = 256;

/// One plugin device as the ranking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Device<'a> {
    /// The device's sysfs path (the plugin's `pciPath`, a realpath under `/sys/devices`).
    pub pci_path: Option<&'a str>,
    /// NUMA node (`<pci_path>/numa_node`; `None` where unknown or `-1`).
    pub numa: Option<u32>,
    /// The plugin takes CUDA pointers on it (`NCCL_PTR_CUDA` in `ptrSupport`).
    pub cuda: bool,
}

/// Where the memory a session moves lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Locality<'a> {
    /// A GPU session: the GPU's sysfs realpath (`/sys/bus/pci/devices/<bus id>` resolved;
    /// `None` where unknown) and NUMA node.
    Gpu {
        pci_path: Option<&'a str>,
        numa: Option<u32>,
    },
    /// A host-only session: the NUMA node of its memory or thread (`None` where unknown).
    Host { numa: Option<u32> },
}

/// Why a device choice was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopologyError {
    /// An empty value or list.
    Empty,
    /// A list entry that is not a device index `0..=255`; `entry` counts from 1.
    BadEntry { entry: usize },
    /// More than [`MAX_DEVICES`] entries.
    TooManyEntries { count: usize },
    /// A device named twice: channels spread over a list evenly, so a repeat would silently
    /// give one device a double share.
    Duplicate { device: u8 },
    /// A listed device the plugin does not have.
    OutOfRange { device: u8, count: usize },
    /// The plugin reports no devices.
    NoDevices,
    /// More than [`MAX_RANKED`] devices to rank.
    TooManyDevices { count: usize },
    /// A channel count outside `1..=MAX_CHANNELS`.
    Channels { channels: usize },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "no device named (auto, all, or indices like 0,2)"),
            Self::BadEntry { entry } => {
                write!(f, "entry {entry} is not a device index (0..=255)")
            }
            Self::TooManyEntries { count } => {
                write!(f, "{count} devices listed (at most {MAX_DEVICES})")
            }
            Self::Duplicate { device } => write!(f, "device {device} is listed twice"),
            Self::OutOfRange { device, count } => {
                write!(f, "device {device} does not exist (the plugin has {count})")
            }
            Self::NoDevices => write!(f, "the plugin reports no devices"),
            Self::TooManyDevices { count } => {
                write!(f, "{count} devices (at most {MAX_RANKED} are ranked)")
            }
            Self::Channels { channels } => {
                write!(f, "{channels} channels (1..={MAX_CHANNELS})")
            }
        }
    }
}

/// Path components, ignoring empty ones (leading, doubled or trailing `/`).
fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Components two paths share from the root. Case-insensitive: sysfs writes bus ids in lower
/// case, `cuDeviceGetPCIBusId` in upper case.
fn shared_components(a: &str, b: &str) -> u16 {
    let n = components(a)
        .zip(components(b))
        .take_while(|(x, y)| x.eq_ignore_ascii_case(y))
        .count();
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The ranking key; smaller is nearer. Field order is comparison order (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Closeness {
    no_cuda: bool,
    shared: Reverse<u16>,
    other_numa: bool,
}

impl Closeness {
    fn of(locality: Locality<'_>, device: &Device<'_>) -> Self {
        let (gpu_path, numa, gpu) = match locality {
            Locality::Gpu { pci_path, numa } => (pci_path, numa, true),
            Locality::Host { numa } => (None, numa, false),
        };
        let shared = match (gpu_path, device.pci_path) {
            (Some(g), Some(d)) => shared_components(g, d),
            _ => 0,
        };
        Closeness {
            no_cuda: gpu && !device.cuda,
            shared: Reverse(shared),
            other_numa: numa.is_none() || numa != device.numa,
        }
    }
}

/// How far `device` is from the session's GPU, for display: the levels of the PCI tree between
/// the GPU and the first bridge its path shares with the device's (2 = behind the same PCIe
/// switch). Orders like the ranking's path criterion. `None` without both paths.
pub fn distance(locality: Locality<'_>, device: &Device<'_>) -> Option<u16> {
    let Locality::Gpu {
        pci_path: Some(gpu),
        ..
    } = locality
    else {
        return None;
    };
    let dev = device.pci_path?;
    let depth = u16::try_from(components(gpu).count()).unwrap_or(u16::MAX);
    Some(depth - shared_components(gpu, dev).min(depth))
}

/// Write device indices into `order`, nearest first (see the module doc), and return the
/// filled part: the `min(order.len(), devices.len())` nearest devices. Ties keep index order.
/// O(devices × order.len()); nothing is allocated.
pub fn rank<'o>(
    locality: Locality<'_>,
    devices: &[Device<'_>],
    order: &'o mut [u8],
) -> Result<&'o [u8], TopologyError> {
    if devices.len() > MAX_RANKED {
        return Err(TopologyError::TooManyDevices {
            count: devices.len(),
        });
    }
    let cap = order.len().min(devices.len());
    let key = |i: u8| Closeness::of(locality, &devices[usize::from(i)]);
    let mut n = 0;
    for (i, d) in devices.iter().enumerate() {
        let k = Closeness::of(locality, d);
        // Devices arrive in index order, so inserting after every equal key keeps ties by
        // index.
        let pos = (0..n).find(|&j| key(order[j]) > k).unwrap_or(n);
        if pos >= cap {
            continue;
        }
        let end = if n < cap {
            n += 1;
            n - 1
        } else {
            cap - 1
        };
        order.copy_within(pos..end, pos + 1);
        // i < MAX_RANKED = 256.
        order[pos] = i as u8;
    }
    Ok(&order[..n])
}

/// 1 to [`MAX_DEVICES`] distinct device indices, in the order channels take them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceList {
    // Slots past `len` stay 0, so the derived comparisons see only the list.
    ids: [u8; MAX_DEVICES],
    len: u8,
}

impl DeviceList {
    /// `devices`, checked: not empty, at most [`MAX_DEVICES`], no repeats.
    pub fn new(devices: &[u8]) -> Result<Self, TopologyError> {
        let mut list = Self::empty();
        for &d in devices {
            list.push(d, devices.len())?;
        }
        if list.len == 0 {
            return Err(TopologyError::Empty);
        }
        Ok(list)
    }

    const fn empty() -> Self {
        Self {
            ids: [0; MAX_DEVICES],
            len: 0,
        }
    }

    /// Append `device`; `count` is the whole list's length, for the error.
    fn push(&mut self, device: u8, count: usize) -> Result<(), TopologyError> {
        if self.as_slice().contains(&device) {
            return Err(TopologyError::Duplicate { device });
        }
        let Some(slot) = self.ids.get_mut(usize::from(self.len)) else {
            return Err(TopologyError::TooManyEntries { count });
        };
        *slot = device;
        self.len += 1;
        Ok(())
    }

    /// The device indices.
    pub fn as_slice(&self) -> &[u8] {
        &self.ids[..usize::from(self.len)]
    }

    /// Fill `channels` with each channel's device: channel `c` takes `self[c % len]`, so
    /// channels round-robin over the list and no device gets two more than another.
    /// `channels.len()` must be in `1..=MAX_CHANNELS`; on error nothing is written.
    pub fn assign_channels(&self, channels: &mut [u8]) -> Result<(), TopologyError> {
        if channels.is_empty() || channels.len() > usize::from(MAX_CHANNELS) {
            return Err(TopologyError::Channels {
                channels: channels.len(),
            });
        }
        let list = self.as_slice();
        for (c, slot) in channels.iter_mut().enumerate() {
            *slot = list[c % list.len()];
        }
        Ok(())
    }
}

impl core::ops::Deref for DeviceList {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Display for DeviceList {
    /// `0,2`: the syntax [`Devices::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Which devices a session spreads its channels over (`TCPX_DEVICES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Devices {
    /// Every device tied for nearest (the same ranking key as the first). A GPU session gets
    /// the NIC(s) behind its GPU's switch; a host session the devices on its NUMA node, or
    /// every device when none is there or the node is unknown.
    #[default]
    Auto,
    /// Every usable device, nearest first, at most [`MAX_DEVICES`]. In a GPU session, usable
    /// means taking CUDA pointers when any device does.
    All,
    /// These devices in this order, as given. Not checked against CUDA support: the engine
    /// refuses CUDA memory on a device without it.
    List(DeviceList),
}

impl Devices {
    /// One device (the meaning of `TCPX_DEVICE=n`).
    pub const fn one(device: u8) -> Self {
        let mut ids = [0; MAX_DEVICES];
        ids[0] = device;
        Devices::List(DeviceList { ids, len: 1 })
    }

    /// `auto`, `all` (either in any case) or a comma-separated list of distinct device
    /// indices such as `0,2`; blanks around the value and around entries are ignored.
    pub fn parse(value: &str) -> Result<Self, TopologyError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(TopologyError::Empty);
        }
        if value.eq_ignore_ascii_case("auto") {
            return Ok(Devices::Auto);
        }
        if value.eq_ignore_ascii_case("all") {
            return Ok(Devices::All);
        }
        let count = value.split(',').count();
        if count > MAX_DEVICES {
            return Err(TopologyError::TooManyEntries { count });
        }
        let mut list = DeviceList::empty();
        for (i, entry) in value.split(',').enumerate() {
            let entry = entry.trim();
            // `u8::from_str` would take a leading `+`; a device index is digits only.
            let device = (!entry.is_empty() && entry.bytes().all(|b| b.is_ascii_digit()))
                .then(|| entry.parse::<u8>().ok())
                .flatten()
                .ok_or(TopologyError::BadEntry { entry: i + 1 })?;
            list.push(device, count)?;
        }
        Ok(Devices::List(list))
    }

    /// The devices the session's channels round-robin over, in order, for a session at
    /// `locality` on a plugin with `devices`. A list is checked against the device count.
    pub fn resolve(
        &self,
        locality: Locality<'_>,
        devices: &[Device<'_>],
    ) -> Result<DeviceList, TopologyError> {
        if devices.is_empty() {
            return Err(TopologyError::NoDevices);
        }
        if let Devices::List(list) = self {
            if let Some(&device) = list.iter().find(|&&d| usize::from(d) >= devices.len()) {
                return Err(TopologyError::OutOfRange {
                    device,
                    count: devices.len(),
                });
            }
            return Ok(*list);
        }
        let mut buf = [0u8; MAX_DEVICES];
        let order = rank(locality, devices, &mut buf)?;
        let key = |i: u8| Closeness::of(locality, &devices[usize::from(i)]);
        let best = key(order[0]);
        // The order is sorted by key and CUDA support is its first field, so each choice is
        // a prefix of it.
        let chosen = |i: &&u8| match self {
            Devices::Auto => key(**i) == best,
            _ => key(**i).no_cuda == best.no_cuda,
        };
        let mut list = DeviceList::empty();
        for &i in order.iter().take_while(chosen) {
            list.push(i, order.len())?;
        }
        Ok(list)
    }
}

impl FromStr for Devices {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, TopologyError> {
        Devices::parse(s)
    }
}

impl fmt::Display for Devices {
    /// `auto`, `all` or `0,2`: the syntax [`Devices::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::Auto => f.write_str("auto"),
            Devices::All => f.write_str("all"),
            Devices::List(list) => list.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests;
