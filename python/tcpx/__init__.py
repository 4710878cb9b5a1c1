"""tcpx: point-to-point transfers of GPU and host memory over GPUDirect-TCPX (or TCP).

Two peers each open a `Session` to the other, register memory (numpy arrays, torch tensors
on the CPU or a GPU, anything with the buffer protocol, `__cuda_array_interface__` or
DLPack), and post mirror-image transfers: `SEND` on one side, `RECV` with the same segment
lengths in the same order on the other::

    import numpy as np, tcpx
    with tcpx.Session.establish(connect=("10.0.0.2", 5000)) as s:
        a = np.arange(1 << 20, dtype=np.float32)
        reg = s.register(a)
        with s.post(tcpx.SEND, [reg]) as t:
            t.wait()

Settings come from the TCPX_* environment (`tcpx.Config` overrides them). See docs/PYTHON.md.
"""

import pathlib

from . import errors
from ._tcpx import Config, Direction, Listener, Registration, Session, Transfer, cli
from .errors import (
    BadMemoryError,
    BrokenError,
    ConfigError,
    Error,
    GpuError,
    InvalidError,
    IoError,
    PluginError,
    ProtocolError,
    TimeoutError,
    UnsupportedError,
)

SEND = Direction.SEND
RECV = Direction.RECV

#: File names of the plugin libraries a wheel carries (see `plugin_dir`).
NCCL_NET_PLUGIN = "libnccl-net-tcpxsock.so"
NIXL_PLUGIN = "libplugin_TCPX.so"


def plugin_dir() -> "pathlib.Path | None":
    """The folder of the plugin libraries shipped in this package, or None where the build
    carried none: `libnccl-net-tcpxsock.so` (the tcpxsock ncclNet plugin, for NCCL_NET_PLUGIN
    or TCPX_PLUGIN) and `libplugin_TCPX.so` (the NIXL backend, for NIXL_PLUGIN_DIR)."""
    d = pathlib.Path(__file__).resolve().parent / "plugins"
    return d if (d / NIXL_PLUGIN).is_file() or (d / NCCL_NET_PLUGIN).is_file() else None


def listen(config: "Config | None" = None) -> Listener:
    """The first half of the handshake (same as `Listener(config)`)."""
    return Listener(config)


__all__ = [
    "Config",
    "Direction",
    "Listener",
    "Registration",
    "Session",
    "Transfer",
    "SEND",
    "RECV",
    "cli",
    "listen",
    "plugin_dir",
    "NCCL_NET_PLUGIN",
    "NIXL_PLUGIN",
    "errors",
    "Error",
    "InvalidError",
    "BadMemoryError",
    "ConfigError",
    "TimeoutError",
    "PluginError",
    "BrokenError",
    "UnsupportedError",
    "ProtocolError",
    "IoError",
    "GpuError",
]
