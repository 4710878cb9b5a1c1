//! (1) The plugin: loaded and initialised in a child `tcpx probe` (its `init` may end the
//! process), graded by its name and the version line it logs.

use std::fmt::Write as _;
use std::io::Read as _;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Check, Status};

/// The name Google's plugin gives its v7 table (T15).
pub(super) const TCPX_NAME: &str = "GPUDirectTCPX_v7";
/// The plugin version the T-rows of the conformance table were read from.
pub(super) const READ_FROM: (u32, u32, u32) = (3, 1, 9);
/// Bound on the child that loads and initialises the plugin (cuInit on 8 GPUs included).
pub(super) const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How the child `tcpx probe --plugin P` ended, with what it printed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ChildRun {
    pub end: ChildEnd,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ChildEnd {
    Exit(i32),
    Signal(i32),
    TimedOut,
}

/// Loads and initialises `plugin` in a child `tcpx probe` with plugin logging at INFO,
/// bounded by `limit` (killed past it).
pub(super) fn run_plugin(exe: &Path, plugin: &Path, abi: Option<u32>, limit: Duration) -> ChildRun {
    let mut cmd = Command::new(exe);
    cmd.arg("probe").arg("--plugin").arg(plugin);
    if let Some(v) = abi {
        cmd.args(["--abi", &v.to_string()]);
    }
    cmd.env("TCPX_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ChildRun {
                end: ChildEnd::Exit(-1),
                stdout: String::new(),
                stderr: format!("cannot run {}: {e}", exe.display()),
            }
        }
    };
    // Readers drain the pipes while we wait, so a chatty plugin cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + limit;
    let end = loop {
        match child.try_wait() {
            Ok(Some(st)) => {
                break match (st.code(), st.signal()) {
                    (Some(c), _) => ChildEnd::Exit(c),
                    (None, Some(s)) => ChildEnd::Signal(s),
                    (None, None) => ChildEnd::Exit(-1),
                }
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break ChildEnd::TimedOut;
            }
        }
    };
    ChildRun {
        end,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// The version in the plugin's init line `NET/GPUDirectTCPX ver. 3.1.9.` (its build
/// appends an empty suffix after a dot), from the child's log.
pub(super) fn version_line(log: &str) -> Option<&str> {
    log.lines().filter(|l| l.contains("[nccl")).find_map(|l| {
        let rest = &l[l.find(" ver. ")? + 6..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let v = rest[..end].trim_end_matches('.');
        (!v.is_empty()).then_some(v)
    })
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// A `label: value` line of `tcpx probe`'s text output.
fn field<'a>(stdout: &'a str, label: &str) -> Option<&'a str> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label)?.strip_prefix(':'))
        .map(str::trim)
}

pub(super) fn plugin_check(plugin: Option<&Path>, run: Option<&Result<ChildRun, String>>) -> Check {
    let name = "plugin";
    let Some(path) = plugin else {
        return Check::new(
            Status::Missing,
            name,
            "TCPX_PLUGIN unset (the embedded tcpxsock is plain TCP, not GPUDirect-TCPX)",
        )
        .fix("export TCPX_PLUGIN=/path/to/libnccl-net.so (Google's plugin; or --plugin)");
    };
    let shown = path.display();
    let run = match run {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Check::new(Status::Missing, name, format!("{shown}: {e}")),
        None => return Check::new(Status::Missing, name, format!("{shown}: not run")),
    };
    let see = format!("run `TCPX_LOG=info tcpx probe --plugin {shown}` for the plugin's log");
    let why = || {
        run.stderr
            .lines()
            .rev()
            .find(|l| l.contains("ended the process") || l.contains("tcpx probe: error:"))
            .or_else(|| run.stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .map(|l| {
                l.trim()
                    .trim_start_matches("tcpx probe: error: ")
                    .to_string()
            })
            .unwrap_or_else(|| "no output".into())
    };
    match run.end {
        ChildEnd::Exit(0) => {}
        ChildEnd::Exit(c) => {
            let why = why();
            let fix = if why.contains("ended the process") {
                // T13: the plugin calls exit(1) itself, above all when cuInit fails.
                format!("the plugin ended the process itself (cuInit failure?); {see}")
            } else {
                format!("check the path, its libraries (LD_LIBRARY_PATH) and the env below; {see}")
            };
            return Check::new(
                Status::Missing,
                name,
                format!("{shown}: load/init failed (exit {c}): {why}"),
            )
            .fix(fix);
        }
        ChildEnd::Signal(s) => {
            return Check::new(
                Status::Missing,
                name,
                format!("{shown}: load/init crashed (signal {s}): {}", why()),
            )
            .fix(see)
        }
        ChildEnd::TimedOut => {
            return Check::new(
                Status::Missing,
                name,
                format!(
                    "{shown}: load/init did not finish within {} s",
                    PLUGIN_TIMEOUT.as_secs()
                ),
            )
            .fix(see)
        }
    }
    let plugin_name = field(&run.stdout, "name").unwrap_or("?");
    let devices = field(&run.stdout, "devices").unwrap_or("?");
    let nics: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("\tname:"))
        .map(str::trim)
        .collect();
    let mut detail = format!("{shown}: {plugin_name}, {devices} devices");
    if !nics.is_empty() {
        let _ = write!(detail, " ({})", nics.join(", "));
    }
    if plugin_name != TCPX_NAME {
        return Check::new(
            Status::Warn,
            name,
            format!("{detail}; not Google's {TCPX_NAME}"),
        )
        .fix("point TCPX_PLUGIN at the GPUDirect-TCPX libnccl-net.so");
    }
    let (a, b, c) = READ_FROM;
    match version_line(&run.stderr) {
        None => Check::new(
            Status::Warn,
            name,
            format!("{detail}; init logged no version line (`NET/GPUDirectTCPX ver. X`)"),
        )
        .fix(format!(
            "find the build's version another way; tcpx follows v{a}.{b}.{c}'s behaviour"
        )),
        Some(v) => match parse_version(v) {
            Some(got) if got < READ_FROM => Check::new(
                Status::Warn,
                name,
                format!("{detail}, version {v}: older than v{a}.{b}.{c}"),
            )
            .fix("use a current plugin build (some `:latest` images carry old builds)"),
            _ => Check::new(
                Status::Ok,
                name,
                format!("{detail}, version {v} (tcpx follows v{a}.{b}.{c}'s behaviour)"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_plugin_version_line() {
        let log = "tcpx INFO [nccl:INIT|NET] f:1: NET/GPUDirectTCPX plugin initialized\n\
                   tcpx INFO [nccl:INIT|NET|ENV] tcpxInit:9: NET/GPUDirectTCPX ver. 3.1.9.\n";
        assert_eq!(version_line(log), Some("3.1.9"));
        assert_eq!(
            version_line("tcpx INFO [net] ver. 1.2"),
            None,
            "not a plugin line"
        );
        assert_eq!(version_line("x [nccl:NET] nothing"), None);
        assert_eq!(parse_version("3.1.12"), Some((3, 1, 12)));
        assert!(parse_version("3.1.8").unwrap() < READ_FROM);
        assert_eq!(parse_version("x"), None);
    }

    fn child(stdout: &str, stderr: &str) -> Option<Result<ChildRun, String>> {
        Some(Ok(ChildRun {
            end: ChildEnd::Exit(0),
            stdout: stdout.into(),
            stderr: stderr.into(),
        }))
    }

    #[test]
    fn plugin_check_grades_name_and_version() {
        let p = Path::new("/p.so");
        assert_eq!(plugin_check(None, None).status, Status::Missing);
        let out = "name:           GPUDirectTCPX_v7\ndevices:        4\n\ndev 0\n\tname:           eth1\n";
        let log = |v: &str| format!("tcpx INFO [nccl:INIT] f:1: NET/GPUDirectTCPX ver. {v}.\n");
        let c = plugin_check(Some(p), child(out, &log("3.1.12")).as_ref());
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(c
            .detail
            .contains("GPUDirectTCPX_v7, 4 devices (eth1), version 3.1.12"));
        let c = plugin_check(Some(p), child(out, &log("3.1.8")).as_ref());
        assert_eq!(c.status, Status::Warn, "{c:?}");
        let c = plugin_check(Some(p), child(out, "").as_ref());
        assert!(c.status == Status::Warn && c.detail.contains("no version line"));
        let c = plugin_check(Some(p), child("name:  Other\n", &log("3.1.9")).as_ref());
        assert!(c.status == Status::Warn && c.detail.contains("not Google's"));
        let died = Some(Ok(ChildRun {
            end: ChildEnd::Exit(1),
            stdout: String::new(),
            stderr: "x\ntcpx: ncclNet plugin GPUDirectTCPX_v7 ended the process during init\n"
                .into(),
        }));
        let c = plugin_check(Some(p), died.as_ref());
        assert_eq!(c.status, Status::Missing);
        assert!(c.detail.contains("ended the process during init"), "{c:?}");
        assert!(c.fix.as_deref().unwrap_or("").contains("cuInit"), "{c:?}");
    }
}
