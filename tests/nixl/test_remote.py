"""Transfers between two TCPX agents in one process, over the tcpx engine on loopback: WRITE
and READ with data checks at several sizes and descriptor counts, notifications (with a
WRITE: only once the data is in place; alone), reposts, rejected ranges, concurrent
transfers in both directions, and releasing a transfer in flight.

Metadata is exchanged in-process (get_agent_metadata / add_remote_agent). Every polling loop
is bounded: a stuck transfer fails the test instead of hanging it.
"""

import gc
import time

import numpy as np
import pytest

# test_load settles NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo before any agent exists.
from test_load import Registered, errors, make_agent, pattern, wait_remote

BOUND_S = 60


def teardown(a, b, regs):
    """Releases the registrations and forgets each agent's metadata in the other."""
    for r in regs:
        r.release()
    for x, y in ((a, b), (b, a)):
        try:
            x.remove_remote_agent(y.name)
        except errors.nixlNotFoundError:
            pass  # the test never loaded that direction


@pytest.fixture
def pair():
    """Two agents that know each other's metadata; torn down after the test."""
    a = make_agent("ra")
    b = make_agent("rb")
    regs = []
    yield a, b, regs
    teardown(a, b, regs)


def exchange(a, b):
    """Loads each agent's metadata (after its registrations) into the other."""
    a.add_remote_agent(b.get_agent_metadata())
    b.add_remote_agent(a.get_agent_metadata())


def reg(regs, agent, array):
    r = Registered(agent, array)
    regs.append(r)
    return r


def ranges(size, ndesc):
    """`ndesc` (offset, length) pieces covering [0, size), with a gap pattern on the far side
    so descriptors are not merged into one."""
    step = size // ndesc
    return [(i * step, step if i < ndesc - 1 else size - i * step) for i in range(ndesc)]


def notifs_within(agent, seconds=BOUND_S):
    """Polls getNotifs until something arrives; fails past the bound."""
    deadline = time.monotonic() + seconds
    while True:
        got = agent.get_new_notifs()
        if got:
            return got
        assert time.monotonic() < deadline, "no notification arrived in time"
        time.sleep(0.001)


SIZES = [1, 4096, 1 << 20, 64 << 20]


@pytest.mark.parametrize("ndesc", [1, 64])
@pytest.mark.parametrize("size", SIZES, ids=["1B", "4KiB", "1MiB", "64MiB"])
@pytest.mark.parametrize("op", ["WRITE", "READ"])
def test_transfer_between_agents(pair, op, size, ndesc):
    if size < ndesc:
        pytest.skip("fewer bytes than descriptors")
    a, b, regs = pair
    # Local and remote sides in separate arrays, remote pieces at shifted offsets (and a
    # one-byte gap between them) so the remote list is not the local one shifted.
    local = reg(regs, a, pattern(size, 11) if op == "WRITE" else np.zeros(size, np.uint8))
    far = reg(
        regs,
        b,
        np.zeros(size + ndesc, np.uint8) if op == "WRITE" else pattern(size + ndesc, 12),
    )
    exchange(a, b)
    lr = ranges(size, ndesc)
    rr = [(o + i, n) for i, (o, n) in enumerate(lr)]
    h = a.initialize_xfer(op, local.descs(*lr), far.descs(*rr), b.name, b"n-" + op.encode())
    wait_remote(a, h, a.transfer(h), BOUND_S)
    for (lo, n), (ro, _) in zip(lr, rr):
        assert np.array_equal(local.array[lo : lo + n], far.array[ro : ro + n])
    if op == "WRITE":
        gaps = [ro + n for (ro, n) in rr]
        assert np.all(far.array[gaps] == 0), "bytes outside the descriptors moved"
    assert notifs_within(b) == {a.name: [b"n-" + op.encode()]}
    a.release_xfer_handle(h)


def test_write_notification_arrives_only_after_the_data(pair):
    a, b, regs = pair
    n = 16 << 20
    src = reg(regs, a, pattern(n, 21))
    dst = reg(regs, b, np.zeros(n, np.uint8))
    exchange(a, b)
    h = a.initialize_xfer("WRITE", src.descs((0, n)), dst.descs((0, n)), b.name, b"landed")
    state = a.transfer(h)
    # The target sees the notification without the initiator's help; when it does, every
    # byte must already be there.
    assert notifs_within(b) == {a.name: [b"landed"]}
    assert np.array_equal(dst.array, src.array)
    wait_remote(a, h, state, BOUND_S)
    a.release_xfer_handle(h)


def test_notification_alone(pair):
    a, b, _ = pair
    exchange(a, b)
    a.send_notif(b.name, b"ping")
    a.send_notif(b.name, b"pong")
    got = {}
    deadline = time.monotonic() + BOUND_S
    while sum(len(v) for v in got.values()) < 2:
        assert time.monotonic() < deadline, f"notifications missing: {got}"
        for k, v in b.get_new_notifs().items():
            got.setdefault(k, []).extend(v)
    assert got == {a.name: [b"ping", b"pong"]}
    b.send_notif(a.name, b"back")
    assert notifs_within(a) == {b.name: [b"back"]}


@pytest.mark.parametrize("n", [8192, 65536])
def test_full_notification_queue_holds_the_write_until_the_application_takes_them(n):
    """The target does not take its notifications: once `notif_queue_bytes` is used up, the
    next WRITE waits (PROC, its data not written), for several of the initiator's
    `timeout_ms` (the target says it is alive meanwhile), through the data session (64 KiB)
    and inline (8 KiB); once the target takes them it completes, its data and notification
    land, and nothing was lost."""
    a = make_agent("nq-a", {"timeout_ms": "500"})
    b = make_agent("nq-b", {"notif_queue_bytes": "65536", "max_notif_bytes": "4096"})
    assert b.get_backend_params("TCPX")["notif_queue_bytes"] == "65536"
    regs = []
    try:
        src = reg(regs, a, pattern(n, 31))
        dst = reg(regs, b, np.zeros(n, np.uint8))
        exchange(a, b)
        fit = 65536 // (4096 + 64)  # each entry counts its bytes + 64

        def post(note):
            h = a.initialize_xfer("WRITE", src.descs((0, n)), dst.descs((0, n)), b.name, note)
            return h, a.transfer(h)

        notes = [bytes([i]) * 4096 for i in range(fit + 1)]
        for i in range(fit):
            h, state = post(notes[i])
            wait_remote(a, h, state, BOUND_S)
            a.release_xfer_handle(h)
        dst.array[:] = 0
        h, state = post(notes[fit])
        deadline = time.monotonic() + 2.0  # four of the initiator's timeouts
        while time.monotonic() < deadline:
            assert state == "PROC", "a WRITE held back by a full queue must wait, not fail"
            state = a.check_xfer_state(h)
            time.sleep(0.005)
        assert not dst.array.any(), "a held WRITE wrote nothing"
        assert b.get_new_notifs() == {a.name: notes[:fit]}
        wait_remote(a, h, a.check_xfer_state(h), BOUND_S)
        assert np.array_equal(dst.array, src.array)
        assert notifs_within(b) == {a.name: [notes[fit]]}
        a.release_xfer_handle(h)
    finally:
        teardown(a, b, regs)


@pytest.mark.parametrize("op", ["WRITE", "READ"])
def test_repost_of_a_prepared_handle(pair, op):
    a, b, regs = pair
    n = 1 << 20
    local = reg(regs, a, np.zeros(n, np.uint8))
    far = reg(regs, b, np.zeros(n, np.uint8))
    exchange(a, b)
    h = a.initialize_xfer(op, local.descs((0, n)), far.descs((0, n)), b.name, b"again")
    for seed in (31, 32, 33):
        src = local if op == "WRITE" else far
        src.array[:] = pattern(n, seed)
        wait_remote(a, h, a.transfer(h), BOUND_S)
        assert np.array_equal(local.array, far.array)
        assert notifs_within(b) == {a.name: [b"again"]}
    a.release_xfer_handle(h)


def test_remote_range_outside_the_registration_is_rejected(pair):
    a, b, regs = pair
    src = reg(regs, a, pattern(8192, 41))
    dst = reg(regs, b, np.zeros(4096, np.uint8))
    exchange(a, b)
    # libnixl matches remote descriptors to loaded regions itself: one reaching past the
    # region never reaches the backend.
    with pytest.raises((errors.nixlNotFoundError, errors.nixlInvalidParamError)):
        a.initialize_xfer("WRITE", src.descs((0, 8192)), dst.descs((0, 8192)), b.name)
    assert np.all(dst.array == 0)


def test_concurrent_write_and_read_in_both_directions(pair):
    a, b, regs = pair
    n = 8 << 20
    a_src = reg(regs, a, pattern(n, 51))
    b_dst = reg(regs, b, np.zeros(n, np.uint8))
    b_local = reg(regs, b, np.zeros(n, np.uint8))
    a_far = reg(regs, a, pattern(n, 52))
    exchange(a, b)
    hw = a.initialize_xfer("WRITE", a_src.descs((0, n)), b_dst.descs((0, n)), b.name, b"w")
    hr = b.initialize_xfer("READ", b_local.descs((0, n)), a_far.descs((0, n)), a.name, b"r")
    sw, sr = a.transfer(hw), b.transfer(hr)
    deadline = time.monotonic() + BOUND_S
    while sw == "PROC" or sr == "PROC":
        assert time.monotonic() < deadline, "transfers did not complete in time"
        if sw == "PROC":
            sw = a.check_xfer_state(hw)
        if sr == "PROC":
            sr = b.check_xfer_state(hr)
    assert (sw, sr) == ("DONE", "DONE")
    assert np.array_equal(b_dst.array, a_src.array)
    assert np.array_equal(b_local.array, a_far.array)
    assert notifs_within(b) == {a.name: [b"w"]}
    assert notifs_within(a) == {b.name: [b"r"]}
    a.release_xfer_handle(hw)
    b.release_xfer_handle(hr)


@pytest.mark.parametrize("op", ["WRITE", "READ"])
def test_release_in_flight_then_transfer_again(pair, op):
    a, b, regs = pair
    n = 32 << 20
    local = reg(regs, a, pattern(n, 61) if op == "WRITE" else np.zeros(n, np.uint8))
    far = reg(regs, b, np.zeros(n, np.uint8) if op == "WRITE" else pattern(n, 62))
    small_l = reg(regs, a, pattern(4096, 63) if op == "WRITE" else np.zeros(4096, np.uint8))
    small_f = reg(regs, b, np.zeros(4096, np.uint8) if op == "WRITE" else pattern(4096, 64))
    exchange(a, b)
    h = a.initialize_xfer(op, local.descs((0, n)), far.descs((0, n)), b.name)
    a.transfer(h)
    # Releasing never blocks; the abandoned transfer must not disturb the next one, which
    # pairs with the peer by order behind it.
    a.release_xfer_handle(h)
    h = a.initialize_xfer(op, small_l.descs((0, 4096)), small_f.descs((0, 4096)), b.name)
    wait_remote(a, h, a.transfer(h), BOUND_S)
    assert np.array_equal(small_l.array, small_f.array)
    a.release_xfer_handle(h)


def test_dead_peer_fails_transfers_instead_of_hanging():
    a = make_agent("dead-a")
    b = make_agent("dead-b")
    src = Registered(a, pattern(1 << 20, 71))
    dst_array = np.zeros(1 << 20, np.uint8)
    dst = Registered(b, dst_array)
    a.add_remote_agent(b.get_agent_metadata())
    h = a.initialize_xfer("WRITE", src.descs((0, 1 << 20)), dst.descs((0, 1 << 20)), b.name)
    wait_remote(a, h, a.transfer(h), BOUND_S)
    # b goes away (its backend closes its control streams and sessions).
    dst.release()
    del dst, b
    gc.collect()
    deadline = time.monotonic() + BOUND_S
    state = "DONE"
    try:
        state = a.transfer(h)
        while state == "PROC":
            assert time.monotonic() < deadline, "transfer to a dead peer hung"
            state = a.check_xfer_state(h)
    except errors.nixlRemoteDisconnectError:
        state = "ERR"
    assert state == "ERR"
    src.release()
