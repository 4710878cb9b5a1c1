"""The exceptions tcpx raises: one class per kind of engine error, all under `tcpx.Error`.

The message is the engine's own text. Classes also derive from the matching built-in where
one exists, so `except ValueError` / `except TimeoutError` / `except OSError` catch them too.
"""

import builtins


class Error(Exception):
    """Every failure tcpx reports."""


class InvalidError(Error, ValueError):
    """A bad argument or a call out of order: unknown or deregistered region, a segment
    outside its region, a released transfer, a closed session. Nothing was changed."""


class BadMemoryError(InvalidError):
    """Memory registered as a kind, device or length the CUDA driver contradicts."""


class ConfigError(Error, ValueError):
    """A setting out of range (keyword argument or TCPX_* environment variable), or a peer
    configured differently (channels, chunk_bytes)."""


class TimeoutError(Error, builtins.TimeoutError):
    """The handshake or a wait did not finish within its bound. A waited transfer stays
    live: wait again or release it."""


class PluginError(Error):
    """The ncclNet plugin is missing, not loadable, or one of its calls failed. A failure
    during a transfer also breaks the session (see BrokenError)."""


class BrokenError(Error):
    """The session stopped working after an earlier failure (a plugin error, a dead peer);
    every later call fails with this. Close it and establish a new one."""


class UnsupportedError(Error):
    """Not offered by this build or plugin (e.g. CUDA memory on a plugin without CUDA)."""


class ProtocolError(Error):
    """The peer's data breaks the protocol, e.g. connection info that is not tcpx's."""


class IoError(Error, OSError):
    """An operating-system I/O failure (the TCP rendezvous)."""


class GpuError(Error):
    """A CUDA failure: no driver, context, unpack kernel load or launch, event."""


__all__ = [
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
