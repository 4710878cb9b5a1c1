//! `tcpx probe`: load an ncclNet plugin, initialise it and list its devices, in the
//! spirit of `ibv_devinfo`; `--json` prints the same facts as one JSON object.
//! `--preflight` instead checks, on an A3 VM, what Google's GPUDirect-TCPX plugin needs
//! before a first transfer (see the `preflight` module).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::json;
use tcpx::engine::topology::{self, Place, Rank};
use tcpx::error::{Error, Result};
use tcpx::net::{AbiVersion, DeviceProps, Net};

/// `tcpx probe` arguments.
#[derive(Debug, Default, PartialEq, clap::Args)]
// A repeated option: the last one counts.
#[command(args_override_self = true)]
pub struct Args {
    /// The ncclNet plugin to load (default: $TCPX_PLUGIN, else the embedded tcpxsock)
    #[arg(long, value_name = "PATH")]
    plugin: Option<PathBuf>,
    /// One JSON object with the same facts
    #[arg(long)]
    json: bool,
    /// The ncclNet table to use (default: the newest the plugin exports)
    #[arg(long, value_name = "7|8|9|10", value_parser = abi)]
    abi: Option<AbiVersion>,
    /// Rank every device for memory on GPU N (nearest = rank 0; what TCPX_DEVICES=auto picks
    /// from)
    #[arg(long, value_name = "N", value_parser = gpu, allow_negative_numbers = true)]
    gpu: Option<i32>,
    /// Check an A3 VM for GPUDirect-TCPX before a first transfer (plugin version, TCPX NICs,
    /// RxDM sockets, tuning env, GPU) instead of listing devices
    #[arg(long)]
    preflight: bool,
    /// Where --preflight reads sysfs (default /sys); tests point it at a fake tree
    #[arg(long, value_name = "DIR", hide = true)]
    sysfs_root: Option<PathBuf>,
}

fn abi(s: &str) -> std::result::Result<AbiVersion, String> {
    AbiVersion::parse(s).ok_or_else(|| "use 7, 8, 9 or 10".to_string())
}

fn gpu(s: &str) -> std::result::Result<i32, String> {
    s.parse()
        .ok()
        .filter(|&g: &i32| g >= 0)
        .ok_or_else(|| "a CUDA device number".to_string())
}

impl Args {
    /// What parsing alone does not check.
    fn check(&self) -> std::result::Result<(), String> {
        if self.sysfs_root.is_some() && !self.preflight {
            return Err("--sysfs-root only applies to --preflight".into());
        }
        Ok(())
    }
}

/// Everything `probe` found.
struct Report {
    source: String,
    net: Net,
    devices: Vec<DeviceProps>,
    /// Each device's NUMA node, from sysfs.
    numa: Vec<Option<u32>>,
    /// With `--gpu N`: the GPU's place, and each device's rank and PCI distance for it.
    ranking: Option<(Place, Vec<Rank>)>,
}

fn probe(o: &Args) -> Result<Report> {
    let net = match &o.plugin {
        Some(p) => Net::load_with(p, o.abi)?,
        None => {
            let net = Net::from_env(o.abi)?;
            if let Some(v) = o.abi.filter(|&v| v != net.abi()) {
                return Err(Error::Config(format!(
                    "the embedded plugin exports {} only, not {}",
                    net.abi().symbol(),
                    v.symbol()
                )));
            }
            net
        }
    };
    net.init()?;
    let n = net.devices()?;
    let devices = (0..n).map(|d| net.properties(d)).collect::<Result<_>>()?;
    let infos = topology::devices(&net)?;
    let ranking = match o.gpu {
        Some(g) => {
            let place = Place::of(Some(g));
            let ranks = topology::ranks(&place, &infos)?;
            Some((place, ranks))
        }
        None => None,
    };
    Ok(Report {
        source: net.source().to_string(),
        net,
        devices,
        numa: infos.iter().map(|d| d.numa).collect(),
        ranking,
    })
}

/// Runs `tcpx probe`; returns the exit code.
pub fn main(o: Args) -> i32 {
    if let Err(e) = o.check() {
        return crate::usage_error("probe", e);
    }
    if o.preflight {
        return preflight::main(&o);
    }
    match probe(&o) {
        Ok(r) => {
            print!("{}", if o.json { to_json(&r) } else { to_text(&r) });
            0
        }
        Err(e) => {
            eprintln!("tcpx probe: error: {e}");
            1
        }
    }
}

fn to_text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "plugin:         {}", r.source);
    let _ = writeln!(
        s,
        "abi:            {} ({})",
        r.net.abi(),
        r.net.abi().symbol()
    );
    let _ = writeln!(s, "name:           {}", r.net.name());
    let _ = writeln!(s, "devices:        {}", r.devices.len());
    if let Some((place, _)) = &r.ranking {
        let _ = writeln!(s, "ranked for:     {place}");
    }
    for (i, d) in r.devices.iter().enumerate() {
        let _ = writeln!(s, "\ndev {i}");
        let _ = writeln!(s, "\tname:           {}", d.name);
        let _ = writeln!(
            s,
            "\tpci_path:       {}",
            d.pci_path.as_deref().unwrap_or("(none)")
        );
        let _ = writeln!(
            s,
            "\tnuma_node:      {}",
            r.numa[i].map_or("(unknown)".into(), |n| n.to_string())
        );
        if let Some((_, ranks)) = &r.ranking {
            let Rank {
                rank,
                distance: dist,
            } = ranks[i];
            let dist = dist.map_or("(unknown)".into(), |d| format!("{d} PCI levels"));
            let _ = writeln!(s, "\trank:           {rank} (distance {dist})");
        }
        let _ = writeln!(s, "\tguid:           {:#018x}", d.guid);
        let _ = writeln!(s, "\tspeed:          {} Mbps", d.speed_mbps);
        let _ = writeln!(s, "\tport:           {}", d.port);
        let _ = writeln!(s, "\tlatency:        {} us", d.latency_us);
        let _ = writeln!(s, "\tptr_support:    {}", d.ptr_support);
        let _ = writeln!(s, "\tmax_comms:      {}", d.max_comms);
        let _ = writeln!(s, "\tmax_recvs:      {}", d.max_recvs);
        let _ = writeln!(s, "\treg_is_global:  {}", yes_no(d.reg_is_global));
        let _ = writeln!(s, "\tforce_flush:    {}", yes_no(d.force_flush));
        let _ = writeln!(
            s,
            "\tdevice_type:    {} (version {:#x})",
            d.device_type.as_str(),
            d.device_version
        );
        if !d.vdevs.is_empty() {
            let _ = writeln!(s, "\tvdevs:          {:?}", d.vdevs);
        }
        if let Some(b) = d.max_p2p_bytes {
            let _ = writeln!(s, "\tmax_p2p_bytes:  {b}");
        }
        if let Some(b) = d.max_coll_bytes {
            let _ = writeln!(s, "\tmax_coll_bytes: {b}");
        }
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// `probe --json`: the plugin and every device.
#[derive(Serialize)]
struct ReportJson<'a> {
    plugin: &'a str,
    abi: u32,
    symbol: &'a str,
    name: &'a str,
    devices: Vec<DeviceJson<'a>>,
}

/// One device in `probe --json`.
#[derive(Serialize)]
struct DeviceJson<'a> {
    index: usize,
    name: &'a str,
    pci_path: Option<&'a str>,
    numa_node: Option<u32>,
    rank: Option<usize>,
    distance: Option<u16>,
    guid: u64,
    speed_mbps: i32,
    port: i32,
    latency_us: Option<Box<RawValue>>,
    ptr_support: Vec<&'static str>,
    max_comms: i32,
    max_recvs: i32,
    reg_is_global: bool,
    force_flush: bool,
    device_type: &'a str,
    device_version: i32,
    vdevs: &'a [i32],
    max_p2p_bytes: Option<usize>,
    max_coll_bytes: Option<usize>,
}

fn to_json(r: &Report) -> String {
    let devices = r.devices.iter().enumerate().map(|(i, d)| {
        let rank = r.ranking.as_ref().map(|(_, ranks)| ranks[i]);
        DeviceJson {
            index: i,
            name: &d.name,
            pci_path: d.pci_path.as_deref(),
            numa_node: r.numa[i],
            rank: rank.map(|r| r.rank),
            distance: rank.and_then(|r| r.distance),
            guid: d.guid,
            speed_mbps: d.speed_mbps,
            port: d.port,
            latency_us: json::shown(d.latency_us),
            ptr_support: d.ptr_support.names().collect(),
            max_comms: d.max_comms,
            max_recvs: d.max_recvs,
            reg_is_global: d.reg_is_global,
            force_flush: d.force_flush,
            device_type: d.device_type.as_str(),
            device_version: d.device_version,
            vdevs: &d.vdevs,
            max_p2p_bytes: d.max_p2p_bytes,
            max_coll_bytes: d.max_coll_bytes,
        }
    });
    json::line(&ReportJson {
        plugin: &r.source,
        abi: r.net.abi().number(),
        symbol: r.net.abi().symbol(),
        name: r.net.name(),
        devices: devices.collect(),
    })
}

mod preflight;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Args, String> {
        let argv: Vec<&str> = ["probe"].iter().chain(args).copied().collect();
        match crate::parse(&argv)? {
            crate::Command::Probe(a) => a.check().map(|()| a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_options() {
        let o = parse(&["--plugin", "/x.so", "--json", "--abi=v9"]).unwrap();
        assert_eq!(
            o,
            Args {
                plugin: Some(PathBuf::from("/x.so")),
                json: true,
                abi: Some(AbiVersion::V9),
                ..Args::default()
            }
        );
        let o = parse(&["--preflight", "--sysfs-root=/tmp/sys"]).unwrap();
        assert!(o.preflight);
        assert_eq!(o.sysfs_root, Some(PathBuf::from("/tmp/sys")));
        assert!(parse(&["--sysfs-root", "/s"])
            .unwrap_err()
            .contains("only applies to --preflight"));
        let e = parse(&["--abi", "6"]).unwrap_err();
        assert!(
            e.contains("'6' for '--abi") && e.contains("use 7, 8, 9 or 10"),
            "{e}"
        );
        let e = parse(&["--gpu", "-1"]).unwrap_err();
        assert!(
            e.contains("'-1' for '--gpu") && e.contains("a CUDA device number"),
            "{e}"
        );
        assert!(parse(&["--plugin"])
            .unwrap_err()
            .contains("a value is required for '--plugin"));
        assert!(parse(&["--bogus"])
            .unwrap_err()
            .contains("unexpected argument '--bogus'"));
    }
}
