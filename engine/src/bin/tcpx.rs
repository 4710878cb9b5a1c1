//! The `tcpx` command: subcommands live in `tcpx::cli`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(tcpx::cli::run(&args));
}
