"""VRAM through the TCPX backend: two agents in one process, device memory on device 0
(the embedded tcpxsock lands device receives in bounce pages, the engine unpacks them with
the GPU kernel). WRITE DRAM->VRAM and VRAM->VRAM, READ VRAM->DRAM, data verified.

Skips without a CUDA device; REQUIRE_GPU=1 turns the skip into a failure.
"""

import numpy as np
import pytest

# test_load sets NIXL_PLUGIN_DIR and TCPX_SOCK_IFNAME=lo before any agent exists.
from test_load import make_agent, pattern, wait_remote
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
