"""The TCPX backend plugin loaded by the real NIXL wheel (nixl-cu12 or nixl-cu13 1.5.1,
imported directly or through the `nixl` meta package) and driven from Python: plugin
discovery, options, creation errors, DRAM registration, transfers an agent makes to itself
(WRITE, READ, repost, several descriptors) with notifications, argument errors, and metadata
exchange between two agents.

Run with the venv from scripts/nixl-venv.sh after building the plugin:
    cargo build -p tcpx-nixl -p tcpx-sock && scripts/collect-plugins.sh debug
    .venv/bin/python -m pytest tests/nixl
or with the plugin installed into the wheel (no NIXL_PLUGIN_DIR), as CI's TCPX-mode run does:
    target/debug/tcpx nixl install --python PY && PY -m pytest tests/nixl
nixl_wheel.py says which NIXL is imported (TCPX_NIXL_MODULE) and where the plugin is found
(NIXL_PLUGIN_DIR, TCPX_PLUGIN_DIR, the wheel's own folder, <repo>/target/plugins).
"""

import filecmp
import itertools
import os
import shutil
import subprocess
import time

import pytest

# Settles which NIXL and which plugin folder before any agent exists (libnixl reads
# NIXL_PLUGIN_DIR when the first agent is created).
from nixl_wheel import BUILT_DIR, INSTALLED, PLUGIN, PLUGIN_DIR, errors  # noqa: F401
from nixl_wheel import nixl_agent, nixl_agent_config

# Transfers between agents run over the embedded tcpxsock; keep them on loopback (read when
# the first data session opens).
os.environ.setdefault("TCPX_SOCK_IFNAME", "lo")

import numpy as np  # noqa: E402
from cuda_mem import gpu_reason  # noqa: E402

DEFAULT_OPTIONS = {
    "channels": "2",
    "chunk_bytes": "524288",
    "split_chunks": "auto",
    "window": "16",
    "plugin_path": "",
    "devices": "auto",
    "listen_addr": "",
    "timeout_ms": "10000",
    "notif_queue_bytes": "67108864",
    "max_notif_bytes": "1048576",
    "inline_read_bytes": "16384",
    "inline_write_bytes": "16384",
    "gpu": "",
}

# Bounds polling by count, not time: a transfer to ourselves completes inside postXfer.
MAX_POLLS = 1000

_names = itertools.count()


def test_plugin_file_is_present():
    assert PLUGIN.is_file(), f"build the plugin into {PLUGIN_DIR}"


@pytest.mark.skipif(not INSTALLED, reason="the plugin comes from NIXL_PLUGIN_DIR")
def test_installed_plugin_is_the_built_one():
    """Installed into the wheel's folder: the copy there must be the plugin the build made, or
    the suite would test an older one (`tcpx nixl install` again after building)."""
    built = BUILT_DIR / PLUGIN.name
    if not built.is_file():
        pytest.skip(f"no built plugin in {BUILT_DIR} to compare with")
    assert filecmp.cmp(PLUGIN, built, shallow=False), (
        f"{PLUGIN} differs from {built}: run tcpx nixl install again")


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils nm")
def test_plugin_links_no_nixl_symbol_and_exports_the_entry_points():
    so = str(PLUGIN)
    undefined = subprocess.run(
        ["nm", "-D", "-C", "--undefined-only", so], check=True, capture_output=True, text=True
    ).stdout
    # libnixl loads plugins RTLD_LOCAL: any undefined NIXL symbol makes the load fail.
    assert [line for line in undefined.splitlines() if "nixl" in line.lower()] == []
    defined = subprocess.run(
        ["nm", "-D", "--defined-only", so], check=True, capture_output=True, text=True
    ).stdout.split()
    assert "nixl_plugin_init" in defined
    assert "nixl_plugin_fini" in defined


def make_agent(prefix="agent", params=None):
    """An agent with only the TCPX backend, which must really exist: the Python API silently
    skips backend names it has no plugin for. `params`: custom backend options (created with
    create_backend, the only way the Python API passes them)."""
    name = f"{prefix}-{next(_names)}"
    if params is None:
        agent = nixl_agent(name, nixl_agent_config(backends=["TCPX"]))
    else:
        agent = nixl_agent(name, nixl_agent_config(backends=[]))
        agent.create_backend("TCPX", params)
    assert "TCPX" in agent.get_plugin_list()
    assert "TCPX" in agent.backends, "TCPX plugin found but no TCPX backend was created"
    return agent


def wait_done(agent, handle, state):
    for _ in range(MAX_POLLS):
        if state != "PROC":
            break
        state = agent.check_xfer_state(handle)
    assert state == "DONE"


def pattern(n, seed):
    return ((np.arange(n, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)


class Registered:
    """One DRAM registration of a numpy array, released at the end of the test."""

    def __init__(self, agent, array):
        self.agent = agent
        self.array = array
        self.addr = array.ctypes.data
        self.handle = agent.register_memory([(self.addr, array.nbytes, 0, "")], "DRAM")

    def descs(self, *ranges):
        """Transfer descriptors for (offset, length) ranges of this array."""
        return self.agent.get_xfer_descs([(self.addr + o, n, 0) for o, n in ranges], "DRAM")

    def release(self):
        self.agent.deregister_memory(self.handle)


def test_backend_exists_with_dram_and_default_options():
    agent = make_agent()
    assert agent.get_plugin_params("TCPX") == DEFAULT_OPTIONS
    # VRAM is offered exactly when a CUDA device is usable.
    mems = ["DRAM_SEG"] + (["VRAM_SEG"] if gpu_reason() is None else [])
    assert agent.get_plugin_mem_types("TCPX") == mems
    assert agent.get_backend_mem_types("TCPX") == mems
    # The instantiated backend reports its effective settings; listen_addr is the bound
    # control listener, gpu the device current when it was created (device 0 here, where a
    # driver exists) unless TCPX_GPU names one.
    params = agent.get_backend_params("TCPX")
    gpu = os.environ.get("TCPX_GPU", "").strip() or ("0" if gpu_reason() is None else "")
    assert params["gpu"] == gpu
    # split_chunks "auto": 8 where the process may run on at least 8 CPUs, else 1.
    split = os.environ.get("TCPX_SPLIT_CHUNKS", "").strip() or ("8" if len(os.sched_getaffinity(0)) >= 8 else "1")
    assert params["split_chunks"] == split
    mine = ("listen_addr", "gpu", "split_chunks")
    assert {k: v for k, v in params.items() if k not in mine} == {
        k: v for k, v in DEFAULT_OPTIONS.items() if k not in mine
    }
    host, _, port = params["listen_addr"].rpartition(":")
    assert host and int(port) > 0


def test_custom_params_are_applied():
    agent = nixl_agent(f"custom-{next(_names)}", nixl_agent_config(backends=[]))
    agent.create_backend(
        "TCPX", {"channels": "4", "window": "8", "listen_addr": "127.0.0.1:0"}
    )
    params = agent.get_backend_params("TCPX")
    assert params["channels"] == "4"
    assert params["window"] == "8"


@pytest.mark.parametrize(
    "params",
    [
        {"channels": "0"},
        {"channels": "17"},
        {"window": "many"},
        {"chunk_bytes": "1"},
        {"timeout_ms": "0"},
        {"notif_queue_bytes": "4096"},
        {"notif_queue_bytes": "65536"},  # cannot hold one notification of max_notif_bytes
        {"max_notif_bytes": "16777217"},
        {"devices": "nics"},
        {"inline_read_bytes": "32769"},
        {"listen_addr": "not-an-address"},
        {"plugin_path": "/nonexistent/libnccl-net.so"},
        {"gpu": "-1"},
        {"gpu": "4096"},
        {"chanels": "2"},
    ],
)
def test_bad_params_fail_backend_creation(params):
    agent = nixl_agent(f"bad-{next(_names)}", nixl_agent_config(backends=[]))
    with pytest.raises(errors.nixlBackendError):
        agent.create_backend("TCPX", params)
    assert "TCPX" not in agent.backends


def test_local_write_then_read_with_notifications():
    agent = make_agent("local")
    n = 1 << 20
    src = Registered(agent, pattern(n, 1))
    dst = Registered(agent, np.zeros(n, dtype=np.uint8))

    h = agent.initialize_xfer("WRITE", src.descs((0, n)), dst.descs((0, n)), agent.name, b"w1")
    wait_done(agent, h, agent.transfer(h))
    assert np.array_equal(dst.array, src.array)
    assert agent.get_new_notifs() == {agent.name: [b"w1"]}

    # Reposting the same handle moves the bytes again (the agent allows it once DONE) and
    # delivers its notification again.
    src.array[:] = pattern(n, 2)
    wait_done(agent, h, agent.transfer(h))
    assert np.array_equal(dst.array, src.array)
    assert agent.get_new_notifs() == {agent.name: [b"w1"]}
    agent.release_xfer_handle(h)

    # READ pulls from the target side into the local side.
    dst.array[4096:8192] = 0xA5
    h = agent.initialize_xfer(
        "READ", src.descs((0, 4096)), dst.descs((4096, 4096)), agent.name, b"r1"
    )
    wait_done(agent, h, agent.transfer(h))
    assert np.all(src.array[:4096] == 0xA5)
    assert np.array_equal(src.array[4096:], pattern(n, 2)[4096:]), "bytes outside moved"
    assert agent.get_new_notifs() == {agent.name: [b"r1"]}
    agent.release_xfer_handle(h)

    src.release()
    dst.release()


def test_local_transfer_with_several_descriptors():
    agent = make_agent("multi")
    src = Registered(agent, pattern(64 * 1024, 3))
    dst = Registered(agent, np.zeros(64 * 1024, dtype=np.uint8))
    pairs = [((0, 100), (50_000, 100)), ((1000, 4096), (0, 4096)), ((60_000, 7), (9_999, 7))]
    h = agent.initialize_xfer(
        "WRITE",
        src.descs(*[p[0] for p in pairs]),
        dst.descs(*[p[1] for p in pairs]),
        agent.name,
    )
    wait_done(agent, h, agent.transfer(h))
    expect = np.zeros_like(dst.array)
    for (so, n), (do, _) in pairs:
        expect[do : do + n] = src.array[so : so + n]
    assert np.array_equal(dst.array, expect)
    assert agent.get_new_notifs() == {}
    agent.release_xfer_handle(h)
    src.release()
    dst.release()


def test_standalone_notification_to_self():
    agent = make_agent("notif")
    agent.send_notif(agent.name, b"ping")
    agent.send_notif(agent.name, b"pong")
    assert agent.get_new_notifs() == {agent.name: [b"ping", b"pong"]}
    assert agent.get_new_notifs() == {}


def test_bad_transfer_arguments_are_rejected():
    agent = make_agent("args")
    buf = Registered(agent, np.full(16 * 1024, 9, dtype=np.uint8))
    me = agent.name

    # Reaching past the end of the registration.
    with pytest.raises(errors.nixlNotFoundError):
        agent.initialize_xfer("WRITE", buf.descs((0, 4096)), buf.descs((15 * 1024, 4096)), me)
    # Unequal descriptor counts.
    with pytest.raises(errors.nixlInvalidParamError):
        agent.initialize_xfer("WRITE", buf.descs((0, 64), (64, 64)), buf.descs((4096, 128)), me)
    # A notification longer than the agent takes (max_notif_bytes, 1 MiB by default).
    with pytest.raises(errors.nixlInvalidParamError):
        agent.initialize_xfer(
            "WRITE", buf.descs((0, 64)), buf.descs((4096, 64)), me, b"x" * ((1 << 20) + 1)
        )
    # An agent nobody loaded.
    with pytest.raises(errors.nixlNotFoundError):
        agent.initialize_xfer("WRITE", buf.descs((0, 64)), buf.descs((4096, 64)), "nobody")
    with pytest.raises(errors.nixlNotFoundError):
        agent.send_notif("nobody", b"hello")

    assert np.all(buf.array == 9), "a rejected transfer moved bytes"
    assert agent.get_new_notifs() == {}
    buf.release()


def test_metadata_exchange_between_agents():
    a = make_agent("meta-a")
    b = make_agent("meta-b")
    buf_b = Registered(b, np.zeros(8192, dtype=np.uint8))

    # Exercises getConnInfo/getPublicData on b and loadRemoteConnInfo/loadRemoteMD on a.
    assert a.add_remote_agent(b.get_agent_metadata()) == b.name.encode()
    assert a.check_remote_metadata(b.name)
    assert a.check_remote_metadata(b.name, buf_b.descs((0, 8192)))

    # unloadMD + disconnect, then a fresh load of the same peer.
    a.remove_remote_agent(b.name)
    assert not a.check_remote_metadata(b.name)
    assert a.add_remote_agent(b.get_agent_metadata()) == b.name.encode()
    assert a.check_remote_metadata(b.name)
    a.remove_remote_agent(b.name)
    buf_b.release()


def wait_remote(agent, handle, state, seconds=60):
    """Polls a transfer to another agent until it leaves PROC; fails (never hangs) past the
    bound."""
    deadline = time.monotonic() + seconds
    while state == "PROC":
        assert time.monotonic() < deadline, "transfer did not complete in time"
        state = agent.check_xfer_state(handle)
    assert state == "DONE"


def test_write_to_another_agent():
    a = make_agent("xfer-a")
    b = make_agent("xfer-b")
    src = Registered(a, pattern(8192, 5))
    dst = Registered(b, np.zeros(8192, dtype=np.uint8))
    a.add_remote_agent(b.get_agent_metadata())
    try:
        h = a.initialize_xfer("WRITE", src.descs((0, 8192)), dst.descs((0, 8192)), b.name, b"hi")
        wait_remote(a, h, a.transfer(h))
        assert np.array_equal(dst.array, src.array)
        assert b.get_new_notifs() == {a.name: [b"hi"]}
        a.release_xfer_handle(h)
    finally:
        a.remove_remote_agent(b.name)
        src.release()
        dst.release()
