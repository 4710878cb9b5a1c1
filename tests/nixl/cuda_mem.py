"""Just enough of the CUDA driver API (ctypes, no torch) to give NIXL tests device memory:
probe for a GPU, allocate, copy in and out, free. Everything runs in device 0's primary
context."""

import ctypes
import os

_cuda = None
_ctx = None


def _check(r, what):
    if r != 0:
        raise RuntimeError(f"{what} failed with CUresult {r}")


def gpu_reason():
    """None when a CUDA device is usable, else why not (for SKIP messages)."""
    global _cuda, _ctx
    if _ctx is not None:
        return None
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"no CUDA driver library ({e})"
    if lib.cuInit(0) != 0:
        return "cuInit failed"
    n = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(n)) != 0 or n.value == 0:
        return "no CUDA device"
    dev = ctypes.c_int(0)
    _check(lib.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    _cuda, _ctx = lib, ctx
    return None


def require_gpu(pytest):
    """Skips the calling test without a GPU; fails instead under REQUIRE_GPU=1."""
    why = gpu_reason()
    if why is not None:
        if os.environ.get("REQUIRE_GPU") == "1":
            pytest.fail(f"REQUIRE_GPU=1 but {why}")
        pytest.skip(why)


class DeviceBuffer:
    """`n` bytes of device memory on device 0."""

    def __init__(self, n):
        self.n = n
        self.ptr = ctypes.c_uint64(0)
        _check(_cuda.cuCtxSetCurrent(_ctx), "cuCtxSetCurrent")
        _check(_cuda.cuMemAlloc_v2(ctypes.byref(self.ptr), ctypes.c_size_t(n)), "cuMemAlloc")

    @property
    def addr(self):
        return self.ptr.value

    def write(self, data):
        buf = bytes(data)
        _check(_cuda.cuCtxSetCurrent(_ctx), "cuCtxSetCurrent")
        _check(
            _cuda.cuMemcpyHtoD_v2(self.ptr, buf, ctypes.c_size_t(len(buf))), "cuMemcpyHtoD"
        )
        _check(_cuda.cuCtxSynchronize(), "cuCtxSynchronize")

    def read(self):
        out = ctypes.create_string_buffer(self.n)
        _check(_cuda.cuCtxSetCurrent(_ctx), "cuCtxSetCurrent")
        _check(_cuda.cuCtxSynchronize(), "cuCtxSynchronize")
        _check(_cuda.cuMemcpyDtoH_v2(out, self.ptr, ctypes.c_size_t(self.n)), "cuMemcpyDtoH")
        return out.raw

    def free(self):
        if self.ptr.value:
            _cuda.cuCtxSetCurrent(_ctx)
            _cuda.cuMemFree_v2(self.ptr)
            self.ptr = ctypes.c_uint64(0)
