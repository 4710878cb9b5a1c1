"""`python -m tcpx` and the wheel's `tcpx` command: the Rust command line (probe, bench,
stream), run inside this package's extension module."""

import os
import signal
import sys


def main(argv: "list[str] | None" = None) -> int:
    from . import cli, plugin_dir

    args = sys.argv[1:] if argv is None else list(argv)
    # The Rust code runs without the GIL and never looks at Python's signal flags: Ctrl-C
    # must end the process as it ends the native binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Where the shipped plugins are, for commands that install or load them.
    d = plugin_dir()
    if d is not None:
        os.environ.setdefault("TCPX_PLUGIN_DIR", str(d))
    sys.stdout.flush()
    sys.stderr.flush()
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
