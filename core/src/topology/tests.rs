extern crate std;

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

// A3 High (a3-highgpu-8g): 8 H100 and 4 TCPX NICs, one PCIe switch per pair of GPUs and
// its NIC ({0,1}→eth1, {2,3}→eth2, {4,5}→eth3, {6,7}→eth4), switches 0-1 on NUMA node 0,
// 2-3 on node 1. Bus ids as the VM reports them (GPUs 04 05 0a 0b 84 85 8a 8b, NICs 06 0c
// 86 8c); each switch sits under its own host bridge (pci0000:01, :07, :81, :87), behind a
// root port and the switch's upstream port. The gVNIC eth0 (control traffic, no CUDA) is
// on pci0000:00.
const GPU: [&str; 8] = [
    "/sys/devices/pci0000:01/0000:01:00.0/0000:02:00.0/0000:03:00.0/0000:04:00.0",
    "/sys/devices/pci0000:01/0000:01:00.0/0000:02:00.0/0000:03:01.0/0000:05:00.0",
    "/sys/devices/pci0000:07/0000:07:00.0/0000:08:00.0/0000:09:00.0/0000:0a:00.0",
    "/sys/devices/pci0000:07/0000:07:00.0/0000:08:00.0/0000:09:01.0/0000:0b:00.0",
    "/sys/devices/pci0000:81/0000:81:00.0/0000:82:00.0/0000:83:00.0/0000:84:00.0",
    "/sys/devices/pci0000:81/0000:81:00.0/0000:82:00.0/0000:83:01.0/0000:85:00.0",
    "/sys/devices/pci0000:87/0000:87:00.0/0000:88:00.0/0000:89:00.0/0000:8a:00.0",
    "/sys/devices/pci0000:87/0000:87:00.0/0000:88:00.0/0000:89:01.0/0000:8b:00.0",
];
/// eth0 (gVNIC), eth1..eth4: device index = N of ethN, as a plugin listing every
/// interface reports them.
const NIC: [Device<'static>; 5] = [
    Device {
        pci_path: Some("/sys/devices/pci0000:00/0000:00:04.0"),
        numa: Some(0),
        cuda: false,
    },
    Device {
        pci_path: Some(
            "/sys/devices/pci0000:01/0000:01:00.0/0000:02:00.0/0000:03:02.0/0000:06:00.0",
        ),
        numa: Some(0),
        cuda: true,
    },
    Device {
        pci_path: Some(
            "/sys/devices/pci0000:07/0000:07:00.0/0000:08:00.0/0000:09:02.0/0000:0c:00.0",
        ),
        numa: Some(0),
        cuda: true,
    },
    Device {
        pci_path: Some(
            "/sys/devices/pci0000:81/0000:81:00.0/0000:82:00.0/0000:83:02.0/0000:86:00.0",
        ),
        numa: Some(1),
        cuda: true,
    },
    Device {
        pci_path: Some(
            "/sys/devices/pci0000:87/0000:87:00.0/0000:88:00.0/0000:89:02.0/0000:8c:00.0",
        ),
        numa: Some(1),
        cuda: true,
    },
];

fn gpu(g: usize) -> Locality<'static> {
    Locality::Gpu {
        pci_path: Some(GPU[g]),
        numa: Some(g as u32 / 4),
    }
}

/// ethN of GPU `g`.
fn own_nic(g: usize) -> u8 {
    g as u8 / 2 + 1
}

/// The other NIC on GPU `g`'s NUMA node.
fn numa_peer_nic(g: usize) -> u8 {
    [2, 1, 4, 3][g / 2]
}

fn resolve(d: Devices, loc: Locality<'_>, devs: &[Device<'_>]) -> Vec<u8> {
    d.resolve(loc, devs).unwrap().to_vec()
}

#[test]
fn a3_auto_picks_each_gpus_own_nic() {
    for g in 0..8 {
        assert_eq!(
            resolve(Devices::Auto, gpu(g), &NIC),
            [own_nic(g)],
            "GPU {g}"
        );
    }
}

#[test]
fn a3_all_orders_own_then_numa_peer_then_the_rest_without_the_gvnic() {
    for g in 0..8 {
        let (own, peer) = (own_nic(g), numa_peer_nic(g));
        let rest: Vec<u8> = (1..=4).filter(|n| *n != own && *n != peer).collect();
        let mut want = std::vec![own, peer];
        want.extend(rest);
        assert_eq!(resolve(Devices::All, gpu(g), &NIC), want, "GPU {g}");
    }
}

#[test]
fn a3_rank_puts_the_gvnic_last_and_shows_distances() {
    let mut order = [0u8; 5];
    assert_eq!(rank(gpu(0), &NIC, &mut order).unwrap(), [1, 2, 3, 4, 0]);
    assert_eq!(rank(gpu(7), &NIC, &mut order).unwrap(), [4, 3, 1, 2, 0]);
    // Behind the same switch: GPU → downstream port → switch. Elsewhere: up to
    // /sys/devices.
    let d: Vec<_> = NIC.iter().map(|n| distance(gpu(0), n)).collect();
    assert_eq!(d, [Some(5), Some(2), Some(5), Some(5), Some(5)]);
    assert_eq!(distance(Locality::Host { numa: Some(0) }, &NIC[1]), None);
}

#[test]
fn a3_with_the_tcpx_plugin_device_list() {
    // TCPX exposes only eth1..eth4, as devices 0..3.
    for g in 0..8 {
        let want = own_nic(g) - 1;
        assert_eq!(resolve(Devices::Auto, gpu(g), &NIC[1..]), [want], "GPU {g}");
    }
}

#[test]
fn a3_switches_under_root_ports_of_one_host_bridge_per_node() {
    // The same machine if its switches hung off root ports of two host bridges: the other
    // switch on the node now shares the host bridge, so it ranks second by path alone.
    let sw = |node: u32, port: u32, leaf: u32, bus: u32| {
        let hb = node * 0x80;
        format!(
            "/sys/devices/pci0000:{hb:02x}/0000:{hb:02x}:{port:02x}.0/0000:{:02x}:00.0/0000:{:02x}:{leaf:02x}.0/0000:{bus:02x}:00.0",
            hb + port * 8, hb + port * 8 + 1
        )
    };
    let gpus: Vec<String> = (0..8u32)
        .map(|g| sw(g / 4, 1 + g / 2 % 2, g % 2, 0x10 + g))
        .collect();
    let nics: Vec<String> = (0..4u32)
        .map(|n| sw(n / 2, 1 + n % 2, 2, 0x20 + n))
        .collect();
    let devs: Vec<Device<'_>> = nics
        .iter()
        .enumerate()
        .map(|(n, p)| Device {
            pci_path: Some(p),
            numa: Some(n as u32 / 2),
            cuda: true,
        })
        .collect();
    for (g, path) in gpus.iter().enumerate() {
        let loc = Locality::Gpu {
            pci_path: Some(path),
            numa: Some(g as u32 / 4),
        };
        let (own, peer) = (own_nic(g) - 1, numa_peer_nic(g) - 1);
        assert_eq!(resolve(Devices::Auto, loc, &devs), [own], "GPU {g}");
        assert_eq!(
            resolve(Devices::All, loc, &devs)[..2],
            [own, peer],
            "GPU {g}"
        );
        let d = |n: u8| distance(loc, &devs[usize::from(n)]).unwrap();
        assert!(d(own) < d(peer), "GPU {g}");
    }
}

#[test]
fn host_sessions_take_their_numa_node_else_everything() {
    let host = |numa| Locality::Host { numa };
    assert_eq!(resolve(Devices::Auto, host(Some(0)), &NIC), [0, 1, 2]);
    assert_eq!(resolve(Devices::Auto, host(Some(1)), &NIC), [3, 4]);
    assert_eq!(resolve(Devices::Auto, host(Some(7)), &NIC), [0, 1, 2, 3, 4]);
    assert_eq!(resolve(Devices::Auto, host(None), &NIC), [0, 1, 2, 3, 4]);
    // Host memory needs no CUDA support: the gVNIC is as good as any.
    assert_eq!(resolve(Devices::All, host(Some(1)), &NIC), [3, 4, 0, 1, 2]);
}

#[test]
fn gpu_without_a_known_path_falls_back_to_numa() {
    let loc = Locality::Gpu {
        pci_path: None,
        numa: Some(1),
    };
    assert_eq!(resolve(Devices::Auto, loc, &NIC), [3, 4]);
    assert_eq!(resolve(Devices::All, loc, &NIC), [3, 4, 1, 2]);
    assert_eq!(distance(loc, &NIC[3]), None);
}

#[test]
fn no_paths_at_all_rank_by_numa_then_index() {
    let devs: Vec<Device<'_>> = NIC
        .iter()
        .map(|d| Device {
            pci_path: None,
            ..*d
        })
        .collect();
    assert_eq!(resolve(Devices::Auto, gpu(5), &devs), [3, 4]);
    assert_eq!(resolve(Devices::All, gpu(5), &devs), [3, 4, 1, 2]);
    let bare = [Device {
        cuda: true,
        ..Device::default()
    }; 3];
    assert_eq!(resolve(Devices::Auto, gpu(0), &bare), [0, 1, 2]);
    assert_eq!(distance(gpu(0), &bare[0]), None);
}

#[test]
fn devices_without_a_path_rank_after_those_with_one() {
    let mut devs = NIC;
    devs[1].pci_path = None; // eth1 lost its path: GPU 0 falls back to its NUMA node.
    assert_eq!(resolve(Devices::Auto, gpu(0), &devs), [2]);
    assert_eq!(resolve(Devices::All, gpu(0), &devs), [2, 3, 4, 1]);
}

#[test]
fn a_shared_path_outranks_the_numa_node() {
    // eth1 reported on the other node (a VM without NUMA emulation reports one node):
    // its switch still wins; NUMA only orders the rest.
    let mut devs = NIC;
    devs[1].numa = Some(1);
    assert_eq!(resolve(Devices::Auto, gpu(0), &devs), [1]);
    assert_eq!(resolve(Devices::All, gpu(0), &devs), [1, 2, 3, 4]);
}

#[test]
fn one_nic_serves_every_gpu() {
    for g in 0..8 {
        assert_eq!(resolve(Devices::Auto, gpu(g), &NIC[3..4]), [0]);
        assert_eq!(resolve(Devices::All, gpu(g), &NIC[3..4]), [0]);
    }
}

#[test]
fn nics_without_cuda_are_used_only_when_no_nic_has_it() {
    let devs: Vec<Device<'_>> = NIC.iter().map(|d| Device { cuda: false, ..*d }).collect();
    // Same ranking as with CUDA, gVNIC included by its path and NUMA node.
    assert_eq!(resolve(Devices::Auto, gpu(2), &devs), [2]);
    assert_eq!(resolve(Devices::All, gpu(2), &devs), [2, 0, 1, 3, 4]);
    // One CUDA NIC far away still beats a non-CUDA one next to the GPU.
    let mut mixed = NIC;
    for d in &mut mixed[1..4] {
        d.cuda = false;
    }
    assert_eq!(resolve(Devices::Auto, gpu(0), &mixed), [4]);
    assert_eq!(resolve(Devices::All, gpu(0), &mixed), [4]);
}

#[test]
fn paths_compare_by_component_and_ignore_case_and_empty_components() {
    let loc = Locality::Gpu {
        pci_path: Some("/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"),
        numa: None,
    };
    let devs = [
        // Shares "0000:00:01" as characters, not as a component.
        Device {
            pci_path: Some("/sys/devices/pci0000:00/0000:00:01.1/0000:02:00.0"),
            numa: None,
            cuda: true,
        },
        Device {
            pci_path: Some("/SYS//devices/PCI0000:00/0000:00:01.0/0000:03:00.0/"),
            numa: None,
            cuda: true,
        },
    ];
    assert_eq!(resolve(Devices::Auto, loc, &devs), [1]);
    assert_eq!(distance(loc, &devs[0]), Some(2));
    assert_eq!(distance(loc, &devs[1]), Some(1));
}

#[test]
fn rank_fills_as_much_as_the_buffer_holds() {
    let mut small = [9u8; 2];
    assert_eq!(rank(gpu(4), &NIC, &mut small).unwrap(), [3, 4]);
    let mut big = [9u8; 8];
    assert_eq!(rank(gpu(4), &NIC, &mut big).unwrap(), [3, 4, 1, 2, 0]);
    assert_eq!(big[5..], [9, 9, 9], "nothing written past the devices");
    assert!(rank(gpu(4), &NIC, &mut []).unwrap().is_empty());
    assert!(rank(gpu(4), &[], &mut big).unwrap().is_empty());
    let many = [Device::default(); MAX_RANKED + 1];
    assert_eq!(
        rank(gpu(0), &many, &mut big),
        Err(TopologyError::TooManyDevices { count: 257 })
    );
}

#[test]
fn more_devices_than_a_list_holds() {
    let devs = [Device {
        cuda: true,
        ..Device::default()
    }; 40];
    let want: Vec<u8> = (0..MAX_DEVICES as u8).collect();
    assert_eq!(resolve(Devices::Auto, gpu(0), &devs), want);
    assert_eq!(resolve(Devices::All, gpu(0), &devs), want);
    assert_eq!(resolve(Devices::parse("39").unwrap(), gpu(0), &devs), [39]);
}

#[test]
fn explicit_lists_keep_their_order_and_are_checked_against_the_device_count() {
    let l = Devices::parse("3,0").unwrap();
    assert_eq!(resolve(l, gpu(0), &NIC), [3, 0]);
    assert_eq!(
        Devices::parse("1,5").unwrap().resolve(gpu(0), &NIC),
        Err(TopologyError::OutOfRange {
            device: 5,
            count: 5
        })
    );
    assert_eq!(
        Devices::one(0).resolve(gpu(0), &[]),
        Err(TopologyError::NoDevices)
    );
    assert_eq!(
        Devices::Auto.resolve(gpu(0), &[]),
        Err(TopologyError::NoDevices)
    );
    assert_eq!(resolve(Devices::one(4), gpu(0), &NIC), [4]);
}

#[test]
fn parse_accepts_the_documented_forms() {
    assert_eq!(Devices::parse("auto"), Ok(Devices::Auto));
    assert_eq!(Devices::parse(" AUTO "), Ok(Devices::Auto));
    assert_eq!(Devices::parse("All"), Ok(Devices::All));
    assert_eq!(Devices::parse("0"), Ok(Devices::one(0)));
    let l = Devices::parse(" 0, 2 ,15").unwrap();
    assert_eq!(l.to_string(), "0,2,15");
    assert_eq!("255".parse::<Devices>().unwrap().to_string(), "255");
    assert_eq!(Devices::default(), Devices::Auto);
    let full: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    assert!(Devices::parse(&full.join(",")).is_ok());
}

#[test]
fn parse_refuses_bad_values_with_the_reason() {
    use TopologyError::*;
    assert_eq!(Devices::parse(""), Err(Empty));
    assert_eq!(Devices::parse("  "), Err(Empty));
    assert_eq!(Devices::parse("0,"), Err(BadEntry { entry: 2 }));
    assert_eq!(Devices::parse(",0"), Err(BadEntry { entry: 1 }));
    assert_eq!(Devices::parse("0,,1"), Err(BadEntry { entry: 2 }));
    assert_eq!(Devices::parse("+1"), Err(BadEntry { entry: 1 }));
    assert_eq!(Devices::parse("-1"), Err(BadEntry { entry: 1 }));
    assert_eq!(Devices::parse("1,256"), Err(BadEntry { entry: 2 }));
    assert_eq!(Devices::parse("0 1"), Err(BadEntry { entry: 1 }));
    assert_eq!(Devices::parse("nearest"), Err(BadEntry { entry: 1 }));
    assert_eq!(Devices::parse("2,0,2"), Err(Duplicate { device: 2 }));
    let long: Vec<String> = (0..17).map(|i| i.to_string()).collect();
    assert_eq!(
        Devices::parse(&long.join(",")),
        Err(TooManyEntries { count: 17 })
    );
    assert_eq!(DeviceList::new(&[]), Err(Empty));
    assert_eq!(DeviceList::new(&[1, 1]), Err(Duplicate { device: 1 }));
    assert_eq!(
        DeviceList::new(&[0; 20]),
        Err(Duplicate { device: 0 }),
        "repeats are found before the length"
    );
    let ok: Vec<u8> = (0..17).collect();
    assert_eq!(DeviceList::new(&ok), Err(TooManyEntries { count: 17 }));
    assert_eq!(
        Devices::parse("0,x").unwrap_err().to_string(),
        "entry 2 is not a device index (0..=255)"
    );
}

#[test]
fn channels_round_robin_over_the_list() {
    let l = DeviceList::new(&[3, 1]).unwrap();
    let mut ch = [0u8; 5];
    l.assign_channels(&mut ch).unwrap();
    assert_eq!(ch, [3, 1, 3, 1, 3]);
    let mut one = [9u8; 1];
    l.assign_channels(&mut one).unwrap();
    assert_eq!(one, [3]);
    let mut none: [u8; 0] = [];
    assert_eq!(
        l.assign_channels(&mut none),
        Err(TopologyError::Channels { channels: 0 })
    );
    let mut too_many = [7u8; 17];
    assert_eq!(
        l.assign_channels(&mut too_many),
        Err(TopologyError::Channels { channels: 17 })
    );
    assert_eq!(too_many, [7; 17], "nothing written on error");
}

// Random topologies: paths drawn from a small tree so that they share prefixes often.
fn device() -> impl Strategy<Value = (Option<String>, Option<u32>, bool)> {
    (
        proptest::option::of(proptest::collection::vec(0u8..3, 0..5)),
        proptest::option::of(0u32..3),
        any::<bool>(),
    )
        .prop_map(|(p, numa, cuda)| (p.map(path), numa, cuda))
}

fn path(parts: Vec<u8>) -> String {
    let mut s = String::from("/sys/devices");
    for p in parts {
        s.push_str(&format!("/0000:0{p}:00.0"));
    }
    s
}

fn locality() -> impl Strategy<Value = (bool, Option<String>, Option<u32>)> {
    (
        any::<bool>(),
        proptest::option::of(proptest::collection::vec(0u8..3, 0..5)),
        proptest::option::of(0u32..3),
    )
        .prop_map(|(gpu, p, numa)| (gpu, p.map(path), numa))
}

fn build<'a>(
    loc: &'a (bool, Option<String>, Option<u32>),
    devs: &'a [(Option<String>, Option<u32>, bool)],
) -> (Locality<'a>, Vec<Device<'a>>) {
    let l = if loc.0 {
        Locality::Gpu {
            pci_path: loc.1.as_deref(),
            numa: loc.2,
        }
    } else {
        Locality::Host { numa: loc.2 }
    };
    let d = devs
        .iter()
        .map(|(p, numa, cuda)| Device {
            pci_path: p.as_deref(),
            numa: *numa,
            cuda: *cuda,
        })
        .collect();
    (l, d)
}

proptest! {
    #[test]
    fn rank_is_a_stable_sort_by_closeness(
        loc in locality(),
        raw in proptest::collection::vec(device(), 0..24),
        cap in 0usize..30,
    ) {
        let (loc, devs) = build(&loc, &raw);
        let mut want: Vec<u8> = (0..devs.len() as u8).collect();
        want.sort_by_key(|&i| (Closeness::of(loc, &devs[usize::from(i)]), i));
        want.truncate(cap);
        let mut buf = std::vec![0u8; cap];
        prop_assert_eq!(rank(loc, &devs, &mut buf).unwrap(), &want[..]);
    }

    #[test]
    fn auto_never_picks_a_device_farther_than_an_unpicked_one(
        loc in locality(),
        raw in proptest::collection::vec(device(), 1..24),
    ) {
        let (loc, devs) = build(&loc, &raw);
        let picked = Devices::Auto.resolve(loc, &devs).unwrap();
        prop_assert!(!picked.is_empty());
        let key = |i: usize| Closeness::of(loc, &devs[i]);
        for &p in picked.iter() {
            for i in 0..devs.len() {
                prop_assert!(key(usize::from(p)) <= key(i));
                if !picked.contains(&(i as u8)) && picked.len() < MAX_DEVICES {
                    prop_assert!(key(usize::from(p)) < key(i), "an equally near device was left out");
                }
            }
            // Never a device without CUDA while one with it exists, in a GPU session.
            if matches!(loc, Locality::Gpu { .. }) && devs.iter().any(|d| d.cuda) {
                prop_assert!(devs[usize::from(p)].cuda);
            }
        }
    }

    #[test]
    fn all_is_every_usable_device_nearest_first(
        loc in locality(),
        raw in proptest::collection::vec(device(), 1..24),
    ) {
        let (loc, devs) = build(&loc, &raw);
        let all = Devices::All.resolve(loc, &devs).unwrap();
        let auto = Devices::Auto.resolve(loc, &devs).unwrap();
        prop_assert!(all.starts_with(&auto));
        let gpu_needs_cuda = matches!(loc, Locality::Gpu { .. }) && devs.iter().any(|d| d.cuda);
        let usable = devs.iter().filter(|d| d.cuda || !gpu_needs_cuda).count();
        prop_assert_eq!(all.len(), usable.min(MAX_DEVICES));
        let keys: Vec<_> = all.iter().map(|&i| (Closeness::of(loc, &devs[usize::from(i)]), i)).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn channels_spread_evenly_in_list_order(
        ids in proptest::collection::hash_set(any::<u8>(), 1..=MAX_DEVICES),
        channels in 1usize..=16,
    ) {
        let ids: Vec<u8> = ids.into_iter().collect();
        let list = DeviceList::new(&ids).unwrap();
        let mut map = std::vec![0u8; channels];
        list.assign_channels(&mut map).unwrap();
        for (c, d) in map.iter().enumerate() {
            prop_assert_eq!(*d, ids[c % ids.len()]);
        }
        let uses = |d: u8| map.iter().filter(|&&m| m == d).count();
        let (lo, hi) = ids.iter().map(|&d| uses(d)).fold((usize::MAX, 0), |(l, h), u| (l.min(u), h.max(u)));
        prop_assert!(hi - lo <= 1);
    }

    #[test]
    fn parse_never_panics_and_lists_round_trip(s in "[ ,0-9a-zA-Z+-]{0,40}") {
        if let Ok(d) = Devices::parse(&s) {
            prop_assert_eq!(Devices::parse(&d.to_string()), Ok(d));
        }
    }

    #[test]
    fn valid_lists_round_trip(ids in proptest::collection::hash_set(any::<u8>(), 1..=MAX_DEVICES)) {
        let ids: Vec<u8> = ids.into_iter().collect();
        let text: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        let d = Devices::parse(&text.join(",")).unwrap();
        prop_assert_eq!(d, Devices::List(DeviceList::new(&ids).unwrap()));
    }
}
