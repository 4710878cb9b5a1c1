"""The other process of the two-process tests: `python peer.py SCENARIO PORT [ARGS...]`
connects to the test's rendezvous on 127.0.0.1:PORT and plays its half of SCENARIO.
Exits 0 only when every byte it checked was right; prints what went wrong otherwise.
Settings come from the environment the test passes (TCPX_*)."""

import sys

import numpy as np

import tcpx
from conftest import pattern

# Sizes of test_two_process.py's round trips: 1 B to 64 MiB, odd ones across chunk edges.
SIZES = [1, 2, 255, 4096, 65537, (1 << 20) + 3, 8 << 20, 64 << 20]
WAIT_S = 60.0


def segment_layout(count: int, seed: int, gap: int):
    """Offsets (with `gap` bytes after each segment) and lengths of `count` segments."""
    rng = np.random.default_rng(seed)
    lens = [int(x) for x in rng.integers(1, 20_000, size=count)]
    offs, at = [], 0
    for n in lens:
        offs.append(at)
        at += n + gap
    return offs, lens, at


def sizes(s: tcpx.Session):
    """Receive each size (check it), then send it back with another pattern."""
    for n in SIZES:
        buf = np.zeros(n, dtype=np.uint8)
        with s.register(buf) as reg:
            with s.post(tcpx.RECV, [reg]) as t:
                assert t.wait(WAIT_S) == n
            want = pattern(n, seed=n)
            if not np.array_equal(buf, want):
                bad = int(np.argmax(buf != want))
                sys.exit(f"size {n}: first wrong byte at {bad}: {buf[bad]} != {want[bad]}")
            buf[:] = pattern(n, seed=n + 1)
            with s.post("send", [(reg, 0, n)]) as t:
                assert t.wait(WAIT_S) == n
    print(f"sizes: {len(SIZES)} sizes both ways ok")


def segments(s: tcpx.Session, count: str, send_gap: str, recv_gap: str):
    """Receive `count` segments laid out with recv_gap (check them and the gaps), then send
    them from a layout with send_gap."""
    count, send_gap, recv_gap = int(count), int(send_gap), int(recv_gap)
    roffs, lens, rtotal = segment_layout(count, 7, recv_gap)
    soffs, _, stotal = segment_layout(count, 7, send_gap)
    src = pattern(stotal, seed=99)
    dst = np.full(rtotal, 0xEE, dtype=np.uint8)
    want = pattern(stotal, seed=98)
    with s.register(dst) as rreg, s.register(src) as sreg:
        segs = [(rreg, o, n, so) for o, n, so in zip(roffs, lens, soffs)]
        with s.post(tcpx.RECV, segs) as t:
            assert t.wait(WAIT_S) == sum(lens)
        for i, (o, n, so) in enumerate(zip(roffs, lens, soffs)):
            if not np.array_equal(dst[o : o + n], want[so : so + n]):
                sys.exit(f"segment {i} (offset {o}, {n} bytes) is wrong")
            if not (dst[o + n : o + n + recv_gap] == 0xEE).all():
                sys.exit(f"the gap after segment {i} was written")
        segs = [(sreg, so, n, o) for o, n, so in zip(roffs, lens, soffs)]
        with s.post(tcpx.SEND, segs) as t:
            assert t.wait(WAIT_S) == sum(lens)
    print(f"segments: {count} segments both ways ok")


def hold(s: tcpx.Session):
    """Register a buffer, say so, then wait on stdin until killed (or told to stop)."""
    s.register(np.zeros(1 << 20, dtype=np.uint8))
    print("ready", flush=True)
    sys.stdin.readline()


def send_on_go(s: tcpx.Session, n: str):
    """Wait for a line on stdin, then send n bytes of pattern(n, 5)."""
    n = int(n)
    buf = pattern(n, seed=5)
    reg = s.register(buf)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit("no go")
    with s.post(tcpx.SEND, [reg]) as t:
        assert t.wait(WAIT_S) == n


def torch_tensors(s: tcpx.Session, here: str, there: str):
    """torch tensors: receive into a tensor on `here` ("cuda" or "cpu") and check it, then
    send another pattern from a tensor on `there` (test_gpu.py plays the other side)."""
    import torch

    n = (16 << 20) + 5
    want = torch.from_numpy(pattern(n, seed=3))
    dst = torch.zeros(n, dtype=torch.uint8, device=here)
    torch.cuda.synchronize()
    with s.register(dst) as reg:
        with s.post(tcpx.RECV, [reg]) as t:
            assert t.wait(WAIT_S) == n
        if not torch.equal(dst.cpu(), want):
            sys.exit(f"{here} tensor received wrong bytes")
    src = torch.from_numpy(pattern(n, seed=4)).to(there)
    torch.cuda.synchronize()
    with s.register(src) as reg:
        with s.post(tcpx.SEND, [reg]) as t:
            assert t.wait(WAIT_S) == n
    print(f"torch: received into {here}, sent from {there}: ok")


def main():
    scenario, port = sys.argv[1], int(sys.argv[2])
    cfg = tcpx.Config()
    if scenario == "torch_tensors":
        cfg = tcpx.Config(gpu=0)
    with tcpx.Session.establish(connect=("127.0.0.1", port), config=cfg) as s:
        globals()[scenario](s, *sys.argv[3:])


if __name__ == "__main__":
    main()
