"""What NIXL users do with UCX, done with TCPX: two agents in two processes (`nixl_peer.py`),
driven through the real NIXL Python API, each test also run with NIXL's UCX backend
(UCX_TLS=tcp) where it shows the behaviour users expect (skipped when the wheel has no UCX).

One test per item of the work on real KV-cache workloads:
0. every backend option from the environment (vLLM and SGLang pass none), a parameter
   overriding its variable;
1. thousands of descriptors in one transfer (initialize_xfer and vLLM's prepped lists), one
   notification after every byte;
2. a 3 GiB region (its last MiB, a MiB across 2^31, one 2.25 GiB descriptor) byte for byte,
   and a refused request failing alone while a healthy transfer on the same connection
   completes;
3. notifications up to 1 MiB (more when the target allows it), intact, in order, after their
   data;
4. the same range registered twice: metadata loads, deregistering one keeps the other;
5. a full notification queue holds WRITEs back (past the initiator's timeout_ms) instead of
   failing them, nothing lost;
7. plugin_path checked at creation, zero-length registrations, estimate_xfer_cost.
(6, the registration cost, is measured by nixl/bench/registration.py, not tested.)

No timing is asserted; every wait is bounded.
"""

import hashlib
import itertools
import os
import pathlib
import time

import pytest

# test_load settles NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo (inherited by the peers).
from test_load import BUILT_DIR, errors, make_agent
from nixl_peer import Peer, PeerError, link, ucx_env, ucx_reason

BOUND_S = 180
# tcpxsock as an ncclNet plugin of its own (plugin_path), from the build.
SOCK_PLUGIN = BUILT_DIR / "libnccl-net-tcpxsock.so"
PARAMS = {"timeout_ms": "10000"}
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
_count = itertools.count()

def _ucx_skip():
    if ucx_reason() is not None:
        return ucx_reason()
    # The UCX side does not depend on tcpxsock's mode: the suite's second run (TCPX mode)
    # leaves it out.
    if os.environ.get("TCPX_SOCK_UNPACK", "").strip() not in ("", "0"):
        return "UCX runs once, outside TCPX mode"
    return None


BACKENDS = [
    "TCPX",
    pytest.param("UCX", marks=pytest.mark.skipif(_ucx_skip() is not None,
                                                 reason=str(_ucx_skip()))),
]


def peer(backend, role, params=None, env=None, **kw):
    """A peer process running `backend`; TCPX gets `params` (default: PARAMS), UCX none."""
    name = f"par-{role}-{backend.lower()}-{next(_count)}"
    if backend == "UCX":
        return Peer(name, {}, env={**ucx_env(), **(env or {})}, backend="UCX")
    return Peer(name, PARAMS if params is None else params, env=env, **kw)


class Pair:
    """An initiator and a target peer, started (both or neither) and closed together."""

    def __init__(self, backend, init=None, target=None, init_env=None, target_env=None):
        self.backend = backend
        self.target = peer(backend, "target", target, target_env)
        try:
            self.init = peer(backend, "init", init, init_env)
        except BaseException:
            self.target.close()
            raise

    def __enter__(self):
        return self.init, self.target

    def __exit__(self, *exc):
        self.init.close()
        self.target.close()


def xfer(init, target, op, local, far, lr, rr, notif=b"", **kw):
    """A transfer from `init` (buffer `local`) to/from `target` (buffer `far`)."""
    return init.call(
        "xfer", op=op, local=local["id"], local_ranges=lr, remote_addr=far["addr"],
        remote_ranges=rr, peer=target.name, notif=notif.hex(), bound=BOUND_S, **kw,
    )


def check_note(bid, off, n, seed, size):
    """A notification that makes the target check [off, off+n) of buffer `bid` for the
    pattern of `seed` the moment it takes it (nixl_peer's notifs_checked), `size` bytes."""
    head = f"CHECK {bid} {off} {n} {seed};".encode()
    assert size >= len(head)
    return head + bytes((i * 29 + seed) % 256 for i in range(size - len(head)))


# --------------------------------------------------------------------- 0: the environment


def test_every_option_comes_from_the_environment_and_a_parameter_overrides_it():
    """An agent created with nixl_agent_config(backends=["TCPX"]) and no parameters, the way
    vLLM creates its agents, configured by TCPX_* alone; another whose parameters override
    its variables; both move data (channels and chunk size agree through the environment)."""
    env = {
        "TCPX_PLUGIN": str(SOCK_PLUGIN),
        "TCPX_CHANNELS": "4",
        "TCPX_CHUNK_BYTES": "1048576",
        "TCPX_WINDOW": "8",
        "TCPX_TIMEOUT_MS": "7000",
        "TCPX_DEVICES": "0",
        "TCPX_NIXL_LISTEN_ADDR": "127.0.0.1",
        "TCPX_NIXL_NOTIF_QUEUE_BYTES": "16777216",
        "TCPX_NIXL_MAX_NOTIF_BYTES": "2097152",
        "TCPX_NIXL_INLINE_READ_BYTES": "0",
        "TCPX_NIXL_INLINE_WRITE_BYTES": "512",
    }
    with Peer(f"env-target-{next(_count)}", env=env, no_params=True) as target:
        p = target.ready["params"]
        assert (p["plugin_path"], p["channels"], p["chunk_bytes"], p["window"]) == (
            str(SOCK_PLUGIN), "4", "1048576", "8")
        assert (p["timeout_ms"], p["devices"], p["notif_queue_bytes"]) == (
            "7000", "0", "16777216")
        assert (p["max_notif_bytes"], p["inline_read_bytes"], p["inline_write_bytes"]) == (
            "2097152", "0", "512")
        assert p["listen_addr"].startswith("127.0.0.1:")
        # Parameters win over their variables (channels 3 from the environment, 4 asked).
        init = Peer(f"env-init-{next(_count)}", {"channels": "4", "chunk_bytes": "1048576"},
                    env={"TCPX_CHANNELS": "3", "TCPX_WINDOW": "4"})
        with init:
            assert init.ready["params"]["channels"] == "4"
            assert init.ready["params"]["window"] == "4", "a variable no parameter names"
            far = target.call("register", size=8 * MiB, seed=None)
            local = init.call("register", size=8 * MiB, seed=None)
            init.call("fill", id=local["id"], off=0, len=8 * MiB, seed=3)
            link(init, target)
            note = check_note(far["id"], 0, 8 * MiB, 3, 2 * MiB)  # above the 1 MiB default
            r = xfer(init, target, "WRITE", local, far, [(0, 8 * MiB)], [(0, 8 * MiB)], note)
            assert r["state"] == "DONE", r
            (got,) = target.call("notifs_checked", count=1, bound=BOUND_S)["notifs"]
            assert got[1:] == [len(note), hashlib.sha256(note).hexdigest(), True]
    # A bad variable fails creation, naming it (the log says which).
    with pytest.raises(PeerError):
        Peer(f"env-bad-{next(_count)}", env={"TCPX_CHANNELS": "many"}, no_params=True)


# ------------------------------------------------------------- 1: thousands of descriptors


@pytest.mark.parametrize("op,mode", [("WRITE", "init"), ("READ", "prepped")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_thousands_of_descriptors_in_one_transfer(backend, op, mode):
    """2,500 descriptors of 512 bytes, no two of them neighbours at both ends (1 KiB apart
    here, 768 bytes apart there: nothing to join), one transfer (initialize_xfer, or vLLM's
    prep_xfer_dlist + make_prepped_xfer), its notification after the last byte; the gaps
    between them untouched."""
    n, size, here, there = 2500, 512, 1024, 768
    lr = [(i * here, size) for i in range(n)]
    rr = [(i * there, size) for i in range(n)]
    with Pair(backend) as (init, target):
        far = target.call("register", size=n * there, seed=None)
        local = init.call("register", size=n * here, seed=None)
        src, dst = (init, local), (target, far)
        if op == "READ":
            src, dst = dst, src
        src[0].call("fill", id=src[1]["id"], off=0, len=src[1]["len"], seed=11)
        dst[0].call("fill", id=dst[1]["id"], off=0, len=dst[1]["len"], seed=12)
        link(init, target)
        sr, dr = (lr, rr) if op == "WRITE" else (rr, lr)
        stride = there if op == "WRITE" else here
        # A WRITE's notification makes the target digest the pieces the moment it sees it.
        note = f"GATHER {far['id']} 0 {there} {size} {n};".encode() if op == "WRITE" else b"r"
        r = xfer(init, target, op, local, far, lr, rr, note, mode=mode)
        assert r["state"] == "DONE", r
        want = src[0].call("gather_digest", id=src[1]["id"], ranges=sr)["sha256"]
        got = dst[0].call("gather_digest", id=dst[1]["id"], ranges=dr)["sha256"]
        assert got == want, "the pieces differ"
        gaps = [(i * stride + size, stride - size) for i in range(n)]
        assert dst[0].call("check_ranges", id=dst[1]["id"], ranges=gaps, seed=12)["bad"] is None
        (seen,) = target.call("notifs_checked", count=1, bound=BOUND_S)["notifs"]
        assert seen[0] == init.name and seen[1] == len(note)
        if op == "WRITE":
            assert seen[3] == want, "the notification came before the last byte"


# ----------------------------------------------------------------- 2: regions of any size


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_3gib_region_byte_for_byte(backend):
    """A 3 GiB registration at both ends (only the pages checked are ever touched): its last
    MiB written, a MiB across 2^31 read, and one 2.25 GiB descriptor written, every byte
    checked. (UCX, the reference, does the first two only: the third costs its run half a
    minute on a 2-core box and shows nothing more.)"""
    total = 3 * GiB
    with Pair(backend) as (init, target):
        far = target.call("register", size=total, seed=None)
        local = init.call("register", size=total, seed=None)
        link(init, target)
        steps = [
            ("WRITE", total - MiB, MiB, 21),
            ("READ", (1 << 31) - 512 * KiB, MiB, 22),
            ("WRITE", GiB // 2, 9 * GiB // 4, 23),
        ][: 3 if backend == "TCPX" else 2]
        for op, off, n, seed in steps:
            src, dst = (init, local), (target, far)
            if op == "READ":
                src, dst = dst, src
            src[0].call("fill", id=src[1]["id"], off=off, len=n, seed=seed, bound=BOUND_S)
            r = xfer(init, target, op, local, far, [(off, n)], [(off, n)])
            assert r["state"] == "DONE", (op, off, n, r)
            bad = dst[0].call("check", id=dst[1]["id"], off=off, len=n, seed=seed,
                              bound=BOUND_S)["bad"]
            assert bad is None, f"{op} of {n} bytes at {off}: byte {bad} differs"


@pytest.mark.parametrize("op", ["WRITE", "READ"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_request_fails_alone(backend, op):
    """The target deregisters a region the initiator still holds metadata for. A 64 MiB
    WRITE into another region is in flight when a transfer naming the dropped one is posted
    on the same connection: TCPX refuses that one alone (nothing of it written), the healthy
    one completes with every byte, and the connection serves the next transfer. (UCX does
    not check: it may complete the stale one; the healthy one completes all the same.)"""
    big = 64 * MiB
    with Pair(backend) as (init, target):
        a = target.call("register", size=big, seed=None)
        b = target.call("register", size=MiB, seed=None)
        target.call("fill", id=b["id"], off=0, len=MiB, seed=31)
        local = init.call("register", size=big, seed=None)
        other = init.call("register", size=MiB, seed=None)
        init.call("fill", id=local["id"], off=0, len=big, seed=32, bound=BOUND_S)
        link(init, target)
        target.call("deregister", reg=b["reg"])
        healthy = xfer(init, target, "WRITE", local, a, [(0, big)], [(0, big)], b"healthy",
                       wait=False, keep=True)
        assert healthy["state"] in ("PROC", "DONE"), healthy
        stale = xfer(init, target, op, other, b, [(0, MiB)], [(0, MiB)])
        if backend == "TCPX":
            assert stale["state"] == "ERR", stale
            assert "nixlInvalidParamError" in stale.get("why", ""), stale
            # Nothing of a refused WRITE landed (b still holds its pattern).
            assert target.call("check", id=b["id"], off=0, len=MiB, seed=31)["bad"] is None
        else:
            assert stale["state"] in ("DONE", "ERR"), stale
        done = init.call("wait", handle=healthy["handle"], bound=BOUND_S)
        assert done["state"] == "DONE", done
        assert target.call("check", id=a["id"], off=0, len=big, seed=32,
                           bound=BOUND_S)["bad"] is None
        init.call("release", handle=healthy["handle"])
        init.call("fill", id=local["id"], off=0, len=MiB, seed=33)
        after = xfer(init, target, "WRITE", local, a, [(0, MiB)], [(0, MiB)])
        assert after["state"] == "DONE", after
        assert target.call("check", id=a["id"], off=0, len=MiB, seed=33)["bad"] is None


# ------------------------------------------------------------------------ 3: notifications


@pytest.mark.parametrize("backend", BACKENDS)
def test_notifications_up_to_1mib_intact_in_order_after_their_data(backend):
    """WRITEs with notifications of 64 B to 1 MiB, each checked by the target the moment it
    takes it (its WRITE's data must be there), notifications alone between them, a READ's:
    every one arrives once, intact, in the order sent."""
    sizes = [64, 4097, 64 * KiB, MiB]
    with Pair(backend) as (init, target):
        far = target.call("register", size=len(sizes) * MiB, seed=None)
        local = init.call("register", size=len(sizes) * MiB, seed=None)
        link(init, target)
        sent = []
        for i, size in enumerate(sizes):
            off, seed = i * MiB, 40 + i
            init.call("fill", id=local["id"], off=off, len=MiB, seed=seed)
            note = check_note(far["id"], off, MiB, seed, size)
            r = xfer(init, target, "WRITE", local, far, [(off, MiB)], [(off, MiB)], note)
            assert r["state"] == "DONE", r
            alone = bytes([i]) * size
            init.call("send_notif", to=target.name, msg=alone.hex())
            sent += [(note, True), (alone, None)]
        note = b"R" * MiB
        r = xfer(init, target, "READ", local, far, [(0, MiB)], [(0, MiB)], note)
        assert r["state"] == "DONE", r
        sent.append((note, None))
        got = target.call("notifs_checked", count=len(sent), bound=BOUND_S)["notifs"]
        want = [[init.name, len(m), hashlib.sha256(m).hexdigest(), ok] for m, ok in sent]
        assert got == want


def test_notification_bound_is_the_targets_option():
    """TCPX: a notification longer than the target takes (max_notif_bytes, 1 MiB by default)
    fails at the initiator naming the bound, before anything moves; a target configured
    for 4 MiB takes 4 MiB ones, intact."""
    with Pair("TCPX") as (init, target):
        far = target.call("register", size=MiB, seed=None)
        local = init.call("register", size=MiB, seed=None)
        link(init, target)
        r = xfer(init, target, "WRITE", local, far, [(0, 4096)], [(0, 4096)], b"x" * (MiB + 1))
        assert r["state"] == "ERR" and "nixlInvalidParamError" in r["why"], r
        with pytest.raises(PeerError):
            init.call("send_notif", to=target.name, msg=(b"x" * (MiB + 1)).hex())
    with Pair("TCPX", target={**PARAMS, "max_notif_bytes": str(4 * MiB)}) as (init, target):
        far = target.call("register", size=MiB, seed=None)
        local = init.call("register", size=MiB, seed=None)
        link(init, target)
        big = bytes(range(256)) * (4 * MiB // 256)
        r = xfer(init, target, "WRITE", local, far, [(0, 4096)], [(0, 4096)], big)
        assert r["state"] == "DONE", r
        init.call("send_notif", to=target.name, msg=big.hex())
        got = target.call("notifs_checked", count=2, bound=BOUND_S)["notifs"]
        assert [g[2] for g in got] == [hashlib.sha256(big).hexdigest()] * 2


def test_notifications_sent_while_writes_are_in_flight_keep_their_order():
    """TCPX: WRITEs with notifications and notifications alone posted back to back, none
    waited for: the target delivers them in the order they were sent, each WRITE's after its
    data."""
    n = 8
    with Pair("TCPX") as (init, target):
        far = target.call("register", size=n * 4 * MiB, seed=None)
        local = init.call("register", size=n * 4 * MiB, seed=None)
        link(init, target)
        sent, handles = [], []
        for i in range(n):
            off, seed = i * 4 * MiB, 60 + i
            init.call("fill", id=local["id"], off=off, len=4 * MiB, seed=seed)
            note = check_note(far["id"], off, 4 * MiB, seed, 1000 + i)
            r = xfer(init, target, "WRITE", local, far, [(off, 4 * MiB)], [(off, 4 * MiB)],
                     note, wait=False, keep=True)
            handles.append(r["handle"])
            alone = bytes([i]) * (2000 + i)
            init.call("send_notif", to=target.name, msg=alone.hex())
            sent += [(note, True), (alone, None)]
        got = target.call("notifs_checked", count=len(sent), bound=BOUND_S)["notifs"]
        assert got == [[init.name, len(m), hashlib.sha256(m).hexdigest(), ok] for m, ok in sent]
        for h in handles:
            assert init.call("wait", handle=h, bound=BOUND_S)["state"] == "DONE"


# ------------------------------------------------------------ 4: identical re-registrations


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_same_range_registered_twice(backend):
    """The target registers a buffer twice (and a part of it once more): its metadata loads
    at the initiator, transfers land; one of the two identical registrations goes and the
    region still serves, the metadata still loads again."""
    with Pair(backend) as (init, target):
        far = target.call("register", size=MiB, seed=None)
        again = target.call("register_range", id=far["id"], off=0, len=MiB)["reg"]
        target.call("register_range", id=far["id"], off=4096, len=8192)
        local = init.call("register", size=MiB, seed=None)
        link(init, target)
        for i, drop in enumerate([None, far["reg"]]):
            if drop is not None:
                target.call("deregister", reg=drop)
                init.call("forget", peer=target.name)
                init.call("fetch", peer=target.name, ip="127.0.0.1", port=target.port)
            init.call("fill", id=local["id"], off=0, len=MiB, seed=70 + i)
            r = xfer(init, target, "WRITE", local, far, [(0, MiB)], [(0, MiB)])
            assert r["state"] == "DONE", (i, r)
            assert target.call("check", id=far["id"], off=0, len=MiB, seed=70 + i)["bad"] is None
        target.call("deregister", reg=again)


# ----------------------------------------------------------------- 5: a full notif queue


def test_a_full_notification_queue_holds_writes_back_and_loses_nothing():
    """The target does not take its notifications for three of the initiator's timeouts:
    its queue (64 KiB) fills after 15 WRITEs, the rest wait, never failing, their data not
    yet written; once it takes them, every WRITE completes and every notification arrives, in
    order, each after its data. (UCX has no bound to compare with: it keeps whatever it is
    sent, and with a target that does not poll its WRITEs take seconds each.)"""
    backend = "TCPX"
    n, size = 20, 64 * KiB
    with Pair(backend, init={"timeout_ms": "1000"},
              target={"notif_queue_bytes": "65536", "max_notif_bytes": "4096",
                      "timeout_ms": "1000"}) as (init, target):
        far = target.call("register", size=n * size, seed=None)
        local = init.call("register", size=n * size, seed=None)
        link(init, target)
        handles, sent = [], []
        for i in range(n):
            off = i * size
            init.call("fill", id=local["id"], off=off, len=size, seed=80 + i)
            note = check_note(far["id"], off, size, 80 + i, 4096)
            r = xfer(init, target, "WRITE", local, far, [(off, size)], [(off, size)], note,
                     wait=False, keep=True)
            assert r["state"] in ("PROC", "DONE"), r
            handles.append(r["handle"])
            sent.append(note)
        time.sleep(3.0)
        states = init.call("states", handles=handles)["states"]
        fit = 65536 // (4096 + 64)
        assert states[fit:] == ["PROC"] * (n - fit), states
        last = (n - 1) * size
        assert target.call("check", id=far["id"], off=last, len=size,
                           seed=80 + n - 1)["bad"] is not None, "a held WRITE landed"
        got = target.call("notifs_checked", count=n, bound=BOUND_S)["notifs"]
        assert got == [[init.name, 4096, hashlib.sha256(m).hexdigest(), True] for m in sent]
        for h in handles:
            assert init.call("wait", handle=h, bound=BOUND_S)["state"] == "DONE"


# ----------------------------------------------------------------------------- 7: the rest


def test_plugin_path_is_loaded_and_checked_at_creation(tmp_path):
    """A plugin_path that is no ncclNet plugin (a shared library without the plugin table, a
    file that is no library) fails create_backend; tcpxsock named by its path serves
    transfers between two processes."""
    import numpy

    not_elf = tmp_path / "libnccl-net-junk.so"
    not_elf.write_bytes(b"not a shared library\n" * 100)
    no_table = next(pathlib.Path(numpy.__file__).parent.glob("*core/_multiarray_umath*.so"))
    for path in (not_elf, no_table):
        with pytest.raises(errors.nixlBackendError):
            make_agent("badplugin", {"plugin_path": str(path)})
    named = {**PARAMS, "plugin_path": str(SOCK_PLUGIN)}
    with Pair("TCPX", init=named, target=named) as (init, target):
        assert target.ready["params"]["plugin_path"] == str(SOCK_PLUGIN)
        far = target.call("register", size=MiB, seed=None)
        local = init.call("register", size=MiB, seed=None)
        init.call("fill", id=local["id"], off=0, len=MiB, seed=90)
        link(init, target)
        r = xfer(init, target, "WRITE", local, far, [(0, MiB)], [(0, MiB)])
        assert r["state"] == "DONE", r
        assert target.call("check", id=far["id"], off=0, len=MiB, seed=90)["bad"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_length_registrations_are_accepted(backend):
    """A registration of no bytes is taken (as UCX takes it), travels in the metadata, and
    transfers on other regions go on."""
    with Pair(backend) as (init, target):
        far = target.call("register", size=MiB, seed=None)
        target.call("register_range", id=far["id"], off=4096, len=0)
        local = init.call("register", size=MiB, seed=None)
        init.call("register_range", id=local["id"], off=0, len=0)
        init.call("fill", id=local["id"], off=0, len=MiB, seed=91)
        link(init, target)
        r = xfer(init, target, "WRITE", local, far, [(0, MiB)], [(0, MiB)])
        assert r["state"] == "DONE", r
        assert target.call("check", id=far["id"], off=0, len=MiB, seed=91)["bad"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_estimate_xfer_cost_answers(backend):
    """estimate_xfer_cost of prepared transfers: a positive duration and margin, more for
    64 MiB than for 4 KiB, before and after transfers taught the model."""
    with Pair(backend) as (init, target):
        far = target.call("register", size=64 * MiB, seed=None)
        local = init.call("register", size=64 * MiB, seed=None)
        link(init, target)
        est = {}
        for n in (4 * KiB, 64 * MiB):
            h = xfer(init, target, "WRITE", local, far, [(0, n)], [(0, n)], post=False,
                     keep=True)["handle"]
            est[n] = init.call("estimate", handle=h)
            r = xfer(init, target, "WRITE", local, far, [(0, n)], [(0, n)])
            assert r["state"] == "DONE"
            again = init.call("estimate", handle=h)
            assert again["duration_us"] > 0, again
            init.call("release", handle=h)
        small, big = est[4 * KiB], est[64 * MiB]
        assert small["duration_us"] > 0 and big["duration_us"] > small["duration_us"], est
        assert big["margin_us"] >= 0, est
