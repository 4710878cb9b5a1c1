//! `tcpx nixl install` and `tcpx nixl uninstall`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::files::{fingerprint, plugin_source, read_if_exists, sync_dir, Manifest, Staged};
use super::python::{check, orphans, probe, Load};
use super::{label, no_nixl, NixlResult, Options, MANIFEST_FILE, NIXL_VERSIONS, PLUGIN_FILE};

pub(super) fn install(o: &Options) -> NixlResult<i32> {
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

pub(super) fn uninstall(o: &Options) -> NixlResult<i32> {
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
