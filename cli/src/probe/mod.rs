//! `tcpx probe`: load an ncclNet plugin, initialise it and list its devices, in the
//! spirit of `ibv_devinfo`; `--json` prints the same facts as one JSON object.
//! `--preflight` instead checks, on an A3 VM, what Google's GPUDirect-TCPX plugin needs
//! before a first transfer (see [`preflight`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::json::{self, Object};
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

fn to_json(r: &Report) -> String {
    let mut s = String::new();
    Object::new(&mut s)
        .str("plugin", &r.source)
        .raw("abi", r.net.abi().number())
        .str("symbol", r.net.abi().symbol())
        .str("name", r.net.name())
        .with("devices", |out| {
            out.push('[');
            for (i, d) in r.devices.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let rank = r.ranking.as_ref().map(|(_, ranks)| ranks[i]);
                device_json(out, i, d, r.numa[i], rank);
            }
            out.push(']');
        })
        .end();
    s.push('\n');
    s
}

fn device_json(
    out: &mut String,
    index: usize,
    d: &DeviceProps,
    numa: Option<u32>,
    rank: Option<Rank>,
) {
    let latency = if d.latency_us.is_finite() {
        d.latency_us.to_string()
    } else {
        "null".to_string()
    };
    let opt = |v: Option<usize>| v.map_or("null".to_string(), |v| v.to_string());
    Object::new(out)
        .raw("index", index)
        .str("name", &d.name)
        .opt_str("pci_path", d.pci_path.as_deref())
        .raw("numa_node", numa.map_or("null".into(), |n| n.to_string()))
        .raw("rank", rank.map_or("null".into(), |r| r.rank.to_string()))
        .raw(
            "distance",
            rank.and_then(|r| r.distance)
                .map_or("null".into(), |d| d.to_string()),
        )
        .raw("guid", d.guid)
        .raw("speed_mbps", d.speed_mbps)
        .raw("port", d.port)
        .raw("latency_us", latency)
        .with("ptr_support", |o| {
            o.push('[');
            for (i, n) in d.ptr_support.names().enumerate() {
                if i > 0 {
                    o.push(',');
                }
                json::string(o, n);
            }
            o.push(']');
        })
        .raw("max_comms", d.max_comms)
        .raw("max_recvs", d.max_recvs)
        .bool("reg_is_global", d.reg_is_global)
        .bool("force_flush", d.force_flush)
        .str("device_type", d.device_type.as_str())
        .raw("device_version", d.device_version)
        .raw("vdevs", format!("{:?}", d.vdevs))
        .raw("max_p2p_bytes", opt(d.max_p2p_bytes))
        .raw("max_coll_bytes", opt(d.max_coll_bytes))
        .end();
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
