//! `tcpx nixl install | uninstall | status`: puts `libplugin_TCPX.so` next to NIXL's own plugins
//! in every NIXL wheel (`nixl-cu12`, `nixl-cu13`) of a Python interpreter's environment, so
//! `nixl_agent(..., backends=["TCPX"])` finds it the way it finds UCX, with no `NIXL_PLUGIN_DIR`.
//!
//! The interpreter is asked (a short inline script) which wheels it has, their versions and
//! where their `libnixl.so` lives: libnixl scans `<folder of libnixl.so>/plugins` when
//! `NIXL_PLUGIN_DIR` is unset (for the 1.5 wheels `site-packages/.nixl_cuXX.mesonpy.libs/plugins`).
//! Every file is replaced atomically (temporary file in the same folder, fsync, rename): a
//! running NIXL process keeps the old inode mapped, where overwriting in place crashes it
//! (SIGBUS or SIGSEGV at its next page-in of the plugin).
//! A manifest (`.tcpx-installed`) beside the plugin records what install wrote, so uninstall
//! removes only that and status can tell a stale copy.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::args::Flags;

/// NIXL releases whose backend-plugin ABI `libplugin_TCPX.so` is built for (nixl's
/// `cpp/nixl_abi.h`). Install refuses any other version by name and changes nothing.
pub const NIXL_VERSIONS: &[&str] = &["1.5.1"];
/// The file name libnixl derives the backend name from (`libplugin_<NAME>.so`).
pub const PLUGIN_FILE: &str = "libplugin_TCPX.so";
/// Records, beside the plugin, what install wrote there (see [`Manifest`]).
pub const MANIFEST_FILE: &str = ".tcpx-installed";

/// Bound on the interpreter answering the layout question (it imports nothing heavy).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on importing NIXL, loading the plugin and creating a backend in a child process.
const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

const USAGE: &str = "usage: tcpx nixl install [--python PY] [--plugin PATH]
       tcpx nixl uninstall [--python PY]
       tcpx nixl status [--python PY] [--plugin PATH]
  install      put libplugin_TCPX.so into the plugin folder of every NIXL wheel
               (nixl-cu12, nixl-cu13) of PY's environment; idempotent
  uninstall    remove what install put there (nothing else)
  status       each NIXL's version and plugin folder, what `import nixl` picks,
               whether TCPX is there, current and loads, the TCPX_* environment
  --python PY  the interpreter whose environment holds NIXL (default python3)
  --plugin PATH
               the plugin to install or compare with (default: ../plugins/
               libplugin_TCPX.so next to this tcpx binary)";

type NixlResult<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Uninstall,
    Status,
}

#[derive(Debug)]
struct Options {
    action: Action,
    python: String,
    plugin: Option<PathBuf>,
}

fn parse(args: &[String]) -> NixlResult<Options> {
    let action = match args.first().map(String::as_str) {
        Some("install") => Action::Install,
        Some("uninstall") => Action::Uninstall,
        Some("status") => Action::Status,
        Some(other) => return Err(format!("unknown nixl command {other:?}")),
        None => return Err("missing command: install, uninstall or status".into()),
    };
    let mut o = Options {
        action,
        python: "python3".into(),
        plugin: None,
    };
    let mut flags = Flags::new(&args[1..]);
    while let Some(f) = flags.next() {
        match f.name {
            "--python" => o.python = flags.value(&f)?,
            "--plugin" if action != Action::Uninstall => {
                o.plugin = Some(PathBuf::from(flags.value(&f)?))
            }
            _ => return Err(format!("unknown argument {:?}", f.raw)),
        }
    }
    if o.python.is_empty() {
        return Err("--python needs a value".into());
    }
    // The interpreter runs with cwd `/`: a relative path must mean the caller's folder.
    if o.python.contains('/') && Path::new(&o.python).is_relative() {
        if let Ok(cwd) = std::env::current_dir() {
            o.python = cwd.join(&o.python).display().to_string();
        }
    }
    Ok(o)
}

/// `tcpx nixl ...`; returns the exit code (0 done / ready, 1 refused or not ready, 2 usage).
pub fn main(args: &[String]) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tcpx nixl: {e}\n{USAGE}");
            return 2;
        }
    };
    let result = match o.action {
        Action::Install => install(&o),
        Action::Uninstall => uninstall(&o),
        Action::Status => status(&o),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tcpx nixl: {e}");
            1
        }
    }
}

// ------------------------------------------------------------------ the Python environment

/// One installed `nixl-cuXX` wheel.
#[derive(Debug, Clone)]
struct Wheel {
    /// Distribution name, `nixl-cu12`.
    dist: String,
    version: String,
    /// Import name, `nixl_cu12`.
    module: String,
    /// The folder libnixl scans for plugins when `NIXL_PLUGIN_DIR` is unset; `None` when the
    /// wheel's layout is not one we recognise (no `libnixl.so`, or no `plugins/` beside it).
    plugin_dir: Option<PathBuf>,
}

/// What the interpreter reports about its NIXL installation.
#[derive(Debug, Default)]
struct PyEnv {
    executable: String,
    version: String,
    prefix: String,
    wheels: Vec<Wheel>,
    /// Version of the `nixl` meta package, if installed.
    meta: Option<String>,
    /// The interpreter's `sys.path` folders (for copies whose wheel was removed since).
    paths: Vec<PathBuf>,
}

/// Lists the NIXL distributions first on `sys.path` (the ones `import` would use), one
/// tab-separated line each. For each `nixl-cuXX`: the `libnixl.so` from its RECORD (else the
/// 1.5 layout beside the module), and the `plugins/` folder beside it if that folder holds the
/// wheel's own `libplugin_*.so` (proof that this is the folder libnixl scans).
const PROBE_PY: &str = r#"
import importlib.util, os, re, sys
from importlib import metadata

def esc(s):
    return str(s).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

def line(*fields):
    print("\t".join(esc(f) for f in fields))

line("python", sys.executable, sys.version.split()[0], sys.prefix)
for p in sys.path:
    if p and os.path.isdir(p):
        line("path", os.path.abspath(p))
seen = set()
for dist in metadata.distributions():
    name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
    if name in seen:
        continue
    seen.add(name)
    if name == "nixl":
        line("meta", dist.version)
        continue
    m = re.fullmatch(r"nixl-(cu\d+)", name)
    if not m:
        continue
    module = "nixl_" + m.group(1)
    files = list(dist.files or [])
    libnixl = next((os.path.abspath(dist.locate_file(f)) for f in files
                    if f.name == "libnixl.so"), "")
    if not libnixl:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            here = os.path.dirname(os.path.dirname(os.path.abspath(spec.origin)))
            libnixl = os.path.join(here, "." + module + ".mesonpy.libs", "libnixl.so")
    plugins = os.path.join(os.path.dirname(libnixl), "plugins") if libnixl else ""
    own = [f for f in files if f.name.startswith("libplugin_") and f.name.endswith(".so")
           and os.path.dirname(os.path.abspath(dist.locate_file(f))) == plugins]
    if not (plugins and os.path.isdir(plugins) and (own or not files)):
        plugins = ""
    line("wheel", name, dist.version, module, plugins)
"#;

/// Runs `python -c script args...` with cwd `/` (so no folder of the caller's shadows a
/// package), stdin closed, bounded by `timeout`. Returns (exit success, stdout, stderr).
fn run_python(
    python: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, Option<&str>)],
    timeout: Duration,
) -> NixlResult<(bool, String, String)> {
    let mut cmd = Command::new(python);
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{python} did not finish within {} s (killed)",
                    timeout.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {python}: {e}")),
        }
    };
    let (out, err) = (out.join(), err.join());
    Ok((
        status.success(),
        out.unwrap_or_default(),
        err.unwrap_or_default(),
    ))
}

/// Splits one line of the scripts' output into its unescaped fields.
fn fields(line: &str) -> Vec<String> {
    line.split('\t')
        .map(|f| {
            let mut s = String::with_capacity(f.len());
            let mut it = f.chars();
            while let Some(c) = it.next() {
                if c != '\\' {
                    s.push(c);
                    continue;
                }
                match it.next() {
                    Some('t') => s.push('\t'),
                    Some('n') => s.push('\n'),
                    Some(o) => s.push(o),
                    None => s.push('\\'),
                }
            }
            s
        })
        .collect()
}

fn probe(python: &str) -> NixlResult<PyEnv> {
    let (ok, out, err) = run_python(python, PROBE_PY, &[], &[], PROBE_TIMEOUT)?;
    if !ok {
        return Err(format!(
            "{python} could not list its packages:\n{}",
            err.trim_end()
        ));
    }
    parse_probe(&out).ok_or_else(|| format!("{python} gave no answer we understand:\n{out}"))
}

fn parse_probe(out: &str) -> Option<PyEnv> {
    let mut env = PyEnv::default();
    let mut answered = false;
    for line in out.lines() {
        let f = fields(line);
        match (f[0].as_str(), f.len()) {
            ("python", 4) => {
                answered = true;
                env.executable = f[1].clone();
                env.version = f[2].clone();
                env.prefix = f[3].clone();
            }
            ("path", 2) => env.paths.push(PathBuf::from(&f[1])),
            ("meta", 2) => env.meta = Some(f[1].clone()),
            ("wheel", 5) => env.wheels.push(Wheel {
                dist: f[1].clone(),
                version: f[2].clone(),
                module: f[3].clone(),
                plugin_dir: (!f[4].is_empty()).then(|| PathBuf::from(&f[4])),
            }),
            _ => {}
        }
    }
    env.wheels.sort_by(|a, b| a.dist.cmp(&b.dist));
    answered.then_some(env)
}

/// Plugin folders of NIXL wheels no longer installed that still hold a manifest of ours (pip
/// removes a wheel's own files, not the ones install added): `<sys.path entry>/.nixl_*.libs/
/// plugins`. Uninstall removes what they hold; status reports them.
fn orphans(env: &PyEnv) -> Vec<PathBuf> {
    let owned: BTreeSet<&Path> = env
        .wheels
        .iter()
        .filter_map(|w| w.plugin_dir.as_deref())
        .collect();
    let mut found = BTreeSet::new();
    for p in &env.paths {
        let Ok(rd) = fs::read_dir(p) else { continue };
        for e in rd.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".nixl_") && name.ends_with(".libs") {
                let dir = e.path().join("plugins");
                if dir.join(MANIFEST_FILE).is_file() && !owned.contains(dir.as_path()) {
                    found.insert(dir);
                }
            }
        }
    }
    found.into_iter().collect()
}

// --------------------------------------------------------------------- files and manifest

/// What install wrote into one plugin folder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    /// [`fingerprint`] of the plugin file as written.
    hash: String,
    /// `nixl-cu12 1.5.1`: the wheel it was installed into.
    nixl: String,
    /// The tcpx version that wrote it.
    tcpx: String,
    /// The file it was copied from.
    source: String,
}

impl Manifest {
    fn render(&self) -> String {
        format!(
            "# Written by `tcpx nixl install`. `tcpx nixl uninstall` removes {PLUGIN_FILE} while\n\
             # its hash is this one, then this file.\n\
             file={PLUGIN_FILE}\nhash={}\nnixl={}\ntcpx={}\nsource={}\n",
            self.hash, self.nixl, self.tcpx, self.source
        )
    }

    fn parse(text: &str) -> Option<Manifest> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
        };
        if get("file").as_deref() != Some(PLUGIN_FILE) {
            return None;
        }
        let hash = get("hash")?;
        (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Manifest {
            hash: hash.to_ascii_lowercase(),
            nixl: get("nixl").unwrap_or_default(),
            tcpx: get("tcpx").unwrap_or_default(),
            source: get("source").unwrap_or_default(),
        })
    }

    fn read(dir: &Path) -> io::Result<Option<Manifest>> {
        match fs::read_to_string(dir.join(MANIFEST_FILE)) {
            Ok(t) => Ok(Manifest::parse(&t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A file written and synced under a temporary name in its final folder, not yet renamed.
/// The temporary name starts with `.` and does not end in `.so`, so libnixl's folder scan
/// (`libplugin_*.so`) never sees it. Dropped uncommitted, it is removed.
struct Staged {
    tmp: PathBuf,
    dst: PathBuf,
    committed: bool,
}

impl Staged {
    fn write(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<Staged> {
        let tmp = dir.join(format!(".{name}.tcpx-tmp.{}", std::process::id()));
        // A leftover of a killed run of this same pid; never a file of anyone else.
        let _ = fs::remove_file(&tmp);
        let staged = Staged {
            tmp,
            dst: dir.join(name),
            committed: false,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644) // as the wheel's own plugins
            .open(&staged.tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(staged)
    }

    /// Renames over the final name: a process that has the old file open or mapped keeps it.
    fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.dst)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_if_exists(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The plugin this tcpx installs: `--plugin`, else `<dir of this binary>/../plugins/`
/// (`target/plugins` for `target/*/tcpx`, where `scripts/collect-plugins.sh` puts it).
fn default_plugin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("plugins").join(PLUGIN_FILE))
}

/// The plugin file to install, read and checked to be a shared object.
struct Source {
    path: PathBuf,
    bytes: Vec<u8>,
    hash: String,
}

fn read_source(path: &Path) -> NixlResult<Source> {
    let bytes = fs::read(path).map_err(|e| {
        format!(
            "cannot read the plugin {}: {e} (build it: cargo build -p tcpx-nixl && \
             scripts/collect-plugins.sh, or pass --plugin PATH)",
            path.display()
        )
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(format!(
            "{} is not a shared object (no ELF header)",
            path.display()
        ));
    }
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(Source {
        hash: fingerprint(&bytes),
        path,
        bytes,
    })
}

fn plugin_source(o: &Options) -> NixlResult<Source> {
    match &o.plugin {
        Some(p) => read_source(p),
        None => read_source(&default_plugin().ok_or("cannot locate this tcpx binary's folder")?),
    }
}

fn label(w: &Wheel) -> String {
    format!("{} {}", w.dist, w.version)
}

fn no_nixl(env: &PyEnv) -> String {
    format!(
        "no NIXL wheel (nixl-cu12, nixl-cu13) in the environment of {} ({}); install one, \
         e.g. pip install nixl-cu12=={}",
        env.executable, env.prefix, NIXL_VERSIONS[0]
    )
}

// --------------------------------------------------------------------------- the commands

fn install(o: &Options) -> NixlResult<i32> {
    let src = plugin_source(o)?;
    let env = probe(&o.python)?;
    if env.wheels.is_empty() {
        return Err(no_nixl(&env));
    }
    // Every check before the first write: a refusal changes nothing.
    let mut refused = Vec::new();
    let mut targets = Vec::new();
    for w in &env.wheels {
        match &w.plugin_dir {
            _ if !NIXL_VERSIONS.contains(&w.version.as_str()) => refused.push(format!(
                "{} (at {}): tcpx's NIXL backend is built for the plugin ABI of NIXL {}",
                label(w),
                w.plugin_dir
                    .as_deref()
                    .map_or(env.prefix.clone(), |d| d.display().to_string()),
                NIXL_VERSIONS.join(", ")
            )),
            None => refused.push(format!(
                "{}: no plugins/ folder beside its libnixl.so (a layout tcpx does not know)",
                label(w)
            )),
            Some(dir) => targets.push((w, dir.as_path())),
        }
    }
    if !refused.is_empty() {
        return Err(format!(
            "refused, nothing was changed:\n  {}",
            refused.join("\n  ")
        ));
    }
    println!(
        "python: {} (Python {}, {})",
        env.executable, env.version, env.prefix
    );
    println!("plugin: {} (hash {})", src.path.display(), src.hash);

    // Stage every file in every folder, then rename them all.
    let mut staged = Vec::new();
    let mut notes = Vec::new();
    for (w, dir) in targets {
        let manifest = Manifest {
            hash: src.hash.clone(),
            nixl: label(w),
            tcpx: env!("CARGO_PKG_VERSION").into(),
            source: src.path.display().to_string(),
        };
        let ctx = |e: io::Error| format!("{}: cannot write in {}: {e}", label(w), dir.display());
        let current = read_if_exists(&dir.join(PLUGIN_FILE)).map_err(ctx)?;
        let same_file = current
            .as_deref()
            .is_some_and(|b| fingerprint(b) == src.hash);
        let old = Manifest::read(dir).map_err(ctx)?;
        if same_file && old.as_ref() == Some(&manifest) {
            notes.push(format!(
                "{}: already installed, unchanged ({})",
                label(w),
                dir.join(PLUGIN_FILE).display()
            ));
            continue;
        }
        let what = match (&current, &old) {
            (None, _) => "installed",
            (Some(_), None) if same_file => "installed (took over an identical copy there)",
            (Some(_), None) => "installed, replacing a copy tcpx had not put there",
            (Some(_), Some(_)) if same_file => "installed (manifest updated)",
            (Some(_), Some(_)) => "updated",
        };
        if !same_file {
            staged.push(Staged::write(dir, PLUGIN_FILE, &src.bytes).map_err(ctx)?);
        }
        staged.push(Staged::write(dir, MANIFEST_FILE, manifest.render().as_bytes()).map_err(ctx)?);
        notes.push(format!(
            "{}: {what} {}",
            label(w),
            dir.join(PLUGIN_FILE).display()
        ));
    }
    // The plugin before its manifest: a manifest never names a file that is not there yet.
    for s in staged {
        let dir = s.dst.parent().map(Path::to_path_buf).unwrap_or_default();
        s.commit()
            .and_then(|()| sync_dir(&dir))
            .map_err(|e| format!("cannot rename into {}: {e}", dir.display()))?;
    }
    for n in notes {
        println!("{n}");
    }

    // Proof that libnixl finds and loads it from there (not from NIXL_PLUGIN_DIR).
    let mut code = 0;
    for w in &env.wheels {
        let c = check(&o.python, w, false)?;
        match c.load {
            Load::Ok => println!("{}: TCPX loads", label(w)),
            ref other => {
                code = 1;
                println!("{}: TCPX {}", label(w), other.describe());
            }
        }
    }
    Ok(code)
}

fn uninstall(o: &Options) -> NixlResult<i32> {
    let env = probe(&o.python)?;
    let mut dirs: Vec<(String, PathBuf)> = env
        .wheels
        .iter()
        .filter_map(|w| Some((label(w), w.plugin_dir.clone()?)))
        .collect();
    for d in orphans(&env) {
        dirs.push(("(no NIXL wheel)".into(), d));
    }
    if dirs.is_empty() {
        if env.wheels.is_empty() {
            println!("{}: nothing to remove", no_nixl(&env));
        }
        return Ok(0);
    }
    let mut code = 0;
    for (name, dir) in dirs {
        let ctx = |e: io::Error| format!("{name}: {}: {e}", dir.display());
        let file = dir.join(PLUGIN_FILE);
        let current = read_if_exists(&file).map_err(ctx)?;
        match (Manifest::read(&dir).map_err(ctx)?, current) {
            (None, None) => println!("{name}: not installed"),
            (None, Some(_)) => {
                code = 1;
                println!(
                    "{name}: {} was not put there by tcpx nixl install: left alone",
                    file.display()
                );
            }
            (Some(m), Some(b)) if fingerprint(&b) != m.hash => {
                code = 1;
                println!(
                    "{name}: {} changed since tcpx nixl install wrote it: left alone \
                     (remove it and {MANIFEST_FILE} by hand)",
                    file.display()
                );
            }
            (Some(_), current) => {
                // Unlinking is safe for a process that has it mapped: the inode lives on.
                if current.is_some() {
                    fs::remove_file(&file).map_err(ctx)?;
                }
                fs::remove_file(dir.join(MANIFEST_FILE)).map_err(ctx)?;
                sync_dir(&dir).map_err(ctx)?;
                println!("{name}: removed {}", file.display());
            }
        }
    }
    Ok(code)
}

/// Whether a wheel's libnixl finds and loads TCPX from its own folder.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Load {
    Ok,
    /// Not in `get_plugin_list` (not in the folder).
    Absent,
    /// Listed, but libnixl could not load it; what NIXL logged about it.
    Fails(String),
    /// The wheel does not import, or the check process failed.
    NoNixl(String),
}

impl Load {
    fn describe(&self) -> String {
        match self {
            Load::Ok => "loads".into(),
            Load::Absent => "is not in NIXL's plugin list".into(),
            Load::Fails(why) => format!("is listed but does not load: {why}"),
            Load::NoNixl(why) => format!("could not be checked: {why}"),
        }
    }
}

#[derive(Debug)]
struct Check {
    plugins: Vec<String>,
    load: Load,
    /// `Ok(effective parameters)` or the creation error, when asked to create.
    backend: Option<Result<String, String>>,
}

/// Imports a NIXL module in a child interpreter with `NIXL_PLUGIN_DIR` removed (so libnixl
/// scans the wheel's own folder), lists the plugins, loads TCPX (`get_plugin_params`) and with
/// `create` creates the backend as vLLM does (no options: everything from the environment).
/// fd 1 is pointed at stderr first, so nothing NIXL prints mixes with the answer.
const CHECK_PY: &str = r#"
import importlib, os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

def esc(s):
    return str(s).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")

def line(*fields):
    out.write("\t".join(esc(f) for f in fields) + "\n")
    out.flush()

mod, create = sys.argv[1], sys.argv[2] == "1"
try:
    m = importlib.import_module(mod)
    agent = m.nixl_agent("tcpx-nixl-check", m.nixl_agent_config(backends=[]))
    plugins = agent.get_plugin_list()
except Exception as e:
    line("error", f"{type(e).__name__}: {e}")
    sys.exit(0)
line("plugins", *sorted(plugins))
if "TCPX" in plugins:
    line("load", "ok" if agent.get_plugin_params("TCPX") else "failed")
    if create:
        try:
            agent.create_backend("TCPX", {})
            params = agent.get_backend_params("TCPX")
            line("backend", "ok", " ".join(f"{k}={params[k]}" for k in sorted(params)))
        except Exception as e:
            line("backend", "error", f"{type(e).__name__}: {e}")
"#;

fn check(python: &str, w: &Wheel, create: bool) -> NixlResult<Check> {
    // INFO makes libnixl log why a plugin did not load (dlopen's message); the user's own
    // level wins when set.
    let level = std::env::var("NIXL_LOG_LEVEL").ok();
    let env = [
        ("NIXL_PLUGIN_DIR", None),
        ("NIXL_LOG_LEVEL", Some(level.as_deref().unwrap_or("INFO"))),
    ];
    let args = [w.module.as_str(), if create { "1" } else { "0" }];
    let (ok, out, err) = run_python(python, CHECK_PY, &args, &env, CHECK_TIMEOUT)?;
    let about_tcpx = || {
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(PLUGIN_FILE)).collect();
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        match lines.last() {
            // Without the log prefix (`I1207 03:08:38.774863 16795 file.cpp:352] `).
            Some(l) => l.split_once("] ").map_or(*l, |(_, m)| m).trim().to_string(),
            None => tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        }
    };
    let mut c = Check {
        plugins: Vec::new(),
        load: Load::Absent,
        backend: None,
    };
    let mut answered = false;
    for line in out.lines() {
        let f = fields(line);
        match f[0].as_str() {
            "error" => {
                return Ok(Check {
                    load: Load::NoNixl(f.get(1).cloned().unwrap_or_default()),
                    ..c
                })
            }
            "plugins" => {
                answered = true;
                c.plugins = f[1..].to_vec();
            }
            "load" if f.get(1).map(String::as_str) == Some("ok") => c.load = Load::Ok,
            "load" => c.load = Load::Fails(about_tcpx()),
            "backend" if f.get(1).map(String::as_str) == Some("ok") => {
                c.backend = Some(Ok(f.get(2).cloned().unwrap_or_default()))
            }
            "backend" => c.backend = Some(Err(f.get(2).cloned().unwrap_or_default())),
            _ => {}
        }
    }
    if !answered {
        let why = if ok {
            "no answer".to_string()
        } else {
            format!("the check process failed: {}", about_tcpx())
        };
        c.load = Load::NoNixl(why);
    }
    Ok(c)
}

/// What `import nixl` resolves to here (run, not guessed: the meta package decides at import
/// from the CUDA version of torch / cuda-python / cupy, else takes the first of
/// nixl_cu13, nixl_cu12 that imports).
const PICK_PY: &str = r#"
import os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
try:
    import nixl
    picked = sys.modules["nixl._api"].__name__.split(".")[0]
except Exception as e:
    out.write("error\t" + f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ") + "\n")
    sys.exit(0)
try:
    from nixl_meta_utils import detect_cuda_major
    cuda = detect_cuda_major()
except Exception:
    cuda = None
out.write(f"picked\t{picked}\t{'' if cuda is None else cuda}\n")
"#;

/// The module `import nixl` picks, and why; or why it fails.
fn pick(python: &str) -> NixlResult<Result<(String, String), String>> {
    let (_, out, err) = run_python(python, PICK_PY, &[], &[], CHECK_TIMEOUT)?;
    for line in out.lines() {
        let f = fields(line);
        match (f[0].as_str(), f.len()) {
            ("picked", 3) => {
                let why = if f[2].is_empty() {
                    "no CUDA version found in torch, cuda-python or cupy: the first of \
                     nixl_cu13, nixl_cu12 installed"
                        .to_string()
                } else {
                    format!("CUDA {} found (torch, cuda-python or cupy)", f[2])
                };
                return Ok(Ok((f[1].clone(), why)));
            }
            ("error", 2) => return Ok(Err(f[1].clone())),
            _ => {}
        }
    }
    Ok(Err(format!(
        "no answer: {}",
        err.lines().last().unwrap_or("").trim()
    )))
}

/// The state of TCPX in one plugin folder, from the files alone.
fn file_state(dir: &Path, w: Option<&Wheel>, ours: Option<&Source>) -> (bool, String) {
    let file = dir.join(PLUGIN_FILE);
    let current = match read_if_exists(&file) {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot read {}: {e}", file.display())),
    };
    let manifest = match Manifest::read(dir) {
        Ok(m) => m,
        Err(e) => return (false, format!("cannot read {MANIFEST_FILE}: {e}")),
    };
    let Some(bytes) = current else {
        return match manifest {
            None => (false, "not installed (tcpx nixl install)".into()),
            Some(_) => (
                false,
                format!("stale: {MANIFEST_FILE} without the plugin (tcpx nixl install)"),
            ),
        };
    };
    let hash = fingerprint(&bytes);
    let Some(m) = manifest else {
        return (
            false,
            format!("present (hash {hash}) but not put there by tcpx nixl install"),
        );
    };
    if m.hash != hash {
        return (
            false,
            format!(
                "changed since tcpx nixl install wrote it (hash {}, written {})",
                hash, m.hash
            ),
        );
    }
    if let Some(w) = w {
        if m.nixl != label(w) {
            return (
                false,
                format!(
                    "stale: installed for {}, the wheel is now {} (left by a NIXL upgrade): \
                     tcpx nixl install",
                    m.nixl,
                    label(w)
                ),
            );
        }
    }
    let from = format!("installed by tcpx {} (hash {})", m.tcpx, hash);
    match ours {
        Some(s) if s.hash != hash => (
            false,
            format!(
                "stale: {from}, this tcpx's plugin is {} ({}): tcpx nixl install",
                s.hash,
                s.path.display()
            ),
        ),
        Some(_) => (true, format!("{from}, current")),
        None => (true, from),
    }
}

fn status(o: &Options) -> NixlResult<i32> {
    let ours = match &o.plugin {
        Some(p) => Some(read_source(p)?),
        None => default_plugin().and_then(|p| read_source(&p).ok()),
    };
    let env = probe(&o.python)?;
    let mut out = String::new();
    let mut ready = !env.wheels.is_empty();
    let _ = writeln!(
        out,
        "python           {} (Python {}, {})",
        env.executable, env.version, env.prefix
    );
    match &ours {
        Some(s) => {
            let _ = writeln!(
                out,
                "tcpx plugin      {} (hash {})",
                s.path.display(),
                s.hash
            );
        }
        None => {
            let _ = writeln!(
                out,
                "tcpx plugin      none found beside this binary (--plugin PATH to compare)"
            );
        }
    }
    if env.wheels.is_empty() {
        let _ = writeln!(out, "NIXL             {}", no_nixl(&env));
    }
    let mut backend_params = None;
    let picked = match &env.meta {
        Some(_) if !env.wheels.is_empty() => Some(pick(&o.python)?),
        _ => None,
    };
    for w in &env.wheels {
        let built_for = NIXL_VERSIONS.contains(&w.version.as_str());
        let _ = writeln!(
            out,
            "{:<16} {}{}",
            w.dist,
            w.version,
            if built_for {
                String::new()
            } else {
                format!(
                    " (not a version tcpx's backend is built for: {})",
                    NIXL_VERSIONS.join(", ")
                )
            }
        );
        ready &= built_for;
        let Some(dir) = &w.plugin_dir else {
            ready = false;
            let _ = writeln!(
                out,
                "  plugins        not found (no plugins/ folder beside libnixl.so)"
            );
            continue;
        };
        let _ = writeln!(out, "  plugins        {}", dir.display());
        let (good, state) = file_state(dir, Some(w), ours.as_ref());
        ready &= good;
        let _ = writeln!(out, "  TCPX           {state}");
        let c = check(&o.python, w, true)?;
        ready &= c.load == Load::Ok;
        let listed = if c.plugins.is_empty() {
            String::new()
        } else {
            format!(" (plugins: {})", c.plugins.join(" "))
        };
        let _ = writeln!(out, "  loads          {}{listed}", c.load.describe());
        match &c.backend {
            Some(Ok(p)) => {
                let picked_here = matches!(&picked, Some(Ok((m, _))) if *m == w.module);
                if backend_params.is_none() || picked_here {
                    backend_params = Some((w.module.clone(), p.clone()));
                }
                let _ = writeln!(
                    out,
                    "  backend        created (backends=[\"TCPX\"], no options)"
                );
            }
            Some(Err(e)) => {
                ready = false;
                let _ = writeln!(out, "  backend        creation fails: {e}");
            }
            None => {}
        }
    }
    for d in orphans(&env) {
        let (_, state) = file_state(&d, None, ours.as_ref());
        let _ = writeln!(
            out,
            "left behind      {} (no NIXL wheel owns it now; tcpx nixl uninstall): {state}",
            d.display()
        );
    }
    match (&env.meta, &picked) {
        (None, _) => {
            let _ = writeln!(
                out,
                "import nixl      the nixl meta package is not installed (import {} directly)",
                env.wheels
                    .first()
                    .map_or("nixl_cu12", |w| w.module.as_str())
            );
        }
        (Some(v), Some(Ok((m, why)))) => {
            let _ = writeln!(out, "import nixl      {m} (meta package nixl {v}; {why})");
        }
        (Some(v), Some(Err(e))) => {
            ready = false;
            let _ = writeln!(out, "import nixl      fails (meta package nixl {v}): {e}");
        }
        (Some(v), None) => {
            let _ = writeln!(
                out,
                "import nixl      meta package nixl {v}, no wheel to pick"
            );
        }
    }
    match std::env::var_os("NIXL_PLUGIN_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            let there = if d.join(PLUGIN_FILE).exists() {
                "TCPX is there"
            } else {
                ready = false;
                "TCPX is NOT there"
            };
            let _ = writeln!(
                out,
                "NIXL_PLUGIN_DIR  {} is set: NIXL loads plugins from there instead of the \
                 folders above ({there}; unset it to use them)",
                d.display()
            );
        }
        None => {
            let _ = writeln!(
                out,
                "NIXL_PLUGIN_DIR  unset: NIXL loads plugins from the folders above"
            );
        }
    }
    let vars = tcpx_env();
    if vars.is_empty() {
        let _ = writeln!(
            out,
            "TCPX environment none set (backend defaults; docs/NIXL.md)"
        );
    } else {
        let _ = writeln!(out, "TCPX environment {}", vars.join(" "));
    }
    if let Some((module, p)) = backend_params {
        let _ = writeln!(out, "effective        {p} (get_backend_params in {module})");
    }
    let _ = writeln!(
        out,
        "ready            {}",
        if ready {
            "yes: backends=[\"TCPX\"] works with every NIXL wheel here"
        } else {
            "no"
        }
    );
    print!("{out}");
    Ok(if ready { 0 } else { 1 })
}

/// Every `TCPX_*` variable set, `NAME=value`, sorted.
fn tcpx_env() -> Vec<String> {
    let mut v: Vec<String> = std::env::vars_os()
        .filter_map(|(k, val)| {
            let k = k.to_str()?;
            k.starts_with("TCPX_")
                .then(|| format!("{k}={}", val.to_string_lossy()))
        })
        .collect();
    v.sort();
    v
}

// --------------------------------------------------------------------------- fingerprint

/// FNV-1a (64-bit) of `data`, 16 hex digits: recognises the file install wrote and tells a
/// stale or changed copy. A fingerprint, not a security check (whoever can write the plugin
/// folder can write the manifest too); chosen over a cryptographic hash because it costs a
/// tenth of a second on a 40 MB debug build of the plugin, where SHA-256 unoptimised takes
/// seconds.
fn fingerprint(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::super::args::argv;
    use super::*;

    #[test]
    fn fingerprint_is_fnv1a_64() {
        assert_eq!(fingerprint(b""), "cbf29ce484222325");
        assert_eq!(fingerprint(b"a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn parses_commands_and_flags() {
        let o = parse(&argv(&[
            "install",
            "--python",
            "/v/bin/python",
            "--plugin=/p.so",
        ]))
        .unwrap();
        assert_eq!(o.action, Action::Install);
        assert_eq!(o.python, "/v/bin/python");
        assert_eq!(o.plugin.as_deref(), Some(Path::new("/p.so")));
        let o = parse(&argv(&["status"])).unwrap();
        assert_eq!(
            (o.action, o.python.as_str(), o.plugin),
            (Action::Status, "python3", None)
        );
        assert!(parse(&argv(&[])).is_err());
        assert!(parse(&argv(&["upgrade"])).is_err());
        assert!(parse(&argv(&["uninstall", "--plugin", "/p.so"])).is_err());
        assert!(parse(&argv(&["install", "--python"])).is_err());
        assert!(parse(&argv(&["install", "--python="])).is_err());
    }

    #[test]
    fn manifest_round_trips_and_rejects_foreign_files() {
        let m = Manifest {
            hash: "ab".repeat(8),
            nixl: "nixl-cu12 1.5.1".into(),
            tcpx: "0.1.0".into(),
            source: "/x/libplugin_TCPX.so".into(),
        };
        assert_eq!(Manifest::parse(&m.render()), Some(m.clone()));
        assert_eq!(Manifest::parse("file=libplugin_UCX.so\nhash=00\n"), None);
        let short_hash = m.render().replace(&"ab".repeat(8), "abc");
        assert_eq!(Manifest::parse(&short_hash), None);
    }

    #[test]
    fn probe_lines_unescape_and_unknown_lines_are_ignored() {
        let out = "noise\npython\t/v/bin/python\t3.11.7\t/v\npath\t/v/a\\tb\n\
                   wheel\tnixl-cu13\t1.5.1\tnixl_cu13\t/v/p\nwheel\tnixl-cu12\t1.4.0\tnixl_cu12\t\n\
                   meta\t1.5.1\n";
        let env = parse_probe(out).unwrap();
        assert_eq!(env.executable, "/v/bin/python");
        assert_eq!(env.paths, vec![PathBuf::from("/v/a\tb")]);
        assert_eq!(env.meta.as_deref(), Some("1.5.1"));
        let names: Vec<_> = env.wheels.iter().map(label).collect();
        assert_eq!(names, ["nixl-cu12 1.4.0", "nixl-cu13 1.5.1"]);
        assert_eq!(env.wheels[0].plugin_dir, None);
        assert_eq!(env.wheels[1].plugin_dir.as_deref(), Some(Path::new("/v/p")));
        assert!(parse_probe("hello\n").is_none());
    }

    #[test]
    fn staged_file_is_invisible_until_committed_and_removed_if_dropped() {
        let dir = std::env::temp_dir().join(format!("tcpx-nixl-stage-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), b"old").unwrap();
        let s = Staged::write(&dir, "f", b"new").unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"old");
        s.commit().unwrap();
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");
        drop(Staged::write(&dir, "f", b"newer").unwrap());
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "a temporary file was left behind");
        fs::remove_dir_all(&dir).unwrap();
    }
}
