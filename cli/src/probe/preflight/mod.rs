//! `tcpx probe --preflight`: what Google's GPUDirect-TCPX plugin needs on an A3 VM, checked
//! before a first transfer, one line each (`ok`, `warn`, `missing`) with what to do.
//!
//! Every check takes its inputs (environment, sysfs root, RxDM socket folder, CUDA facts)
//! as parameters, so tests can point them at a fake tree. The plugin itself runs in a child
//! `tcpx probe`: its `init` may `exit(1)` (T13) and must not end the preflight with it.
//!
//! The checks by subject: `plugin` (load and init in a child, the version line), `network`
//! (the TCPX NICs, the control NIC, RxDM's sockets), `settings` (the tuning environment, the
//! engine's handshake bound), `gpu` (the session's GPU and its nearest NIC).

mod gpu;
mod network;
mod plugin;
mod settings;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tcpx::engine::config::Config;

use super::Args;
use crate::json;
use gpu::{cuda_devices, gpu_check};
use network::{ctrl_dev_check, ifname_checks, rxdm_checks};
use plugin::{plugin_check, run_plugin, ChildRun, PLUGIN_TIMEOUT};
use settings::{engine_check, tuning_checks};

/// How one check came out; the exit status is non-zero when any is `Missing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    Warn,
    Missing,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Missing => "missing",
        }
    }
}

/// One line of the preflight.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Check {
    pub status: Status,
    /// What was checked: `plugin`, `ifname eth1`, `rxdm rx_rule_manager`, an env name.
    pub name: String,
    pub detail: String,
    /// What to do about it (`None` when there is nothing to do).
    pub fix: Option<String>,
}

impl Check {
    fn new(status: Status, name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            status,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Environment lookup; empty values count as unset, as the plugin treats most of them.
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(env: Env<'_>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.trim().is_empty())
}

/// Runs `tcpx probe --preflight`; returns the exit code.
pub(super) fn main(o: &Args) -> i32 {
    let env = |k: &str| std::env::var(k).ok();
    let sysfs = o
        .sysfs_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/sys"));
    let plugin = o
        .plugin
        .clone()
        .or_else(|| get(&env, "TCPX_PLUGIN").map(PathBuf::from));
    let run = plugin.as_deref().map(|p| {
        std::env::current_exe()
            .map_err(|e| format!("cannot find the tcpx binary to run it in: {e}"))
            .map(|exe| run_plugin(&exe, p, o.abi.map(|v| v.number()), PLUGIN_TIMEOUT))
    });
    let cuda = cuda_devices();
    let checks = run_checks(&env, &sysfs, plugin.as_deref(), run.as_ref(), &cuda);
    print!(
        "{}",
        if o.json {
            to_json(&checks)
        } else {
            to_text(&checks)
        }
    );
    exit_code(&checks)
}

/// Every check, in the order printed.
fn run_checks(
    env: Env<'_>,
    sysfs: &Path,
    plugin: Option<&Path>,
    run: Option<&Result<ChildRun, String>>,
    cuda: &Result<Vec<String>, String>,
) -> Vec<Check> {
    let mut out = vec![plugin_check(plugin, run)];
    let (nic_checks, nics) = ifname_checks(env, sysfs);
    out.extend(nic_checks);
    out.push(ctrl_dev_check(env, sysfs));
    let config = Config::default().with_vars(|k| env(k));
    let gpu = config.as_ref().ok().and_then(|c| c.gpu);
    let (gpu_check, gpu_pci) = gpu_check(gpu, cuda, sysfs, &nics);
    let prefix =
        get(env, "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX").unwrap_or_else(|| "/tmp".to_string());
    out.extend(rxdm_checks(env, Path::new(&prefix), gpu_pci.as_deref()));
    out.extend(tuning_checks(env));
    out.push(engine_check(env, config));
    out.push(gpu_check);
    out
}

/// 0 when nothing is `missing`, else 1.
pub(super) fn exit_code(checks: &[Check]) -> i32 {
    i32::from(checks.iter().any(|c| c.status == Status::Missing))
}

fn count(checks: &[Check], s: Status) -> usize {
    checks.iter().filter(|c| c.status == s).count()
}

pub(super) fn to_text(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let _ = write!(s, "{:<8} {:<28} {}", c.status.as_str(), c.name, c.detail);
        if let Some(fix) = &c.fix {
            let _ = write!(s, " -> {fix}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "preflight: {} ok, {} warn, {} missing (untested on A3 hardware here; see docs/DEPLOY.md)",
        count(checks, Status::Ok),
        count(checks, Status::Warn),
        count(checks, Status::Missing)
    );
    s
}

/// `probe --preflight --json`: every check, then the count of each status.
#[derive(Serialize)]
struct ChecksJson<'a> {
    checks: Vec<CheckJson<'a>>,
    ok: usize,
    warn: usize,
    missing: usize,
}

/// One check in `probe --preflight --json`.
#[derive(Serialize)]
struct CheckJson<'a> {
    status: &'a str,
    check: &'a str,
    detail: &'a str,
    fix: Option<&'a str>,
}

pub(super) fn to_json(checks: &[Check]) -> String {
    json::line(&ChecksJson {
        checks: checks
            .iter()
            .map(|c| CheckJson {
                status: c.status.as_str(),
                check: &c.name,
                detail: &c.detail,
                fix: c.fix.as_deref(),
            })
            .collect(),
        ok: count(checks, Status::Ok),
        warn: count(checks, Status::Warn),
        missing: count(checks, Status::Missing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_missing_lines() {
        let ok = Check::new(Status::Ok, "a", "");
        let warn = Check::new(Status::Warn, "b", "");
        assert_eq!(exit_code(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(
            exit_code(&[ok, warn, Check::new(Status::Missing, "c", "")]),
            1
        );
        let text = to_text(&[Check::new(Status::Missing, "x", "gone").fix("do y")]);
        assert!(text.starts_with("missing  x"), "{text}");
        assert!(text.contains("gone -> do y\npreflight: 0 ok, 0 warn, 1 missing"));
        let json = to_json(&[Check::new(Status::Ok, "x", "fine")]);
        assert_eq!(
            json,
            "{\"checks\":[{\"status\":\"ok\",\"check\":\"x\",\"detail\":\"fine\",\"fix\":null}],\"ok\":1,\"warn\":0,\"missing\":0}\n"
        );
    }
}
