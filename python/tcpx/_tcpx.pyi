"""Type stubs of the extension module `tcpx._tcpx` (re-exported by `tcpx`)."""

import os
import pathlib
import socket
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Union, final

@final
class Config:
    """Engine settings: the TCPX_* environment (or the defaults with from_env=False) with
    keyword overrides. Both peers must use the same channels and chunk_bytes."""

    def __new__(
        cls,
        *,
        from_env: bool = True,
        channels: int | None = None,
        chunk_bytes: int | None = None,
        split_chunks: int | None = None,
        window: int | None = None,
        max_transfers: int | None = None,
        max_segments: int | None = None,
        timeout_ms: int | None = None,
        gpu: int | None = None,
        devices: str | int | Sequence[int] | None = None,
        plugin: str | os.PathLike[str] | None = None,
    ) -> Config: ...
    @property
    def channels(self) -> int: ...
    @property
    def chunk_bytes(self) -> int: ...
    @property
    def split_chunks(self) -> int: ...
    @property
    def window(self) -> int: ...
    @property
    def max_transfers(self) -> int: ...
    @property
    def max_segments(self) -> int: ...
    @property
    def timeout_ms(self) -> int: ...
    @property
    def gpu(self) -> int | None: ...
    @property
    def devices(self) -> str: ...
    @property
    def plugin(self) -> pathlib.Path | None: ...

@final
class Direction:
    """Which way a transfer moves bytes (tcpx.SEND, tcpx.RECV)."""

    SEND: ClassVar[Direction]
    RECV: ClassVar[Direction]
    def __int__(self) -> int: ...

_DirectionLike = Union[Direction, str]
_Address = Union[tuple[str, int], str]
_SegmentLike = Union[
    Registration,
    tuple[Registration, int, int],
    tuple[Registration, int, int, int],
]

@final
class Listener:
    """The first half of the handshake: send `conn_info` to the peer, then both sides
    call `connect` with the other's bytes."""

    def __new__(cls, config: Config | None = None) -> Listener: ...
    @property
    def conn_info(self) -> bytes: ...
    @property
    def config(self) -> Config: ...
    def connect(self, peer_info: bytes) -> Session: ...
    def close(self) -> None: ...
    def __enter__(self) -> Listener: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Session:
    """A connection to one peer."""

    @staticmethod
    def establish(
        *,
        accept: socket.socket | _Address | None = None,
        connect: _Address | None = None,
        config: Config | None = None,
    ) -> Session: ...
    @property
    def config(self) -> Config: ...
    @property
    def channel_devices(self) -> list[int]: ...
    @property
    def broken(self) -> str | None: ...
    @property
    def closed(self) -> bool: ...
    def register(self, obj: Any, *, device: int | None = None) -> Registration: ...
    def deregister(self, registration: Registration) -> None: ...
    def post(self, direction: _DirectionLike, segments: Iterable[_SegmentLike]) -> Transfer: ...
    def progress(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> Session: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Registration:
    """A registered region; holds the registered object."""

    @property
    def nbytes(self) -> int: ...
    def __len__(self) -> int: ...
    @property
    def address(self) -> int: ...
    @property
    def device(self) -> int | None: ...
    @property
    def readonly(self) -> bool: ...
    @property
    def object(self) -> Any: ...
    @property
    def session(self) -> Session: ...
    def deregister(self) -> None: ...
    def __enter__(self) -> Registration: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

@final
class Transfer:
    """A posted transfer."""

    def poll(self) -> bool: ...
    def status(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def release(self) -> None: ...
    @property
    def done(self) -> bool: ...
    @property
    def bytes_done(self) -> int: ...
    @property
    def bytes_total(self) -> int: ...
    @property
    def direction(self) -> Direction: ...
    def __enter__(self) -> Transfer: ...
    def __exit__(
        self,
        t: type[BaseException] | None,
        v: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def cli(argv: Sequence[str]) -> int:
    """Runs the tcpx command line (probe, bench, stream, ...) with argv (no program name);
    returns its exit code."""

def _thread_allocations() -> int:
    """Rust heap allocations made so far on the calling thread (for tests)."""

__all__ = [
    "Config",
    "Direction",
    "Listener",
    "Registration",
    "Session",
    "Transfer",
    "cli",
    "_thread_allocations",
]
