"""`python -m tcpx` and the wheel's `tcpx` command: the Rust command line (probe, bench,
stream, nixl), run inside this package's extension module."""

import signal
import sys


def _wheel_defaults(args: "list[str]") -> "list[str]":
    """`tcpx nixl ...` from the wheel: the NIXL plugin is the one shipped in this package
    (the Rust default looks next to a `tcpx` binary, which a wheel does not have) and NIXL's
    environment is this interpreter's, unless the command line says otherwise."""
    from . import NIXL_PLUGIN, plugin_dir

    if args[:1] != ["nixl"] or len(args) < 2:
        return args
    out = list(args)
    d = plugin_dir()
    if out[1] in ("install", "status") and "--plugin" not in out and d is not None:
        out += ["--plugin", str(d / NIXL_PLUGIN)]
    if out[1] in ("install", "uninstall", "status") and "--python" not in out:
        out += ["--python", sys.executable]
    return out


def main(argv: "list[str] | None" = None) -> int:
    from . import cli

    args = _wheel_defaults(sys.argv[1:] if argv is None else list(argv))
    # The Rust code runs without the GIL and never looks at Python's signal flags: Ctrl-C
    # must end the process as it ends the native binary.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
