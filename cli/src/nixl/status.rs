//! `tcpx nixl status`: each NIXL wheel, its plugin folder, whether TCPX is there, current and
//! loads, what `import nixl` picks, and the environment that decides what NIXL loads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::files::{default_plugin, fingerprint, read_if_exists, read_source, Manifest, Source};
use super::python::{check, orphans, pick, probe, Load, Wheel};
use super::{label, no_nixl, NixlResult, Options, MANIFEST_FILE, NIXL_VERSIONS, PLUGIN_FILE};

/// The state of TCPX in one plugin folder, from the files alone.
pub(super) fn file_state(dir: &Path, w: Option<&Wheel>, ours: Option<&Source>) -> (bool, String) {
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

pub(super) fn status(o: &Options) -> NixlResult<i32> {
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
pub(super) fn tcpx_env() -> Vec<String> {
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
