//! `tcpx probe`: load an ncclNet plugin, initialise it and list its devices, in the
//! spirit of `ibv_devinfo`; `--json` prints the same facts as one JSON object.
//! `--preflight` instead checks, on an A3 VM, what Google's GPUDirect-TCPX plugin needs
//! before a first transfer (see [`preflight`]).

use std::fmt::Write as _;
use std::path::PathBuf;

use super::args::Flags;
use super::json::{self, Object};
use tcpx::engine::topology::{self, Place, Rank};
use tcpx::error::{Error, Result};
use tcpx::net::{AbiVersion, DeviceProps, Net};

/// Parsed `probe` options.
#[derive(Debug, Default, PartialEq)]
struct Options {
    plugin: Option<PathBuf>,
    json: bool,
    abi: Option<AbiVersion>,
    /// Run the GPUDirect-TCPX checks instead of listing devices.
    preflight: bool,
    /// Where `--preflight` reads sysfs (`/sys`); tests point it at a fake tree.
    sysfs_root: Option<PathBuf>,
    /// Rank every device for memory on this GPU (`--gpu N`).
    gpu: Option<i32>,
}

fn parse(args: &[String]) -> std::result::Result<Options, String> {
    let mut o = Options::default();
    let mut flags = Flags::new(args);
    while let Some(f) = flags.next() {
        let (flag, a) = (f.name, f.raw);
        let mut value = |_: &str| flags.value(&f);
        match flag {
            "--plugin" => o.plugin = Some(PathBuf::from(value("--plugin")?)),
            "--abi" => {
                let v = value("--abi")?;
                o.abi = Some(
                    AbiVersion::parse(&v)
                        .ok_or_else(|| format!("--abi {v:?}: use 7, 8, 9 or 10"))?,
                );
            }
            "--json" => o.json = true,
            "--gpu" => {
                let v = value("--gpu")?;
                o.gpu = Some(
                    v.parse()
                        .ok()
                        .filter(|&g: &i32| g >= 0)
                        .ok_or_else(|| format!("--gpu {v:?}: a CUDA device number"))?,
                );
            }
            "--preflight" => o.preflight = true,
            "--sysfs-root" => o.sysfs_root = Some(PathBuf::from(value("--sysfs-root")?)),
            _ => return Err(format!("unknown option {a:?}")),
        }
    }
    if o.sysfs_root.is_some() && !o.preflight {
        return Err("--sysfs-root only applies to --preflight".into());
    }
    Ok(o)
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

fn probe(o: &Options) -> Result<Report> {
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
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "tcpx probe: {e}\nusage: tcpx probe [--plugin PATH] [--json] [--abi 7|8|9|10] \
                 [--gpu N] [--preflight]"
            );
            return 2;
        }
    };
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

mod preflight {
    //! `tcpx probe --preflight`: what Google's GPUDirect-TCPX plugin needs on an A3 VM, checked
    //! before a first transfer, one line each (`ok`, `warn`, `missing`) with what to do.
    //!
    //! Every check takes its inputs (environment, sysfs root, RxDM socket folder, CUDA facts)
    //! as parameters, so tests can point them at a fake tree. The plugin itself runs in a child
    //! `tcpx probe`: its `init` may `exit(1)` (T13) and must not end the preflight with it.

    use std::ffi::{c_char, c_int, CStr};
    use std::fmt::Write as _;
    use std::io::Read as _;
    use std::os::unix::fs::FileTypeExt as _;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::ExitStatusExt as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::super::json::Object;
    use super::Options;
    use tcpx::engine::config::Config;

    /// The name Google's plugin gives its v7 table (T15).
    const TCPX_NAME: &str = "GPUDirectTCPX_v7";
    /// The plugin version the T-rows of the conformance table were read from.
    const READ_FROM: (u32, u32, u32) = (3, 1, 9);
    /// Bound on the child that loads and initialises the plugin (cuInit on 8 GPUs included).
    const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
    /// Bound on connecting to one RxDM socket.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// TCPX's flow-steering wait before `accept` completes when the env leaves it unset (T10).
    const DEFAULT_STEERING_WAIT_US: u64 = 5_000_000;
    /// Head-room over the flow-steering wait: ~100 ms sleep per socket in connect/accept, for
    /// up to 8 data sockets and the control socket (T10).
    const HANDSHAKE_MARGIN: Duration = Duration::from_millis(1000);

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
    pub(super) fn main(o: &Options) -> i32 {
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
    pub(super) fn run_checks(
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

    pub(super) fn to_json(checks: &[Check]) -> String {
        let mut s = String::new();
        Object::new(&mut s)
            .with("checks", |out| {
                out.push('[');
                for (i, c) in checks.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    Object::new(out)
                        .str("status", c.status.as_str())
                        .str("check", &c.name)
                        .str("detail", &c.detail)
                        .opt_str("fix", c.fix.as_deref())
                        .end();
                }
                out.push(']');
            })
            .raw("ok", count(checks, Status::Ok))
            .raw("warn", count(checks, Status::Warn))
            .raw("missing", count(checks, Status::Missing))
            .end();
        s.push('\n');
        s
    }

    // ---- (1) the plugin, its version line ---------------------------------------------

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
    fn run_plugin(exe: &Path, plugin: &Path, abi: Option<u32>, limit: Duration) -> ChildRun {
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
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
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

    pub(super) fn plugin_check(
        plugin: Option<&Path>,
        run: Option<&Result<ChildRun, String>>,
    ) -> Check {
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
                    format!(
                        "check the path, its libraries (LD_LIBRARY_PATH) and the env below; {see}"
                    )
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

    // ---- (2) and (3): the TCPX NICs and the control NIC --------------------------------

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
                Err(why) => {
                    Check::new(Status::Missing, label, format!("{}: {why}", path.display()))
                        .fix(fix.clone())
                }
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

    // ---- (5) the tuning env (T12) --------------------------------------------------------

    /// A tuning variable: GCP's value, the plugin's value when unset, its accepted range.
    struct Tuning {
        env: &'static str,
        recommended: i64,
        unset: i64,
        range: std::ops::RangeInclusive<i64>,
        what: &'static str,
    }

    const TUNING: [Tuning; 3] = [
        Tuning {
            env: "NCCL_DYNAMIC_CHUNK_SIZE",
            recommended: 524_288,
            unset: 0,
            range: 0..=(i32::MAX as i64 - 1),
            what: "bytes per chunk spread over the sockets",
        },
        Tuning {
            env: "NCCL_NSOCKS_PERTHREAD",
            recommended: 4,
            unset: 1,
            range: 1..=8,
            what: "sockets per helper thread",
        },
        Tuning {
            env: "NCCL_SOCKET_NTHREADS",
            recommended: 1,
            unset: 1,
            range: 1..=16,
            what: "helper threads per comm",
        },
    ];

    pub(super) fn tuning_checks(env: Env<'_>) -> Vec<Check> {
        TUNING
            .iter()
            .map(|t| {
                let fix = format!("export {}={}", t.env, t.recommended);
                match get(env, t.env).map(|v| (v.trim().parse::<i64>().ok(), v)) {
                    None if t.unset == t.recommended => Check::new(
                        Status::Ok,
                        t.env,
                        format!(
                            "unset: the plugin uses {}, GCP's value ({})",
                            t.unset, t.what
                        ),
                    ),
                    None => Check::new(
                        Status::Missing,
                        t.env,
                        format!("unset: the plugin uses {} ({})", t.unset, t.what),
                    )
                    .fix(fix),
                    Some((Some(n), _)) if n == t.recommended => {
                        Check::new(Status::Ok, t.env, format!("{n} ({})", t.what))
                    }
                    Some((Some(n), _)) if t.range.contains(&n) => Check::new(
                        Status::Warn,
                        t.env,
                        format!("{n}; GCP's A3 setting is {}", t.recommended),
                    )
                    .fix(fix),
                    Some((_, v)) => Check::new(
                        Status::Missing,
                        t.env,
                        format!(
                            "{v:?} is outside {}..={}: the plugin ignores it and uses {}",
                            t.range.start(),
                            t.range.end(),
                            t.unset
                        ),
                    )
                    .fix(fix),
                }
            })
            .collect()
    }

    // ---- the engine's own settings: handshake bound (T10) ------------------------------

    pub(super) fn engine_check(env: Env<'_>, config: Result<Config, tcpx::error::Error>) -> Check {
        let name = "engine";
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                return Check::new(Status::Missing, name, e.to_string())
                    .fix("fix the TCPX_* setting it names")
            }
        };
        const WAIT: &str = "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS";
        let wait_us = get(env, WAIT)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_STEERING_WAIT_US);
        let need = Duration::from_micros(wait_us) + HANDSHAKE_MARGIN;
        let bound = config.timeout.as_millis();
        if config.timeout < need {
            Check::new(
                Status::Missing,
                name,
                format!(
                    "TCPX_TIMEOUT_MS={bound} is shorter than TCPX's accept \
                     (flow-steering wait {} ms + ~100 ms per socket)",
                    wait_us / 1000
                ),
            )
            .fix(format!(
                "export TCPX_TIMEOUT_MS={}",
                need.as_millis().max(10_000)
            ))
        } else {
            Check::new(
                Status::Ok,
                name,
                format!(
                    "handshake bound {bound} ms allows TCPX's accept (flow-steering wait {} ms)",
                    wait_us / 1000
                ),
            )
        }
    }

    // ---- (6) the session's GPU -----------------------------------------------------------

    /// The PCI address of every CUDA device (lower case, as the plugin names RX pools), or
    /// why there is none.
    fn cuda_devices() -> Result<Vec<String>, String> {
        use cudarc::driver::{result, sys, CudaContext};
        tcpx_kernels::gpu_available()?;
        let n = CudaContext::device_count().map_err(|e| e.to_string())?;
        (0..n)
            .map(|i| {
                let dev = result::device::get(i).map_err(|e| format!("device {i}: {e}"))?;
                let mut buf = [0 as c_char; 64];
                // SAFETY: the driver writes a NUL-terminated string of at most `len` bytes.
                let r =
                    unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as c_int, dev) };
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
                    Check::new(Status::Missing, name, why.clone()).fix(
                        "run on the A3 VM with the NVIDIA driver (containers: expose the GPUs)",
                    ),
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
        use std::collections::HashMap;

        fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }

        fn lookup(m: &HashMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
            move |k| m.get(k).cloned()
        }

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

        #[test]
        fn lists_select_by_prefix_or_exact_name() {
            let names: Vec<String> = ["eth0", "eth1", "eth10", "lo"].map(String::from).to_vec();
            assert_eq!(select("eth1", &names), vec!["eth1", "eth10"]);
            assert_eq!(select("=eth1", &names), vec!["eth1"]);
            assert!(select("ib", &names).is_empty());
        }

        #[test]
        fn tuning_is_missing_unset_warned_off_value_ok_recommended() {
            let m = env(&[
                ("NCCL_DYNAMIC_CHUNK_SIZE", "524288"),
                ("NCCL_NSOCKS_PERTHREAD", "2"),
                ("NCCL_SOCKET_NTHREADS", "99"),
            ]);
            let c = tuning_checks(&lookup(&m));
            let s: Vec<Status> = c.iter().map(|c| c.status).collect();
            assert_eq!(s, [Status::Ok, Status::Warn, Status::Missing], "{c:?}");
            let c = tuning_checks(&lookup(&env(&[])));
            let s: Vec<Status> = c.iter().map(|c| c.status).collect();
            // Unset NCCL_SOCKET_NTHREADS already means GCP's 1.
            assert_eq!(s, [Status::Missing, Status::Missing, Status::Ok], "{c:?}");
            assert_eq!(
                c[0].fix.as_deref(),
                Some("export NCCL_DYNAMIC_CHUNK_SIZE=524288")
            );
        }

        #[test]
        fn the_handshake_bound_must_cover_the_flow_steering_wait() {
            let cfg = |ms: &str| {
                Config::default().with_vars(|k| (k == "TCPX_TIMEOUT_MS").then(|| ms.to_string()))
            };
            let none = env(&[]);
            assert_eq!(
                engine_check(&lookup(&none), Ok(Config::default())).status,
                Status::Ok
            );
            assert_eq!(
                engine_check(&lookup(&none), cfg("3000")).status,
                Status::Missing
            );
            let short = env(&[(
                "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
                "50000",
            )]);
            assert_eq!(
                engine_check(&lookup(&short), cfg("3000")).status,
                Status::Ok
            );
            let c = engine_check(&lookup(&none), cfg("x"));
            assert!(c.status == Status::Missing && c.detail.contains("TCPX_TIMEOUT_MS"));
        }

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::argv as args;

    #[test]
    fn parses_options() {
        let o = parse(&args(&["--plugin", "/x.so", "--json", "--abi=v9"])).unwrap();
        assert_eq!(
            o,
            Options {
                plugin: Some(PathBuf::from("/x.so")),
                json: true,
                abi: Some(AbiVersion::V9),
                ..Options::default()
            }
        );
        let o = parse(&args(&["--preflight", "--sysfs-root=/tmp/sys"])).unwrap();
        assert!(o.preflight);
        assert_eq!(o.sysfs_root, Some(PathBuf::from("/tmp/sys")));
        assert!(parse(&args(&["--sysfs-root", "/s"]))
            .unwrap_err()
            .contains("only applies to --preflight"));
        assert!(parse(&args(&["--abi", "6"])).unwrap_err().contains("--abi"));
        assert!(parse(&args(&["--plugin"]))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse(&args(&["--bogus"]))
            .unwrap_err()
            .contains("unknown option"));
    }
}
