//! `tcpx-cli`: the subcommands of the `tcpx` command, over the engine's public API.
//!
//! [`run`] parses the command line (`clap`) and returns the process exit code; each
//! subcommand module holds its arguments (`Args`), checks what parsing alone cannot, and prints
//! its own output.

pub mod bench;
mod json;
pub mod nixl;
pub mod probe;
pub mod stream;
mod value;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

/// The `tcpx` command line.
#[derive(Debug, Parser)]
#[command(
    name = "tcpx",
    version,
    about = "tcpx: ncclNet plugins, engine transfers and the NIXL backend, from the command line",
    after_help = "environment: TCPX_LOG=error|warn|info|debug|trace (default warn)",
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Load an ncclNet plugin and list its devices (PCI path, NUMA node)
    #[command(
        long_about = "Load an ncclNet plugin and list its devices (PCI path, NUMA node), in the \
spirit of ibv_devinfo (default plugin: $TCPX_PLUGIN, else the embedded tcpxsock). --preflight \
instead checks an A3 VM for GPUDirect-TCPX before a first transfer."
    )]
    Probe(probe::Args),
    /// Transfer sizes between two sessions: GB/s (median, aggregate), p50/p99 latency
    #[command(
        long_about = "Transfer sizes between two sessions: GB/s (median, aggregate), \
p50/p90/p99/p99.9 latency and the CPU time per transfer, in one process (--loopback) or between \
two hosts (--listen on one, --connect on the other)."
    )]
    Bench(bench::Args),
    /// Messages through the plugin API alone (no engine) on loopback
    #[command(
        long_about = "Messages through the plugin API alone (no engine) on loopback, a \
full window each side; --baseline adds iperf3 -P <nsocks> and the ratio."
    )]
    Stream(stream::Args),
    /// Put libplugin_TCPX.so next to NIXL's own plugins, remove it, or report its state
    #[command(
        subcommand,
        long_about = "Put libplugin_TCPX.so next to NIXL's own plugins in every NIXL wheel \
(nixl-cu12, nixl-cu13) of PY's environment (default python3), so backends=[\"TCPX\"] works with \
no NIXL_PLUGIN_DIR; uninstall removes what install put there; status: versions, folders, what \
`import nixl` picks, whether TCPX loads, the TCPX_* environment (default plugin: \
../plugins/libplugin_TCPX.so beside this binary)."
    )]
    Nixl(nixl::Command),
}

/// Runs `tcpx` with `args` (without the program name); returns the exit code: 0 done, 1
/// failed, 2 usage error (help and version: 0).
pub fn run(args: &[String]) -> i32 {
    let argv = std::iter::once("tcpx").chain(args.iter().map(String::as_str));
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let e = with_usage(e, args);
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Probe(a) => probe::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Stream(a) => stream::main(a),
        Command::Nixl(c) => nixl::main(c),
    }
}

/// A usage error that parsing alone does not catch (a combination of options, an engine
/// setting out of range), printed as parsing errors are: the message, then `command`'s usage.
/// Returns the exit code, 2.
pub(crate) fn usage_error(command: &str, message: impl std::fmt::Display) -> i32 {
    let e = command_error(&[command], ErrorKind::ValueValidation, message);
    let _ = e.print();
    e.exit_code()
}

/// An error of the subcommand at `path` (`["nixl", "install"]`), rendered with its usage.
fn command_error(path: &[&str], kind: ErrorKind, message: impl std::fmt::Display) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    let mut cmd = &mut cli;
    for name in path {
        cmd = cmd.find_subcommand_mut(name).expect("a subcommand of tcpx");
    }
    cmd.error(kind, message)
}

/// clap shows the usage with most usage errors but not with a value it refuses: every usage
/// error of `tcpx` ends with the usage of its command, so a refused value gets it too.
fn with_usage(e: clap::Error, args: &[String]) -> clap::Error {
    let text = e.render().to_string();
    if !e.use_stderr() || text.contains("\nUsage: ") {
        return e;
    }
    let cli = Cli::command();
    let mut path = Vec::new();
    let mut cmd = &cli;
    for a in args {
        match cmd.find_subcommand(a) {
            Some(sub) => {
                path.push(a.as_str());
                cmd = sub;
            }
            None => break,
        }
    }
    let message = text.trim_end();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    let message = message
        .strip_suffix("For more information, try '--help'.")
        .unwrap_or(message)
        .trim_end();
    command_error(&path, e.kind(), message)
}

/// The subcommand `args` (without the program name) parse to, or clap's message.
#[cfg(test)]
pub(crate) fn parse(args: &[&str]) -> Result<Command, String> {
    let argv = std::iter::once("tcpx").chain(args.iter().copied());
    Cli::try_parse_from(argv)
        .map(|cli| cli.command)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn inline_and_separate_values() {
        // `--flag=value` and `--flag value` mean the same; a flag without its value is refused.
        for (inline, separate) in [
            (
                &["probe", "--plugin=/x.so"][..],
                &["probe", "--plugin", "/x.so"][..],
            ),
            (
                &["bench", "--loopback", "--size=4K"],
                &["bench", "--loopback", "--size", "4K"],
            ),
            (
                &["nixl", "status", "--python=py"],
                &["nixl", "status", "--python", "py"],
            ),
        ] {
            let (a, b) = (parse(inline).unwrap(), parse(separate).unwrap());
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        for args in [&["probe", "--plugin"][..], &["stream", "--device"]] {
            let e = parse(args).unwrap_err();
            assert!(e.contains("a value is required"), "{args:?}: {e}");
        }
    }
}
