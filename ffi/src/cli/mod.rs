//! Subcommands of the `tcpx` binary, with hand-written argument parsing.
//!
//! `run` dispatches on the first argument and returns the process exit code; each
//! subcommand module parses its own flags and prints its own output.

pub mod json;
pub mod probe;

const USAGE: &str = "\
usage: tcpx <command> [options]

commands:
  probe [--plugin PATH] [--json] [--abi 7|8|9|10]
        load an ncclNet plugin and list its devices
        (default plugin: $TCPX_PLUGIN, else the embedded tcpxsock)
  help  show this text

environment: TCPX_LOG=error|warn|info|debug|trace (default warn)
";

/// Runs `tcpx` with `args` (without the program name); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("probe") => probe::main(&args[1..]),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("tcpx: unknown command {other:?}\n\n{USAGE}");
            2
        }
        None => {
            eprint!("{USAGE}");
            2
        }
    }
}
