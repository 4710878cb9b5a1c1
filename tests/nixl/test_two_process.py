"""Two agents in two processes: this one (the initiator) and a peer started from
`nixl_peer.py` (the target), exchanging metadata through NIXL's own listener threads:

    nixl_agent_config(enable_listen_thread=True, listen_port=P, backends=[])
    agent.create_backend("TCPX", {"timeout_ms": "3000"})     # custom backend params
    agent.fetch_remote_metadata(peer_name, "127.0.0.1", peer_port)  # ask the peer for its MD
    agent.send_local_metadata("127.0.0.1", peer_port)                # push ours to the peer
    agent.check_remote_metadata(peer_name)                            # poll until loaded

Covered: WRITE and READ with data checks (1 B, 1 MiB, 256 MiB; 1 and 64 descriptors), a
notification with every transfer and notifications alone in both directions, a peer killed
(SIGKILL) or frozen (SIGSTOP) with a big transfer in flight, and an agent destroyed while
the initiator still holds its metadata, then recreated under the same name.

No timing is asserted: every wait has a generous bound that only turns a hang into a
failure. Peer processes are closed (and killed if need be) by the fixtures.
"""

import base64
import hashlib
import signal
import socket
import time

import numpy as np
import pytest

# test_load settles NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo (inherited by the peers).
from test_load import errors, pattern
from nixl_peer import Peer
import nixl_wheel
from nixl_wheel import listening_agent

BOUND_S = 120
LOCAL = "127.0.0.1"
TIMEOUT_MS = 3000
PARAMS = {"timeout_ms": str(TIMEOUT_MS)}
BIG = 256 << 20
_count = iter(range(1_000_000))


def tcpx_agent(prefix, params=PARAMS):
    """An agent with NIXL's metadata listener and only the TCPX backend, created with custom
    params. The Python API skips unknown backends silently, hence the checks."""
    agent, port = listening_agent(f"{prefix}-{next(_count)}")
    assert "TCPX" in agent.get_plugin_list()
    agent.create_backend("TCPX", params)
    assert "TCPX" in agent.backends
    assert agent.get_backend_params("TCPX")["timeout_ms"] == params.get("timeout_ms", "10000")
    agent.listen_port = port
    return agent


def wait_metadata(agent, peer_name, bound=BOUND_S):
    deadline = time.monotonic() + bound
    while not agent.check_remote_metadata(peer_name):
        assert time.monotonic() < deadline, f"metadata of {peer_name} never arrived"
        time.sleep(0.005)


def connect(agent, peer):
    """Listener-based exchange both ways: fetch the peer's metadata, push ours."""
    agent.fetch_remote_metadata(peer.name, LOCAL, peer.port)
    wait_metadata(agent, peer.name)
    agent.send_local_metadata(LOCAL, peer.port)
    peer.call("wait_md", peer=agent.name)


def sha(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def finish(agent, handle, state, bound=BOUND_S):
    """Polls until the transfer leaves PROC; returns DONE or ERR (an exception from the
    binding counts as ERR). Fails past the bound instead of hanging."""
    deadline = time.monotonic() + bound
    try:
        while state == "PROC":
            assert time.monotonic() < deadline, "transfer stayed in progress past the bound"
            state = agent.check_xfer_state(handle)
            time.sleep(0)
    except (errors.nixlRemoteDisconnectError, errors.nixlBackendError,
            errors.nixlNotFoundError):
        return "ERR"
    return state


def post(agent, handle):
    try:
        return agent.transfer(handle)
    except (errors.nixlRemoteDisconnectError, errors.nixlBackendError,
            errors.nixlNotFoundError):
        return "ERR"


class Local:
    """A registered numpy array of the initiator."""

    def __init__(self, agent, array):
        self.agent, self.array = agent, array
        self.handle = agent.register_memory([(array.ctypes.data, array.nbytes, 0, "")], "DRAM")

    def descs(self, ranges):
        base = self.array.ctypes.data
        return self.agent.get_xfer_descs([(base + o, n, 0) for o, n in ranges], "DRAM")

    def release(self):
        self.agent.deregister_memory(self.handle)


def remote_descs(agent, buf, ranges):
    return agent.get_xfer_descs([(buf["addr"] + o, n, 0) for o, n in ranges], "DRAM")


def ranges(size, ndesc):
    step = size // ndesc
    return [(i * step, step if i < ndesc - 1 else size - i * step) for i in range(ndesc)]


def hex_notifs(d):
    return {k: [bytes.fromhex(m) for m in v] for k, v in d.items()}


def test_listener_port_taken_before_nixl_binds_it(monkeypatch):
    """The port chosen for NIXL's metadata listener is taken by another socket before NIXL
    binds it: agent creation fails there, so listening_agent takes another port, and peers
    reach the agent on the port it returns."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        chosen = []
        real = nixl_wheel.free_port

        def first_busy():
            chosen.append(busy if not chosen else real())
            return chosen[-1]

        monkeypatch.setattr(nixl_wheel, "free_port", first_busy)
        agent = tcpx_agent("tp-taken")
    assert len(chosen) == 2 and chosen[0] == busy, chosen
    assert agent.listen_port == chosen[1] != busy
    monkeypatch.undo()
    other = tcpx_agent("tp-asker")
    other.fetch_remote_metadata(agent.name, LOCAL, agent.listen_port)
    wait_metadata(other, agent.name)


# One initiator and one peer for the data tests: the peer registers its buffer before the
# initiator fetches its metadata (NIXL ships the registrations it has at that moment).
@pytest.fixture(scope="module")
def link():
    peer = Peer(f"tp-target-{next(_count)}", PARAMS)
    try:
        far = peer.call("register", size=BIG + 64, seed=None)
        agent = tcpx_agent("tp-init")
        local = Local(agent, np.zeros(BIG, np.uint8))
        connect(agent, peer)
        yield agent, peer, far, local
        try:
            agent.remove_remote_agent(peer.name)
        except errors.nixlNotFoundError:
            pass
        local.release()
    finally:
        peer.close()


def test_peer_metadata_arrived_through_the_listener(link):
    agent, peer, far, _ = link
    assert peer.ready["params"]["timeout_ms"] == str(TIMEOUT_MS)
    assert agent.check_remote_metadata(peer.name)
    assert agent.check_remote_metadata(peer.name, remote_descs(agent, far, [(0, BIG + 64)]))


@pytest.mark.parametrize("ndesc", [1, 64])
@pytest.mark.parametrize("size", [1, 1 << 20, BIG], ids=["1B", "1MiB", "256MiB"])
@pytest.mark.parametrize("op", ["WRITE", "READ"])
def test_transfer_between_processes(link, op, size, ndesc):
    if size < ndesc:
        pytest.skip("fewer bytes than descriptors")
    agent, peer, far, local = link
    seed = next(_count) % 200
    lr = ranges(size, ndesc)
    rr = [(o + i, n) for i, (o, n) in enumerate(lr)]  # one-byte gaps on the far side
    span = rr[-1][0] + rr[-1][1] + 1
    if op == "WRITE":
        local.array[:size] = pattern(size, seed)
        peer.call("fill", id=far["id"], seed=None)
        expect = np.zeros(span, np.uint8)
        for (lo, n), (ro, _) in zip(lr, rr):
            expect[ro : ro + n] = local.array[lo : lo + n]
    else:
        local.array[:size] = 0
        peer.call("fill", id=far["id"], seed=seed)
        source = pattern(BIG + 64, seed)
        expect = np.concatenate([source[ro : ro + n] for ro, n in rr])
    msg = f"{op}-{size}-{ndesc}".encode()
    h = agent.initialize_xfer(
        op, local.descs(lr), remote_descs(agent, far, rr), peer.name, msg
    )
    assert finish(agent, h, agent.transfer(h)) == "DONE"
    if op == "WRITE":
        # Gaps between the far pieces stay zero: only the described bytes moved.
        assert peer.call("digest", id=far["id"], len=span)["sha256"] == sha(expect)
    else:
        assert np.array_equal(local.array[:size], expect)
    got = peer.call("notifs", count=1, bound=BOUND_S)["notifs"]
    assert hex_notifs(got) == {agent.name: [msg]}
    agent.release_xfer_handle(h)


def test_notifications_alone_both_ways(link):
    agent, peer, _, _ = link
    for m in (b"ping", b"pong", b""):
        agent.send_notif(peer.name, m)
    got = peer.call("notifs", count=3, bound=BOUND_S)["notifs"]
    assert hex_notifs(got) == {agent.name: [b"ping", b"pong", b""]}
    peer.call("send_notif", to=agent.name, msg=b"back".hex())
    deadline = time.monotonic() + BOUND_S
    got = {}
    while not got:
        assert time.monotonic() < deadline, "notification from the peer never arrived"
        got = agent.get_new_notifs()
        time.sleep(0.001)
    assert got == {peer.name: [b"back"]}


def test_repost_between_processes(link):
    agent, peer, far, local = link
    n = 1 << 20
    h = agent.initialize_xfer(
        "WRITE", local.descs([(0, n)]), remote_descs(agent, far, [(0, n)]), peer.name, b"r"
    )
    for seed in (3, 4, 5):
        local.array[:n] = pattern(n, seed)
        assert finish(agent, h, agent.transfer(h)) == "DONE"
        assert peer.call("digest", id=far["id"], len=n)["sha256"] == sha(local.array[:n])
    got = peer.call("notifs", count=3, bound=BOUND_S)["notifs"]
    assert hex_notifs(got) == {agent.name: [b"r"] * 3}
    agent.release_xfer_handle(h)


def test_connection_under_tcpx_full_accept_delay():
    """GPUDirect-TCPX's accept completes at least 5 s after the connection (flow steering).
    With the peer's tcpxsock delaying its accepts that long (TCPX_SOCK_ACCEPT_DELAY_MS=5000),
    the first WRITE, which opens the connection, succeeds under the default timeout_ms
    (10 s) at both ends. The time is printed, not asserted."""
    peer = Peer(f"tp-slow-{next(_count)}", {}, env={"TCPX_SOCK_ACCEPT_DELAY_MS": "5000"})
    local = None
    try:
        assert peer.ready["params"]["timeout_ms"] == "10000"
        n = 1 << 20
        far = peer.call("register", size=n, seed=None)
        agent = tcpx_agent("tp-patient", params={})
        local = Local(agent, pattern(n, 5))
        connect(agent, peer)
        h = agent.initialize_xfer(
            "WRITE", local.descs([(0, n)]), remote_descs(agent, far, [(0, n)]), peer.name,
            b"slow"
        )
        start = time.monotonic()
        assert finish(agent, h, post(agent, h)) == "DONE"
        print(f"first WRITE over a 5 s accept delay: {time.monotonic() - start:.2f} s")
        assert peer.call("digest", id=far["id"])["sha256"] == sha(local.array)
        got = peer.call("notifs", count=1, bound=BOUND_S)["notifs"]
        assert hex_notifs(got) == {agent.name: [b"slow"]}
        agent.release_xfer_handle(h)
    finally:
        peer.close()
        if local is not None:
            local.release()


# ------------------------------------------------------------------ peers that go away


@pytest.fixture
def lone_peer():
    """A fresh peer with one big buffer, and an initiator that knows it (torn down after)."""
    peer = Peer(f"tp-victim-{next(_count)}", PARAMS)
    agent = local = None
    try:
        far = peer.call("register", size=BIG, seed=None)
        agent = tcpx_agent("tp-survivor")
        local = Local(agent, pattern(BIG, 9))
        connect(agent, peer)
        yield agent, peer, far, local
    finally:
        peer.close()
        if local is not None:
            local.release()


@pytest.mark.parametrize("op", ["WRITE", "READ"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_peer_dies_mid_transfer(lone_peer, op, sig):
    """SIGKILL: the kernel closes the peer's sockets, the transfer fails on EOF. SIGSTOP: the
    sockets stay open and silent, so only `timeout_ms` (3 s here) ends the transfer. Either
    way check_xfer_state leaves PROC with ERR (or the binding raises) and nothing hangs."""
    agent, peer, far, local = lone_peer
    # Several big transfers back to back so one is surely in flight when the signal lands.
    handles, states = [], []
    for _ in range(4):
        h = agent.initialize_xfer(
            op, local.descs([(0, BIG)]), remote_descs(agent, far, [(0, BIG)]), peer.name, b"x"
        )
        handles.append(h)
        states.append(post(agent, h))
    peer.kill(sig)
    results = [finish(agent, h, s) for h, s in zip(handles, states)]
    assert "ERR" in results, f"no transfer failed after the peer died: {results}"
    # Once one failed, a new transfer to that peer fails too (never hangs), as a disconnect:
    # reconnecting to a dead peer is refused, to a frozen one times out in the handshake.
    if agent.check_remote_metadata(peer.name):  # NIXL may have dropped the peer already
        h = agent.initialize_xfer(
            op, local.descs([(0, 4096)]), remote_descs(agent, far, [(0, 4096)]), peer.name
        )
        handles.append(h)
        deadline = time.monotonic() + BOUND_S
        try:
            state = agent.transfer(h)
            while state == "PROC":
                assert time.monotonic() < deadline, "transfer to a dead peer hung"
                state = agent.check_xfer_state(h)
        except errors.nixlRemoteDisconnectError:
            state = "REMOTE_DISCONNECT"
        assert state == "REMOTE_DISCONNECT"
    for h in handles:
        agent.release_xfer_handle(h)
    peer.kill(signal.SIGKILL)


def test_agent_destroyed_then_recreated_under_the_same_name(lone_peer):
    agent, peer, far, local = lone_peer
    n = 1 << 20
    h = agent.initialize_xfer(
        "WRITE", local.descs([(0, n)]), remote_descs(agent, far, [(0, n)]), peer.name, b"1"
    )
    assert finish(agent, h, agent.transfer(h)) == "DONE"
    assert peer.call("digest", id=far["id"], len=n)["sha256"] == sha(local.array[:n])

    # The peer's agent goes away while we still hold its metadata: the next transfer (a
    # repost of the same handle) fails cleanly instead of hanging.
    peer.call("destroy")
    assert finish(agent, h, post(agent, h)) == "ERR"
    agent.release_xfer_handle(h)

    # The same name comes back (a new agent in the peer process, new registration). Drop the
    # stale metadata (the agent may have dropped it already on REMOTE_DISCONNECT) and load
    # the new one.
    peer.port = peer.call("create")["port"]
    far2 = peer.call("register", size=n, seed=None)
    md = base64.b64decode(peer.call("metadata")["md"])
    try:
        agent.remove_remote_agent(peer.name)
    except errors.nixlNotFoundError:
        pass
    assert agent.add_remote_agent(md) == peer.name.encode()
    local.array[:n] = pattern(n, 77)
    h = agent.initialize_xfer(
        "WRITE", local.descs([(0, n)]), remote_descs(agent, far2, [(0, n)]), peer.name, b"2"
    )
    assert finish(agent, h, agent.transfer(h)) == "DONE"
    assert peer.call("digest", id=far2["id"], len=n)["sha256"] == sha(local.array[:n])
    assert hex_notifs(peer.call("notifs", count=1)["notifs"]) == {agent.name: [b"2"]}
    agent.release_xfer_handle(h)
    agent.remove_remote_agent(peer.name)


def test_restarted_process_is_fetched_again_through_the_listener(lone_peer):
    agent, peer, far, local = lone_peer
    name = peer.name
    peer.kill(signal.SIGKILL)
    peer.proc.wait(timeout=BOUND_S)
    try:
        agent.remove_remote_agent(name)
    except errors.nixlNotFoundError:
        pass
    assert not agent.check_remote_metadata(name)
    again = Peer(name, PARAMS)
    try:
        far2 = again.call("register", size=4096, seed=None)
        connect(agent, again)
        h = agent.initialize_xfer(
            "WRITE", local.descs([(0, 4096)]), remote_descs(agent, far2, [(0, 4096)]), name,
            b"hi",
        )
        assert finish(agent, h, agent.transfer(h)) == "DONE"
        assert again.call("digest", id=far2["id"])["sha256"] == sha(local.array[:4096])
        assert hex_notifs(again.call("notifs", count=1)["notifs"]) == {agent.name: [b"hi"]}
        agent.release_xfer_handle(h)
        agent.remove_remote_agent(name)
    finally:
        again.close()
