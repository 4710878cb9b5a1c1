//! What a Python interpreter says about its NIXL installation, and the child interpreters that
//! import NIXL to check that TCPX loads and which wheel `import nixl` picks.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{NixlResult, MANIFEST_FILE, PLUGIN_FILE};

/// Bound on the interpreter answering the layout question (it imports nothing heavy).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on importing NIXL, loading the plugin and creating a backend in a child process.
pub(super) const CHECK_TIMEOUT: Duration = Duration::from_secs(180);

/// One installed `nixl-cuXX` wheel.
#[derive(Debug, Clone)]
pub(super) struct Wheel {
    /// Distribution name, `nixl-cu12`.
    pub(super) dist: String,
    pub(super) version: String,
    /// Import name, `nixl_cu12`.
    pub(super) module: String,
    /// The folder libnixl scans for plugins when `NIXL_PLUGIN_DIR` is unset; `None` when the
    /// wheel's layout is not one we recognise (no `libnixl.so`, or no `plugins/` beside it).
    pub(super) plugin_dir: Option<PathBuf>,
}

/// What the interpreter reports about its NIXL installation.
#[derive(Debug, Default)]
pub(super) struct PyEnv {
    pub(super) executable: String,
    pub(super) version: String,
    pub(super) prefix: String,
    pub(super) wheels: Vec<Wheel>,
    /// Version of the `nixl` meta package, if installed.
    pub(super) meta: Option<String>,
    /// The interpreter's `sys.path` folders (for copies whose wheel was removed since).
    pub(super) paths: Vec<PathBuf>,
}

/// Lists the NIXL distributions first on `sys.path` (the ones `import` would use), one
/// tab-separated line each. For each `nixl-cuXX`: the `libnixl.so` from its RECORD (else the
/// 1.5 layout beside the module), and the `plugins/` folder beside it if that folder holds the
/// wheel's own `libplugin_*.so` (proof that this is the folder libnixl scans).
pub(super) const PROBE_PY: &str = r#"
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
pub(super) fn run_python(
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
pub(super) fn fields(line: &str) -> Vec<String> {
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

pub(super) fn probe(python: &str) -> NixlResult<PyEnv> {
    let (ok, out, err) = run_python(python, PROBE_PY, &[], &[], PROBE_TIMEOUT)?;
    if !ok {
        return Err(format!(
            "{python} could not list its packages:\n{}",
            err.trim_end()
        ));
    }
    parse_probe(&out).ok_or_else(|| format!("{python} gave no answer we understand:\n{out}"))
}

pub(super) fn parse_probe(out: &str) -> Option<PyEnv> {
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
pub(super) fn orphans(env: &PyEnv) -> Vec<PathBuf> {
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

/// Whether a wheel's libnixl finds and loads TCPX from its own folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Load {
    Ok,
    /// Not in `get_plugin_list` (not in the folder).
    Absent,
    /// Listed, but libnixl could not load it; what NIXL logged about it.
    Fails(String),
    /// The wheel does not import, or the check process failed.
    NoNixl(String),
}

impl Load {
    pub(super) fn describe(&self) -> String {
        match self {
            Load::Ok => "loads".into(),
            Load::Absent => "is not in NIXL's plugin list".into(),
            Load::Fails(why) => format!("is listed but does not load: {why}"),
            Load::NoNixl(why) => format!("could not be checked: {why}"),
        }
    }
}

#[derive(Debug)]
pub(super) struct Check {
    pub(super) plugins: Vec<String>,
    pub(super) load: Load,
    /// `Ok(effective parameters)` or the creation error, when asked to create.
    pub(super) backend: Option<Result<String, String>>,
}

/// Imports a NIXL module in a child interpreter with `NIXL_PLUGIN_DIR` removed (so libnixl
/// scans the wheel's own folder), lists the plugins, loads TCPX (`get_plugin_params`) and with
/// `create` creates the backend as vLLM does (no options: everything from the environment).
/// fd 1 is pointed at stderr first, so nothing NIXL prints mixes with the answer.
pub(super) const CHECK_PY: &str = r#"
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

pub(super) fn check(python: &str, w: &Wheel, create: bool) -> NixlResult<Check> {
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
pub(super) const PICK_PY: &str = r#"
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
pub(super) fn pick(python: &str) -> NixlResult<Result<(String, String), String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nixl::label;

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
}
