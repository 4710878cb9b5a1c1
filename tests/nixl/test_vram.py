"""VRAM through the TCPX backend: two agents in one process, device memory on device 0
(the embedded tcpxsock lands device receives in bounce pages, the engine unpacks them with
the GPU kernel). WRITE DRAM->VRAM and VRAM->VRAM, READ VRAM->DRAM, data verified.

Skips without a CUDA device; REQUIRE_GPU=1 turns the skip into a failure.
"""

import numpy as np
import pytest

# test_load settles NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo before any agent exists.
from test_load import make_agent, pattern, wait_done, wait_remote
from cuda_mem import DeviceBuffer, require_gpu

SIZE = 9 << 20


class Region:
    """A DRAM (numpy) or VRAM (DeviceBuffer) registration."""

    def __init__(self, agent, kind, content):
        self.agent, self.kind = agent, kind
        if kind == "VRAM":
            self.buf = DeviceBuffer(len(content))
            self.buf.write(content)
            self.addr = self.buf.addr
        else:
            self.buf = np.frombuffer(bytearray(content), dtype=np.uint8)
            self.addr = self.buf.ctypes.data
        self.handle = agent.register_memory([(self.addr, len(content), 0, "")], kind)

    def descs(self, off, n):
        return self.agent.get_xfer_descs([(self.addr + off, n, 0)], self.kind)

    def bytes(self):
        return self.buf.read() if self.kind == "VRAM" else self.buf.tobytes()

    def release(self):
        self.agent.deregister_memory(self.handle)
        if self.kind == "VRAM":
            self.buf.free()


@pytest.mark.parametrize(
    "op,local_kind,remote_kind",
    [
        ("WRITE", "DRAM", "VRAM"),
        ("WRITE", "VRAM", "VRAM"),
        ("READ", "DRAM", "VRAM"),
        ("READ", "VRAM", "VRAM"),
    ],
)
def test_vram_transfer(op, local_kind, remote_kind):
    require_gpu(pytest)
    a = make_agent("va")
    b = make_agent("vb")
    assert "VRAM_SEG" in a.get_backend_mem_types("TCPX")
    data = pattern(SIZE, 23).tobytes()
    zeros = bytes(SIZE)
    local = Region(a, local_kind, data if op == "WRITE" else zeros)
    remote = Region(b, remote_kind, zeros if op == "WRITE" else data)
    a.add_remote_agent(b.get_agent_metadata())
    try:
        h = a.initialize_xfer(
            op, local.descs(0, SIZE), remote.descs(0, SIZE), b.name, b"vram"
        )
        wait_remote(a, h, a.transfer(h))
        got = remote.bytes() if op == "WRITE" else local.bytes()
        assert got == data, "device data differs"
        a.release_xfer_handle(h)
    finally:
        a.remove_remote_agent(b.name)
        local.release()
        remote.release()


@pytest.mark.parametrize("op", ["READ", "WRITE"])
@pytest.mark.parametrize(
    "local_kind,remote_kind",
    [("DRAM", "VRAM"), ("VRAM", "VRAM"), ("VRAM", "DRAM")],
)
def test_small_vram_transfers(op, local_kind, remote_kind):
    """READs and WRITEs of up to 16 KiB (inline_read_bytes, inline_write_bytes) with device
    memory at either end travel inline (copied through the control frame); a few sizes around
    a page, data verified, the bytes around each piece untouched, each notification
    delivered."""
    require_gpu(pytest)
    a = make_agent("sa")
    b = make_agent("sb")
    n = 64 << 10
    data = pattern(n, 41).tobytes()
    local = Region(a, local_kind, data if op == "WRITE" else bytes(n))
    remote = Region(b, remote_kind, bytes(n) if op == "WRITE" else data)
    dst = remote if op == "WRITE" else local
    a.add_remote_agent(b.get_agent_metadata())
    try:
        want = bytearray(n)
        # (source offset, destination offset, size)
        for i, (so, do, size) in enumerate(
            [(1, 0, 1), (5000, 100, 4095), (7, 9000, 4096), (30001, 20000, 16384)]
        ):
            lo, ro = (so, do) if op == "WRITE" else (do, so)
            note = b"n%d" % i
            h = a.initialize_xfer(
                op, local.descs(lo, size), remote.descs(ro, size), b.name, note
            )
            wait_remote(a, h, a.transfer(h))
            a.release_xfer_handle(h)
            want[do : do + size] = data[so : so + size]
            assert dst.bytes() == bytes(want), f"piece {i} ({size} bytes) differs"
            if op == "WRITE":
                # A WRITE's notification is queued before its initiator completes.
                assert b.get_new_notifs() == {a.name: [note]}, f"notification {i}"
    finally:
        a.remove_remote_agent(b.name)
        local.release()
        remote.release()


@pytest.mark.parametrize(
    "src_kind,dst_kind", [("VRAM", "VRAM"), ("DRAM", "VRAM"), ("VRAM", "DRAM")]
)
def test_vram_transfers_to_ourselves(src_kind, dst_kind):
    """A WRITE from one of our registrations to another, device memory at either end (copied
    by the GPU inside postXfer), then a READ back into a third; data and notifications
    verified."""
    require_gpu(pytest)
    a = make_agent("self")
    n = 3 << 20
    data = pattern(n, 47).tobytes()
    src = Region(a, src_kind, data)
    dst = Region(a, dst_kind, bytes(n))
    back = Region(a, src_kind, bytes(n))
    try:
        h = a.initialize_xfer("WRITE", src.descs(0, n), dst.descs(0, n), a.name, b"w")
        wait_done(a, h, a.transfer(h))
        a.release_xfer_handle(h)
        assert dst.bytes() == data, "WRITE to ourselves differs"
        h = a.initialize_xfer("READ", back.descs(0, n), dst.descs(0, n), a.name, b"r")
        wait_done(a, h, a.transfer(h))
        a.release_xfer_handle(h)
        assert back.bytes() == data, "READ from ourselves differs"
        assert a.get_new_notifs() == {a.name: [b"w", b"r"]}
    finally:
        src.release()
        dst.release()
        back.release()
