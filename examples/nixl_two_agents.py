#!/usr/bin/env python3
"""Two NIXL agents in two processes moving DRAM through the TCPX backend.

    cargo build --release -p tcpx-nixl
    mkdir -p target/plugins && cp target/release/libplugin_TCPX.so target/plugins/
    py=$(scripts/nixl-venv.sh)
    TCPX_PLUGIN_DIR=$PWD/target/plugins $py examples/nixl_two_agents.py

NIXL_PLUGIN_DIR (or TCPX_PLUGIN_DIR, which this script copies into it) must name the folder
holding libplugin_TCPX.so. The target runs in a child process (multiprocessing "spawn"); the
two agents exchange metadata through NIXL's listener threads, then the initiator WRITEs,
READs and sends a notification alone, and every byte is checked.
"""

import multiprocessing as mp
import os
import pathlib
import socket
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault(
    "NIXL_PLUGIN_DIR", os.environ.get("TCPX_PLUGIN_DIR", str(REPO / "target" / "plugins"))
)
os.environ.setdefault("TCPX_SOCK_IFNAME", "lo")  # keep the data on loopback for the demo

N = 8 << 20  # bytes per buffer
BOUND_S = 60  # every wait below gives up after this


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_agent(name, port):
    from nixl_cu12 import nixl_agent, nixl_agent_config

    # backends=[] + create_backend: the Python API's only way to pass backend options.
    # enable_listen_thread starts NIXL's metadata listener on listen_port.
    agent = nixl_agent(
        name, nixl_agent_config(enable_listen_thread=True, listen_port=port, backends=[])
    )
    agent.create_backend("TCPX", {"channels": "2", "timeout_ms": "5000"})
    # NIXL skips backends it has no plugin for without an error: check it is really there.
    assert "TCPX" in agent.backends, "libplugin_TCPX.so not found in NIXL_PLUGIN_DIR"
    return agent


def wait(cond, what):
    deadline = time.monotonic() + BOUND_S
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.001)


def target(port, pipe):
    """The passive side: registers a buffer, tells the initiator where it is, then only
    watches for notifications (NIXL transfers are one-sided)."""
    import numpy as np

    agent = make_agent("target", port)
    buf = np.arange(N, dtype=np.uint32).astype(np.uint8)  # known bytes for the READ
    reg = agent.register_memory([(buf.ctypes.data, N, 0, "")], "DRAM")
    pipe.send(buf.ctypes.data)  # the address is application data; NIXL does not ship it

    notifs = []
    wait(lambda: notifs.extend(agent.get_new_notifs().get("initiator", [])) or len(notifs) >= 3,
         "notifications")
    pipe.send([bytes(m) for m in notifs])
    pipe.send(bytes(buf[: N // 2]))  # what the WRITE put there, for the initiator to check
    pipe.recv()  # wait until the initiator is done before tearing down
    agent.deregister_memory(reg)


def main():
    import numpy as np
    from nixl_cu12 import nixl_agent  # noqa: F401  (fail early if the wheel is missing)

    port = free_port()
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=target, args=(port, there), daemon=True)
    child.start()
    try:
        assert here.poll(BOUND_S), "target did not start"
        far = here.recv()

        agent = make_agent("initiator", free_port())
        local = np.zeros(N, np.uint8)
        local[: N // 2] = 7
        reg = agent.register_memory([(local.ctypes.data, N, 0, "")], "DRAM")

        # Metadata through the listener: ask the target for its metadata (connection info
        # + registrations) and push ours (it needs it only to send us notifications).
        agent.fetch_remote_metadata("target", "127.0.0.1", port)
        wait(lambda: agent.check_remote_metadata("target"), "target metadata")
        agent.send_local_metadata("127.0.0.1", port)

        half = N // 2
        # WRITE local[0:half] -> target[0:half], with a notification delivered after the data.
        h = agent.initialize_xfer(
            "WRITE",
            agent.get_xfer_descs([(local.ctypes.data, half, 0)], "DRAM"),
            agent.get_xfer_descs([(far, half, 0)], "DRAM"),
            "target",
            b"wrote",
        )
        state = agent.transfer(h)  # "DONE", "PROC" or "ERR"
        wait(lambda: agent.check_xfer_state(h) != "PROC", "WRITE")
        assert agent.check_xfer_state(h) == "DONE", state
        agent.release_xfer_handle(h)

        # READ target[half:N] -> local[half:N].
        h = agent.initialize_xfer(
            "READ",
            agent.get_xfer_descs([(local.ctypes.data + half, half, 0)], "DRAM"),
            agent.get_xfer_descs([(far + half, half, 0)], "DRAM"),
            "target",
            b"read",
        )
        state = agent.transfer(h)
        wait(lambda: agent.check_xfer_state(h) != "PROC", "READ")
        assert agent.check_xfer_state(h) == "DONE", state
        agent.release_xfer_handle(h)
        expect = np.arange(N, dtype=np.uint32).astype(np.uint8)[half:]
        assert np.array_equal(local[half:], expect), "READ brought the wrong bytes"

        # A notification on its own.
        agent.send_notif("target", b"bye")

        assert here.poll(BOUND_S), "target saw no notifications"
        notifs = here.recv()
        assert sorted(notifs) == sorted([b"wrote", b"read", b"bye"]), notifs
        assert here.recv() == bytes(local[:half]), "WRITE did not land"
        here.send("done")
        child.join(BOUND_S)
        agent.remove_remote_agent("target")
        agent.deregister_memory(reg)
        print(f"ok: WRITE {half} B, READ {half} B, notifications {notifs}")
    finally:
        if child.is_alive():
            child.kill()
            child.join(BOUND_S)


if __name__ == "__main__":
    main()
