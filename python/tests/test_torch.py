"""torch tensors: CPU tensors through DLPack (skipped without torch), CUDA tensors through
__cuda_array_interface__ in two processes, both ways (GPU machines; SKIP elsewhere, a
failure under REQUIRE_GPU=1)."""

import numpy as np
import pytest

import tcpx
from conftest import config, drive, need_gpu, pair, peer, pattern

WAIT_S = 60.0


def test_torch_cpu_tensors():
    torch = pytest.importorskip("torch")
    a, b = pair()
    with a, b:
        src = torch.arange(100_000, dtype=torch.float32)
        dst = torch.zeros(100_000, dtype=torch.float32)
        ra, rb = a.register(src), b.register(dst)
        assert ra.nbytes == 400_000 and ra.device is None
        with a.post(tcpx.SEND, [ra]) as ts, b.post(tcpx.RECV, [rb]) as tr:
            drive(ts, tr)
        assert torch.equal(dst, src)
        with pytest.raises(tcpx.InvalidError, match="contiguous"):
            a.register(torch.zeros(64, 64)[:, ::2])


@pytest.mark.parametrize("mine,theirs", [("cuda", "cuda"), ("cpu", "cuda"), ("cuda", "cpu")])
def test_torch_tensors_two_processes(mine, theirs):
    """This process sends from and receives into a tensor on `mine`; the peer on `theirs`."""
    torch = need_gpu()
    n = (16 << 20) + 5
    src = torch.from_numpy(pattern(n, seed=3)).to(mine)
    dst = torch.zeros(n, dtype=torch.uint8, device=mine)
    torch.cuda.synchronize()
    with peer("torch_tensors", theirs, theirs, gpu=0) as (s, _):
        with s.register(src) as reg:
            assert reg.device == (0 if mine == "cuda" else None)
            with s.post(tcpx.SEND, [reg]) as t:
                assert t.wait(WAIT_S) == n
        with s.register(dst) as reg:
            with s.post(tcpx.RECV, [reg]) as t:
                assert t.wait(WAIT_S) == n
    assert torch.equal(dst.cpu(), torch.from_numpy(pattern(n, seed=4)))


def test_torch_cuda_slices_in_one_process():
    """Tensors that start off a 4 KiB boundary (slices of an allocation), many segments."""
    torch = need_gpu()
    a, b = pair(gpu=0)
    with a, b:
        base = torch.from_numpy(pattern(3 << 20, seed=12)).cuda()
        dst_base = torch.zeros(3 << 20, dtype=torch.uint8, device="cuda")
        src, dst = base[1001:], dst_base[77:]
        torch.cuda.synchronize()
        ra, rb = a.register(src), b.register(dst)
        assert ra.address == src.data_ptr() and ra.device == 0
        segs = [(0, 1), (5, 4096), (10_000, 1 << 20), (2 << 20, 700_000)]
        with a.post(tcpx.SEND, [(ra, o, n) for o, n in segs]) as ts, b.post(
            tcpx.RECV, [(rb, o, n) for o, n in segs]
        ) as tr:
            drive(ts, tr)
        got, want = dst.cpu().numpy(), src.cpu().numpy()
        for o, n in segs:
            assert np.array_equal(got[o : o + n], want[o : o + n]), (o, n)


def test_torch_cuda_device_mismatch_is_refused():
    torch = need_gpu()
    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU: no other device to mismatch")
    a, b = pair(gpu=0)
    with a, b:
        with pytest.raises(tcpx.InvalidError, match="another GPU"):
            a.register(torch.zeros(4096, dtype=torch.uint8, device="cuda:1"))
        assert a.broken is None
