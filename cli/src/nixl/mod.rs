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
//!
//! The modules: `python` (what the interpreter says about its NIXL wheels, and the child
//! processes that import NIXL), `files` (the plugin file, the manifest, atomic writes),
//! `install` (install and uninstall), `status`.

mod files;
mod install;
mod python;
mod status;

use std::path::{Path, PathBuf};

use crate::args::Flags;
use python::{PyEnv, Wheel};

/// NIXL releases whose backend-plugin ABI `libplugin_TCPX.so` is built for (nixl's
/// `cpp/nixl_abi.h`). Install refuses any other version by name and changes nothing.
pub const NIXL_VERSIONS: &[&str] = &["1.5.1"];
/// The file name libnixl derives the backend name from (`libplugin_<NAME>.so`).
pub const PLUGIN_FILE: &str = "libplugin_TCPX.so";
/// Records, beside the plugin, what install wrote there (see [`files::Manifest`]).
pub const MANIFEST_FILE: &str = ".tcpx-installed";

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
        Action::Install => install::install(&o),
        Action::Uninstall => install::uninstall(&o),
        Action::Status => status::status(&o),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tcpx nixl: {e}");
            1
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::argv;

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
}
