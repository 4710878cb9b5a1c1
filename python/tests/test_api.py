"""The API in one process: two sessions connected to each other, one thread driving both."""

import os
import subprocess
import sys

import numpy as np
import pytest

import tcpx
from conftest import TIMEOUT_MS, config, drive, pair, pattern


@pytest.fixture(scope="module")
def sessions():
    a, b = pair(channels=2, chunk_bytes=64 << 10)
    yield a, b
    a.close()
    b.close()


def roundtrip(a, b, src, dst, segs_a=None, segs_b=None):
    """Sends src (a) into dst (b) and returns the byte count."""
    ra, rb = a.register(src), b.register(dst)
    try:
        with a.post(tcpx.SEND, segs_a or [ra]) as ts, b.post(tcpx.RECV, segs_b or [rb]) as tr:
            drive(ts, tr)
            assert ts.bytes_done == tr.bytes_done
            return tr.bytes_done
    finally:
        ra.deregister()
        rb.deregister()


# --- configuration -------------------------------------------------------------------------


def test_config_from_env_and_overrides(monkeypatch):
    monkeypatch.setenv("TCPX_CHANNELS", "5")
    monkeypatch.setenv("TCPX_TIMEOUT_MS", "1234")
    c = tcpx.Config()
    assert (c.channels, c.timeout_ms) == (5, 1234)
    c = tcpx.Config(channels=3, devices=[0], gpu=1, plugin="/x/libnccl-net.so")
    assert (c.channels, c.timeout_ms, c.devices, c.gpu) == (3, 1234, "0", 1)
    assert str(c.plugin) == "/x/libnccl-net.so"
    assert tcpx.Config(from_env=False).channels == 2
    assert tcpx.Config(from_env=False, devices="all").devices == "all"
    assert "channels=3" in repr(tcpx.Config(channels=3))
    assert tcpx.Config(split_chunks=4).split_chunks == 4
    assert tcpx.Config(from_env=False).split_chunks in (1, 8)


def test_config_errors(monkeypatch):
    with pytest.raises(tcpx.ConfigError, match="channels"):
        tcpx.Config(channels=0)
    with pytest.raises(tcpx.ConfigError, match="chunk_bytes"):
        tcpx.Config(chunk_bytes=8 << 20)
    with pytest.raises(tcpx.ConfigError, match="split_chunks"):
        tcpx.Config(split_chunks=0)
    with pytest.raises(ValueError, match="window"):  # ConfigError is a ValueError
        tcpx.Config(window=17)
    with pytest.raises(tcpx.ConfigError, match="devices"):
        tcpx.Config(devices="nearest")
    monkeypatch.setenv("TCPX_CHANNELS", "x")
    with pytest.raises(tcpx.ConfigError, match="TCPX_CHANNELS"):
        tcpx.Config()
    assert tcpx.Config(from_env=False).channels == 2


def test_missing_plugin_is_a_plugin_error():
    with pytest.raises(tcpx.PluginError, match="file not found"):
        tcpx.Listener(tcpx.Config(plugin="/nonexistent/libnccl-net.so"))


# --- handshake ------------------------------------------------------------------------------


def test_bad_conn_info_is_a_protocol_error_and_uses_the_listener_up():
    lst = tcpx.Listener(config())
    assert isinstance(lst.conn_info, bytes) and len(lst.conn_info) > 0
    with pytest.raises(tcpx.ProtocolError, match="peer conn info"):
        lst.connect(b"xyz")
    with pytest.raises(tcpx.InvalidError, match="already connected or closed"):
        lst.connect(b"xyz")


def test_channel_mismatch_is_a_config_error():
    la, lb = tcpx.Listener(config(channels=2)), tcpx.Listener(config(channels=3))
    with pytest.raises(tcpx.ConfigError, match="channels"):
        la.connect(lb.conn_info)
    lb.close()
    lb.close()  # idempotent


def test_listener_context_manager_closes():
    with tcpx.Listener(config()) as lst:
        info = lst.conn_info
    assert info
    with pytest.raises(tcpx.InvalidError):
        lst.connect(info)


# --- memory ---------------------------------------------------------------------------------


def test_buffer_protocol_objects(sessions):
    a, b = sessions
    n = 100_003
    src = bytearray(pattern(n, 1).tobytes())
    dst = np.zeros(n, dtype=np.uint8)
    assert roundtrip(a, b, src, dst) == n
    assert dst.tobytes() == bytes(src)
    # Multi-byte dtypes and a memoryview of part of a buffer.
    src = np.arange(4096, dtype=np.float64)
    dst = np.zeros(8192, dtype=np.float64)
    assert roundtrip(a, b, src, memoryview(dst)[4096:]) == src.nbytes
    assert np.array_equal(dst[4096:], src) and not dst[:4096].any()
    # Fortran order is contiguous too: its bytes move as they lie.
    src = np.asfortranarray(np.arange(600, dtype=np.int32).reshape(20, 30))
    dst = np.zeros((30, 20), dtype=np.int32)
    roundtrip(a, b, src, dst)
    assert np.array_equal(dst, src.T)


def test_readonly_objects_are_sent_but_never_received_into(sessions):
    a, b = sessions
    data = pattern(5000, 2).tobytes()
    ra = a.register(data)
    assert ra.readonly and ra.nbytes == 5000
    dst = np.zeros(5000, dtype=np.uint8)
    assert roundtrip(a, b, data, dst) == 5000
    assert dst.tobytes() == data
    rb = b.register(data)
    with pytest.raises(tcpx.InvalidError, match="read-only"):
        b.post(tcpx.RECV, [rb])
    ra.deregister()
    rb.deregister()


class DlpackOnly:
    """Memory reachable only through DLPack (a numpy array's export): no buffer protocol."""

    def __init__(self, arr):
        self.arr = arr

    def __dlpack__(self, *args, **kwargs):
        return self.arr.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.arr.__dlpack_device__()


def test_dlpack_objects(sessions):
    a, b = sessions
    src = pattern(70_001, 3)
    dst = np.zeros((70_001,), dtype=np.uint8)
    reg = a.register(DlpackOnly(src))
    assert "__dlpack__" in repr(reg) and reg.device is None and reg.nbytes == 70_001
    assert reg.address == src.ctypes.data
    reg.deregister()
    assert roundtrip(a, b, DlpackOnly(src), DlpackOnly(dst)) == 70_001
    assert np.array_equal(dst, src)
    # A strided view is not one run of bytes.
    with pytest.raises(tcpx.InvalidError, match="contiguous"):
        a.register(DlpackOnly(np.zeros((8, 8), dtype=np.uint8)[:, ::2]))


def test_registration_keeps_the_object_alive(sessions):
    a, b = sessions
    n = 1 << 16
    src = pattern(n, 4)
    reg = a.register(bytearray(src.tobytes()))  # nobody else holds the bytearray
    assert isinstance(reg.object, bytearray)
    # While registered the export is held: the bytearray cannot be resized under the plugin.
    with pytest.raises(BufferError):
        reg.object.extend(b"x")
    dst = np.zeros(n, dtype=np.uint8)
    rb = b.register(dst)
    with a.post(tcpx.SEND, [reg]) as ts, b.post(tcpx.RECV, [rb]) as tr:
        drive(ts, tr)
    assert np.array_equal(dst, src)
    obj = reg.object
    reg.deregister()
    obj.extend(b"x")  # released with the registration
    rb.deregister()


def test_register_errors(sessions):
    a, _ = sessions
    with pytest.raises(TypeError, match="neither the buffer protocol"):
        a.register(object())
    with pytest.raises(tcpx.InvalidError, match="not contiguous"):
        a.register(np.zeros((64, 64), dtype=np.uint8)[:, ::2])
    with pytest.raises(tcpx.InvalidError, match="no bytes"):
        a.register(bytearray())

    class FakeCuda:
        """Host memory claiming to be CUDA memory."""

        def __init__(self):
            self.buf = np.zeros(4096, dtype=np.uint8)
            self.__cuda_array_interface__ = {
                "data": (self.buf.ctypes.data, False),
                "shape": (4096,),
                "typestr": "|u1",
                "version": 3,
            }

    # Without CUDA the plugin takes no device pointers; with a driver, it would say the
    # memory is not device memory. Either way nothing is registered.
    with pytest.raises((tcpx.UnsupportedError, tcpx.InvalidError)):
        a.register(FakeCuda(), device=0)
    with pytest.raises(tcpx.InvalidError, match="device="):
        a.register(FakeCuda())


# --- transfers ------------------------------------------------------------------------------


def test_segments_out_of_range_and_stale_registrations(sessions):
    a, b = sessions
    buf = np.zeros(4096, dtype=np.uint8)
    reg = a.register(buf)
    with pytest.raises(tcpx.InvalidError, match="outside"):
        a.post(tcpx.SEND, [(reg, 4000, 97)])
    with pytest.raises(tcpx.InvalidError, match="outside"):
        a.post(tcpx.SEND, [(reg, 0, 100), (reg, 1 << 40, 1)])
    with pytest.raises(OverflowError):
        a.post(tcpx.SEND, [(reg, -1, 1)])
    with pytest.raises(TypeError, match="segment"):
        a.post(tcpx.SEND, [buf])  # an unregistered buffer is not a segment
    with pytest.raises(TypeError, match="segment"):
        a.post(tcpx.SEND, [(reg, 0)])
    with pytest.raises(ValueError, match="direction"):
        a.post("sideways", [reg])
    other = b.register(buf)
    with pytest.raises(tcpx.InvalidError, match="another session"):
        a.post(tcpx.SEND, [other])
    with pytest.raises(tcpx.InvalidError, match="another session"):
        a.deregister(other)
    other.deregister()
    reg.deregister()
    reg.deregister()  # idempotent
    with pytest.raises(tcpx.InvalidError, match="deregistered"):
        a.post(tcpx.SEND, [reg])
    # Nothing was queued by any of those: the session still moves data.
    dst = np.zeros(4096, dtype=np.uint8)
    assert roundtrip(a, b, pattern(4096, 6), dst) == 4096
    assert np.array_equal(dst, pattern(4096, 6))


def test_too_many_segments():
    a, b = pair(max_segments=4)
    with a, b:
        reg = a.register(np.zeros(64, dtype=np.uint8))
        with pytest.raises(tcpx.InvalidError, match="max_segments"):
            a.post(tcpx.SEND, [(reg, i, 1) for i in range(5)])
        with a.post(tcpx.SEND, [(reg, i, 1) for i in range(4)]) as t:
            assert t.bytes_total == 4


def test_transfer_lifecycle(sessions):
    a, b = sessions
    n = 300_000
    src, dst = pattern(n, 7), np.zeros(n, dtype=np.uint8)
    ra, rb = a.register(src), b.register(dst)
    ts = a.post("send", [(ra, 0, n)])
    tr = b.post("RECV", [(rb, 0, n, 0)])
    assert (ts.direction, tr.direction) == (tcpx.SEND, tcpx.RECV)
    assert tr.bytes_total == n and not tr.done
    assert not tr.status() and tr.bytes_done == 0  # post drives nothing; status neither
    # A region cannot go while a live transfer names it.
    with pytest.raises(tcpx.InvalidError, match="live transfer"):
        rb.deregister()
    drive(ts, tr)
    assert tr.done and tr.bytes_done == n and "done" in repr(tr)
    assert tr.status()
    assert tr.poll()  # done stays done
    tr.release()
    tr.release()  # idempotent
    with pytest.raises(tcpx.InvalidError, match="released"):
        tr.poll()
    with pytest.raises(tcpx.InvalidError, match="released"):
        tr.wait(1.0)
    ts.release()
    assert np.array_equal(dst, src)
    rb.deregister()
    ra.deregister()


def test_wait_timeout_leaves_the_transfer_live(sessions):
    a, b = sessions
    n = 10_000
    src, dst = pattern(n, 8), np.zeros(n, dtype=np.uint8)
    ra, rb = a.register(src), b.register(dst)
    tr = b.post(tcpx.RECV, [rb])
    with pytest.raises(tcpx.TimeoutError, match="did not complete"):
        tr.wait(0.2)
    with pytest.raises(TimeoutError):  # also the built-in class
        tr.wait(0.0)
    with pytest.raises(ValueError, match="seconds"):
        tr.wait(-1.0)
    ts = a.post(tcpx.SEND, [ra])
    drive(ts)  # the send completes once the receive drains it
    assert tr.wait(30.0) == n
    assert np.array_equal(dst, src)
    ts.release()
    tr.release()
    ra.deregister()
    rb.deregister()


def test_dropping_transfers_releases_their_slots():
    a, b = pair(max_transfers=4)
    with a, b:
        src, dst = pattern(1000, 9), np.zeros(1000, dtype=np.uint8)
        ra, rb = a.register(src), b.register(dst)
        for _ in range(3 * 4):
            ts, tr = a.post(tcpx.SEND, [ra]), b.post(tcpx.RECV, [rb])
            drive(ts, tr)
            del ts, tr  # never released by hand
        four = [a.post(tcpx.SEND, [ra]) for _ in range(4)]
        with pytest.raises(tcpx.InvalidError, match="max_transfers"):
            a.post(tcpx.SEND, [ra])
        recv = [b.post(tcpx.RECV, [rb]) for _ in range(4)]
        drive(*four, *recv)
        assert np.array_equal(dst, src)


def test_closed_session():
    a, b = pair()
    reg = a.register(np.zeros(16, dtype=np.uint8))
    t = a.post(tcpx.SEND, [reg])
    with a:
        pass
    assert a.closed and "closed" in repr(a)
    a.close()  # idempotent
    with pytest.raises(tcpx.InvalidError, match="closed"):
        a.post(tcpx.SEND, [reg])
    with pytest.raises(tcpx.InvalidError, match="closed"):
        t.poll()
    with pytest.raises(tcpx.InvalidError, match="closed"):
        a.register(np.zeros(16, dtype=np.uint8))
    t.release()  # the session dropped it already
    reg.deregister()  # the session released it already
    b.close()


def test_session_properties(sessions):
    a, _ = sessions
    assert a.config.channels == 2 and a.config.chunk_bytes == 64 << 10
    assert len(a.channel_devices) == 2
    assert a.broken is None and not a.closed
    assert a.progress() in (True, False)


def test_post_poll_release_allocate_nothing_in_rust():
    """1,000 transfers each way after a warm-up: the Rust side of post, poll and release
    (engine, plugin calls on this thread, the binding layer) allocates nothing."""
    a, b = pair(channels=2, chunk_bytes=16 << 10)
    with a, b:
        src, dst = pattern(40_000, 10), np.zeros(40_000, dtype=np.uint8)
        ra, rb = a.register(src), b.register(dst)
        segs_a = [(ra, 0, 4096), (ra, 5000, 30_000), ra]
        segs_b = [(rb, 0, 4096), (rb, 4096, 30_000), (rb, 0, 40_000)]

        def rounds(k):
            for _ in range(k):
                ts = a.post(tcpx.SEND, segs_a)
                tr = b.post(tcpx.RECV, segs_b)
                while not (tr.poll() & ts.poll()):
                    pass
                ts.release()
                tr.release()

        rounds(50)
        before = tcpx._tcpx._thread_allocations()
        rounds(1000)
        after = tcpx._tcpx._thread_allocations()
        assert after - before == 0, f"{after - before} Rust allocations in 1,000 rounds"
        # The counter counts: a registration allocates.
        rc = a.register(np.zeros(8, dtype=np.uint8))
        assert tcpx._tcpx._thread_allocations() > after
        rc.deregister()


# --- package ---------------------------------------------------------------------------------


def test_cli_entry_points():
    env = dict(os.environ, TCPX_SOCK_IFNAME="lo")
    for cmd in ([sys.executable, "-m", "tcpx", "probe"], ["tcpx", "probe", "--json"]):
        exe = os.path.join(os.path.dirname(sys.executable), cmd[0])
        if cmd[0] == "tcpx":
            cmd = [exe, *cmd[1:]]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 0, p.stderr
        assert "tcpxsock" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "tcpx", "nonsense"], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2 and "unrecognized subcommand" in p.stderr
    assert tcpx.cli(["help"]) == 0


def test_wheel_carries_the_plugins():
    d = tcpx.plugin_dir()
    assert d is not None, "the wheel carries no plugins"
    for name in (tcpx.NCCL_NET_PLUGIN, tcpx.NIXL_PLUGIN):
        assert (d / name).is_file(), name
    # The shipped ncclNet plugin loads through the engine's loader and moves data.
    cfg = config(plugin=str(d / tcpx.NCCL_NET_PLUGIN))
    la, lb = tcpx.Listener(cfg), tcpx.Listener(cfg)
    import threading

    out = {}
    th = threading.Thread(target=lambda: out.setdefault("b", lb.connect(la.conn_info)))
    th.start()
    a = la.connect(lb.conn_info)
    th.join(TIMEOUT_MS / 1000)
    b = out["b"]
    with a, b:
        dst = np.zeros(12345, dtype=np.uint8)
        assert roundtrip(a, b, pattern(12345, 11), dst) == 12345
        assert np.array_equal(dst, pattern(12345, 11))


def test_nixl_commands_from_the_wheel_use_the_shipped_plugin():
    from tcpx.__main__ import _wheel_defaults

    d = tcpx.plugin_dir()
    got = _wheel_defaults(["nixl", "install"])
    assert got == ["nixl", "install", "--plugin", str(d / tcpx.NIXL_PLUGIN),
                   "--python", sys.executable]
    assert _wheel_defaults(["nixl", "uninstall"]) == ["nixl", "uninstall", "--python",
                                                      sys.executable]
    mine = ["nixl", "status", "--plugin", "/x.so", "--python", "/py"]
    assert _wheel_defaults(mine) == mine
    assert _wheel_defaults(["probe"]) == ["probe"]
