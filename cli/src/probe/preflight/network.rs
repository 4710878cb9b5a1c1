//! (2) and (3): the TCPX NICs and the control NIC, from sysfs; (4) RxDM's unix sockets.

use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{get, Check, Env, Status};

/// Bound on connecting to one RxDM socket.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A network interface as sysfs shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Nic {
    pub name: String,
    pub operstate: String,
    /// The PCI device behind it (`realpath /sys/class/net/<if>/device`): the plugin's
    /// `pciPath`; `None` for virtual interfaces.
    pub pci: Option<PathBuf>,
}

fn interfaces(sysfs: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sysfs.join("class/net"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn nic(sysfs: &Path, name: &str) -> Nic {
    let dir = sysfs.join("class/net").join(name);
    Nic {
        name: name.to_string(),
        operstate: std::fs::read_to_string(dir.join("operstate"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unreadable".into()),
        pci: std::fs::canonicalize(dir.join("device")).ok(),
    }
}

/// The interfaces one item of an NCCL-style list selects: a name prefix, or an exact
/// name after `=` (as the plugin reads `SOCKET_IFNAME` and `CTRL_DEV`).
pub(super) fn select<'a>(item: &str, names: &'a [String]) -> Vec<&'a String> {
    match item.strip_prefix('=') {
        Some(exact) => names.iter().filter(|n| *n == exact).collect(),
        None => names.iter().filter(|n| n.starts_with(item)).collect(),
    }
}

fn up(n: &Nic) -> Result<(), String> {
    match n.operstate.as_str() {
        "up" => Ok(()),
        s => Err(format!("operstate {s}")),
    }
}

const IFNAME: &str = "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME";

/// One line per selected interface (up, with a PCI device), and the interfaces found.
pub(super) fn ifname_checks(env: Env<'_>, sysfs: &Path) -> (Vec<Check>, Vec<Nic>) {
    let fix = format!("export {IFNAME}=eth1,eth2,eth3,eth4 (the VM's TCPX NICs)");
    let Some(list) = get(env, IFNAME) else {
        return (
            vec![Check::new(
                Status::Missing,
                IFNAME,
                "unset: the plugin would pick any interface",
            )
            .fix(fix)],
            Vec::new(),
        );
    };
    if list.trim_start().starts_with('^') {
        return (
            vec![Check::new(
                Status::Warn,
                IFNAME,
                format!("{list:?} is an exclusion list: cannot tell which NICs it selects"),
            )
            .fix(fix)],
            Vec::new(),
        );
    }
    let names = interfaces(sysfs);
    let (mut checks, mut nics) = (Vec::new(), Vec::new());
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let picked = select(item, &names);
        if picked.is_empty() {
            checks.push(
                Check::new(
                    Status::Missing,
                    format!("ifname {item}"),
                    format!(
                        "no interface matches under {}",
                        sysfs.join("class/net").display()
                    ),
                )
                .fix(format!("check `ip link` and {IFNAME}")),
            );
        }
        for name in picked {
            let n = nic(sysfs, name);
            let label = format!("ifname {name}");
            checks.push(match (up(&n), &n.pci) {
                (Err(why), _) => Check::new(Status::Missing, label, why)
                    .fix(format!("bring {name} up (VM network config)")),
                (Ok(()), None) => Check::new(
                    Status::Missing,
                    label,
                    "up, but no PCI device (a virtual interface): the plugin needs its pciPath",
                )
                .fix(fix.clone()),
                (Ok(()), Some(p)) => {
                    Check::new(Status::Ok, label, format!("up, pci {}", p.display()))
                }
            });
            nics.push(n);
        }
    }
    (checks, nics)
}

pub(super) fn ctrl_dev_check(env: Env<'_>, sysfs: &Path) -> Check {
    const CTRL: &str = "NCCL_GPUDIRECTTCPX_CTRL_DEV";
    let Some(dev) = get(env, CTRL) else {
        return Check::new(
            Status::Missing,
            CTRL,
            "unset: control traffic shares the TCPX NICs",
        )
        .fix(format!("export {CTRL}=eth0 (the VM's primary NIC)"));
    };
    let names = interfaces(sysfs);
    // The plugin takes the first interface the value selects.
    let Some(name) = select(dev.trim(), &names).into_iter().next() else {
        return Check::new(Status::Missing, CTRL, format!("{dev}: no such interface"))
            .fix(format!("set {CTRL} to an interface of `ip link` (eth0)"));
    };
    match up(&nic(sysfs, name)) {
        Ok(()) => Check::new(Status::Ok, CTRL, format!("{name}: up")),
        Err(why) => Check::new(Status::Missing, CTRL, format!("{name}: {why}"))
            .fix(format!("bring {name} up")),
    }
}

// ---- (4) RxDM's unix sockets -------------------------------------------------------

/// Whether `path` is a unix socket that accepts a connection (closed without a word).
fn reach(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|_| "absent".to_string())?;
    if !meta.file_type().is_socket() {
        return Err("exists but is not a unix socket".into());
    }
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    // A hung daemon with a full backlog would block `connect`: wait on it from here,
    // bounded, and leave the thread behind if it never returns.
    std::thread::spawn(move || {
        let _ = tx.send(UnixStream::connect(&p).map(drop));
    });
    match rx.recv_timeout(CONNECT_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("nothing accepts on it ({e}): a stale socket file")),
        Err(_) => Err(format!(
            "connect did not finish within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The sockets the plugin connects to under `prefix`: flow-steering rules (at listen and
/// accept, and removed at close), the RX pool of the session's GPU (by its PCI address,
/// lower case), and the application registry when lifecycle reporting is on.
pub(super) fn rxdm_checks(env: Env<'_>, prefix: &Path, gpu_pci: Option<&str>) -> Vec<Check> {
    const PREFIX: &str = "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX";
    let fix = format!("run RxDM (Google's A3 guide) and point {PREFIX} at its socket folder");
    if !prefix.is_dir() {
        return vec![Check::new(
            Status::Missing,
            "rxdm",
            format!("{} ({PREFIX}) is not a folder", prefix.display()),
        )
        .fix(fix)];
    }
    let mut wanted: Vec<(String, &str)> = vec![
        ("rx_rule_manager".into(), "installs flow-steering rules"),
        ("rx_rule_uninstall".into(), "removes them at close"),
    ];
    match gpu_pci {
        Some(pci) => {
            wanted.push((format!("get_gpu_fd_{pci}"), "the GPU's RX pool"));
            wanted.push((format!("get_gpu_metadata_{pci}"), "its size"));
        }
        None => {
            wanted.push(("get_gpu_fd_*".into(), ""));
        }
    }
    if get(env, "NCCL_GPUDIRECTTCPX_REPORT_LIFECYCLE").as_deref() == Some("1") {
        wanted.push(("rxdm_application_registry".into(), "lifecycle reports"));
    }
    let mut out = Vec::new();
    for (sock, role) in wanted {
        let label = format!("rxdm {sock}");
        if sock == "get_gpu_fd_*" {
            out.push(rx_pools_without_gpu(prefix, label, &fix));
            continue;
        }
        let path = prefix.join(&sock);
        out.push(match reach(&path) {
            Ok(()) => Check::new(Status::Ok, label, format!("{} ({role})", path.display())),
            Err(why) => Check::new(Status::Missing, label, format!("{}: {why}", path.display()))
                .fix(fix.clone()),
        });
    }
    out
}

/// With the GPU unknown, which GPUs RxDM offers RX pools for.
fn rx_pools_without_gpu(prefix: &Path, label: String, fix: &str) -> Check {
    let mut pcis: Vec<String> = std::fs::read_dir(prefix)
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("get_gpu_fd_").map(str::to_string)
            })
            .collect()
        })
        .unwrap_or_default();
    pcis.sort();
    if pcis.is_empty() {
        Check::new(
            Status::Missing,
            label,
            format!("no RX pool socket under {}", prefix.display()),
        )
        .fix(fix.to_string())
    } else {
        Check::new(
            Status::Warn,
            label,
            format!(
                "the session's GPU is unknown (see `gpu`); RxDM serves RX pools for {}",
                pcis.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_select_by_prefix_or_exact_name() {
        let names: Vec<String> = ["eth0", "eth1", "eth10", "lo"].map(String::from).to_vec();
        assert_eq!(select("eth1", &names), vec!["eth1", "eth10"]);
        assert_eq!(select("=eth1", &names), vec!["eth1"]);
        assert!(select("ib", &names).is_empty());
    }
}
