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

use python::{PyEnv, Wheel};

/// NIXL releases whose backend-plugin ABI `libplugin_TCPX.so` is built for (nixl's
/// `cpp/nixl_abi.h`). Install refuses any other version by name and changes nothing.
pub const NIXL_VERSIONS: &[&str] = &["1.5.1"];
/// The file name libnixl derives the backend name from (`libplugin_<NAME>.so`).
pub const PLUGIN_FILE: &str = "libplugin_TCPX.so";
/// Records, beside the plugin, what install wrote there (see `files::Manifest`).
pub const MANIFEST_FILE: &str = ".tcpx-installed";

/// `tcpx nixl` commands and their arguments.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Put libplugin_TCPX.so into the plugin folder of every NIXL wheel (nixl-cu12, nixl-cu13)
    /// of PY's environment; idempotent
    #[command(args_override_self = true)]
    Install {
        #[command(flatten)]
        python: Python,
        #[command(flatten)]
        plugin: Plugin,
    },
    /// Remove what install put there (nothing else)
    #[command(args_override_self = true)]
    Uninstall {
        #[command(flatten)]
        python: Python,
    },
    /// Each NIXL's version and plugin folder, what `import nixl` picks, whether TCPX is there,
    /// current and loads, the TCPX_* environment
    #[command(args_override_self = true)]
    Status {
        #[command(flatten)]
        python: Python,
        #[command(flatten)]
        plugin: Plugin,
    },
}

/// `--python PY`.
#[derive(Debug, clap::Args)]
pub struct Python {
    /// The interpreter whose environment holds NIXL
    #[arg(
        id = "python",
        long = "python",
        value_name = "PY",
        default_value = "python3",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    path: String,
}

/// `--plugin PATH`.
#[derive(Debug, clap::Args)]
pub struct Plugin {
    /// The plugin to install or compare with (default: ../plugins/libplugin_TCPX.so next to
    /// this tcpx binary)
    #[arg(id = "plugin", long = "plugin", value_name = "PATH")]
    path: Option<PathBuf>,
}

type NixlResult<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Install,
    Uninstall,
    Status,
}

/// `tcpx nixl` options: the command and its arguments.
#[derive(Debug)]
struct Options {
    action: Action,
    python: String,
    plugin: Option<PathBuf>,
}

impl From<Command> for Options {
    fn from(c: Command) -> Options {
        let (action, python, plugin) = match c {
            Command::Install { python, plugin } => (Action::Install, python, plugin.path),
            Command::Uninstall { python } => (Action::Uninstall, python, None),
            Command::Status { python, plugin } => (Action::Status, python, plugin.path),
        };
        let mut python = python.path;
        // The interpreter runs with cwd `/`: a relative path must mean the caller's folder.
        if python.contains('/') && Path::new(&python).is_relative() {
            if let Ok(cwd) = std::env::current_dir() {
                python = cwd.join(&python).display().to_string();
            }
        }
        Options {
            action,
            python,
            plugin,
        }
    }
}

/// `tcpx nixl ...`; returns the exit code (0 done / ready, 1 refused or not ready).
pub fn main(command: Command) -> i32 {
    let o = Options::from(command);
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

    fn parse(args: &[&str]) -> NixlResult<Options> {
        let argv: Vec<&str> = ["nixl"].iter().chain(args).copied().collect();
        match crate::parse(&argv)? {
            crate::Command::Nixl(c) => Ok(Options::from(c)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_commands_and_flags() {
        let o = parse(&["install", "--python", "/v/bin/python", "--plugin=/p.so"]).unwrap();
        assert_eq!(o.action, Action::Install);
        assert_eq!(o.python, "/v/bin/python");
        assert_eq!(o.plugin.as_deref(), Some(Path::new("/p.so")));
        let o = parse(&["status"]).unwrap();
        assert_eq!(
            (o.action, o.python.as_str(), o.plugin),
            (Action::Status, "python3", None)
        );
        let o = parse(&["uninstall", "--python", "venv/bin/python"]).unwrap();
        assert_eq!(o.action, Action::Uninstall);
        assert!(Path::new(&o.python).is_absolute(), "{}", o.python);
        assert!(parse(&[]).is_err());
        assert!(parse(&["upgrade"]).is_err());
        assert!(parse(&["uninstall", "--plugin", "/p.so"]).is_err());
        assert!(parse(&["install", "--python"]).is_err());
        assert!(parse(&["install", "--python="]).is_err());
    }
}
