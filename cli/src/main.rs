//! The `tcpx` command: subcommands live in the `tcpx_cli` library.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(tcpx_cli::run(&args));
}
