//! `tcpx-cli`: the subcommands of the `tcpx` command, over the engine's public API.
//!
//! `run` dispatches on the first argument and returns the process exit code; each
//! subcommand module parses its own flags and prints its own output.

pub mod args;
pub mod bench;
pub mod json;
pub mod nixl;
pub mod probe;
pub mod stream;

const USAGE: &str = "\
usage: tcpx <command> [options]

commands:
  probe [--plugin PATH] [--json] [--abi 7|8|9|10] [--gpu N] [--preflight]
        load an ncclNet plugin and list its devices (PCI path, NUMA node)
        (default plugin: $TCPX_PLUGIN, else the embedded tcpxsock)
        --gpu N              rank every device for memory on GPU N (nearest = rank 0;
                             what TCPX_DEVICES=auto picks from)
        --preflight          check an A3 VM for GPUDirect-TCPX before a first transfer
                             (plugin version, TCPX NICs, RxDM sockets, tuning env, GPU)
  bench (--loopback | --listen PORT | --connect HOST:PORT) [options]
        transfer sizes between two sessions: GB/s (median, aggregate), p50/p99 latency
        --loopback           both sessions in this process (embedded tcpxsock on lo)
        --listen PORT        one endpoint per host; the listener receives (sends with
        --connect HOST:PORT  --reverse) and its size/iters/segments/verify options rule
        --size N[,N...]      bytes per transfer, K/M/G suffixes
                             (default 4K,64K,1M,4M,16M,64M,256M)
        --iters N            iterations per size (default: ~0.75 s worth, 5..100000)
        --segments N         split each transfer into N equal segments (default 1)
        --channels N --chunk N --window N --plugin PATH
                             engine settings (default: TCPX_* environment)
        --poller single|threads
                             loopback: one thread polls both sessions (default), or
                             one thread each started together per iteration
        --mem SRC:DST        host or cuda memory for the sender's and the receiver's
                             buffers (default host:host; `cuda` = cuda:cuda)
        --gpu N|SRC:DST      CUDA device of the cuda buffers (default 0); SRC:DST puts
                             the two sides on different GPUs
        --baseline           loopback: add plain TCP ping-pong and iperf3 -P 1/-P 4
                             rows, and our ratio to each (with cuda: the cuMemcpy too)
        --verify             check the received bytes after the timed iterations
        --json               one JSON object (config, rows, baselines)
  stream [--size N[,N...]] [--nsocks N[,N...]] [--window N] [--bytes N]
         [--plugin PATH] [--device N] [--baseline] [--json]
        messages through the plugin API alone (no engine) on loopback, a full
        window each side; --baseline adds iperf3 -P <nsocks> and the ratio
  nixl install [--python PY] [--plugin PATH] | uninstall [--python PY]
       | status [--python PY] [--plugin PATH]
        put libplugin_TCPX.so next to NIXL's own plugins in every NIXL wheel
        (nixl-cu12, nixl-cu13) of PY's environment (default python3), so
        backends=[\"TCPX\"] works with no NIXL_PLUGIN_DIR; uninstall removes what
        install put there; status: versions, folders, what `import nixl` picks,
        whether TCPX loads, the TCPX_* environment
        (default plugin: ../plugins/libplugin_TCPX.so beside this binary)
  help  show this text

environment: TCPX_LOG=error|warn|info|debug|trace (default warn)
";

/// Runs `tcpx` with `args` (without the program name); returns the exit code.
pub fn run(args: &[String]) -> i32 {
    // `tcpx <command> --help`: this text, which covers every command.
    let command = matches!(
        args.first().map(String::as_str),
        Some("probe" | "bench" | "stream" | "nixl")
    );
    if command && args[1..].iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return 0;
    }
    match args.first().map(String::as_str) {
        Some("probe") => probe::main(&args[1..]),
        Some("bench") => bench::main(&args[1..]),
        Some("stream") => stream::main(&args[1..]),
        Some("nixl") => nixl::main(&args[1..]),
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
