"""Shared helpers of the Python tests: a pair of sessions in this process, a peer process
(peer.py) met over a TCP rendezvous, byte patterns, and the GPU skip rule.

Run through scripts/python-tests.sh (which sets TCPX_SOCK_IFNAME=lo) against the installed
wheel; every wait is bounded.
"""

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import tcpx

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "peer.py")
# Bound on every handshake and wait in these tests (generous: debug builds, a busy box).
TIMEOUT_MS = 60_000
# Bound on a peer process's whole life.
PEER_LIMIT_S = 240

os.environ.setdefault("TCPX_SOCK_IFNAME", "lo")


def pattern(n: int, seed: int) -> np.ndarray:
    """n bytes that differ with the seed and along the buffer (no period of 256)."""
    i = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B9)
    return ((i * np.uint64(2654435761)) >> np.uint64(13)).astype(np.uint8)


def config(**kw) -> tcpx.Config:
    kw.setdefault("timeout_ms", TIMEOUT_MS)
    return tcpx.Config(**kw)


def pair(**kw):
    """Two connected sessions in this process (each handshake half on its own thread)."""
    cfg = config(**kw)
    la, lb = tcpx.Listener(cfg), tcpx.Listener(cfg)
    out = {}

    def other():
        out["b"] = lb.connect(la.conn_info)

    t = threading.Thread(target=other)
    t.start()
    a = la.connect(lb.conn_info)
    t.join(TIMEOUT_MS / 1000)
    assert "b" in out, "the second handshake half did not finish"
    return a, out["b"]


def drive(*transfers, timeout: float = TIMEOUT_MS / 1000):
    """Polls every transfer (one thread drives both sides) until all are done."""
    deadline = time.monotonic() + timeout
    pending = list(transfers)
    while pending:
        pending = [t for t in pending if not t.poll()]
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"transfers not done in {timeout} s: {pending}")


@contextlib.contextmanager
def peer(scenario: str, *args: str, expect_exit: "int | None" = 0, **kw):
    """A peer.py process running `scenario`, connected to the session this yields
    (the rendezvous: this side accepts on an ephemeral loopback port). On exit the session
    is closed and the peer must end with `expect_exit` (None: any)."""
    cfg = config(**kw)
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    env = dict(os.environ)
    env["TCPX_TIMEOUT_MS"] = str(cfg.timeout_ms)
    env["TCPX_CHANNELS"] = str(cfg.channels)
    env["TCPX_CHUNK_BYTES"] = str(cfg.chunk_bytes)
    proc = subprocess.Popen(
        [sys.executable, PEER, scenario, str(port), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        with tcpx.Session.establish(accept=lsock, config=cfg) as s:
            yield s, proc
    except BaseException:
        proc.kill()
        raise
    finally:
        lsock.close()
        try:
            out, _ = proc.communicate(timeout=PEER_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        text = out.decode(errors="replace")
        if text:
            print(f"--- peer {scenario} (exit {proc.returncode}) ---\n{text}")
    if expect_exit is not None:
        assert proc.returncode == expect_exit, f"peer {scenario} exited {proc.returncode}:\n{text}"


def need_gpu():
    """torch with a CUDA device, or a skip (a failure under REQUIRE_GPU=1)."""
    why = None
    try:
        import torch
    except ImportError:
        why = "torch is not installed"
    else:
        if not torch.cuda.is_available():
            why = "no CUDA device (torch.cuda.is_available() is False)"
    if why is None:
        return torch
    if os.environ.get("REQUIRE_GPU") == "1":
        pytest.fail(f"REQUIRE_GPU=1 but {why}")
    print(f"SKIP: {why}")
    pytest.skip(why)
