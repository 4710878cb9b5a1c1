"""Two processes over loopback: this one and peer.py, met through Session.establish."""

import signal
import threading

import numpy as np
import pytest

import tcpx
from conftest import peer, pattern
from peer import SIZES, segment_layout

WAIT_S = 60.0


def test_numpy_sizes_both_ways():
    """1 B … 64 MiB numpy arrays: sent here, checked there; sent back, checked here."""
    with peer("sizes") as (s, _):
        for n in SIZES:
            src = pattern(n, seed=n)
            dst = np.zeros(n, dtype=np.uint8)
            with s.register(src) as sreg, s.register(dst) as rreg:
                with s.post(tcpx.SEND, [sreg]) as t:
                    assert t.wait(WAIT_S) == n
                    assert t.done and t.bytes_done == t.bytes_total == n
                with s.post(tcpx.RECV, [(rreg, 0, n)]) as t:
                    assert t.wait(WAIT_S) == n
            want = pattern(n, seed=n + 1)
            mismatch = np.flatnonzero(dst != want)
            assert mismatch.size == 0, f"size {n}: {mismatch.size} wrong bytes from {mismatch[0]}"


@pytest.mark.parametrize("channels", [1, 3])
def test_many_segments(channels):
    """1,000 segments of odd lengths, laid out with other gaps at each end; the gaps are
    never written."""
    count, send_gap, recv_gap = 1000, 3, 13
    soffs, lens, stotal = segment_layout(count, 7, send_gap)
    roffs, _, rtotal = segment_layout(count, 7, recv_gap)
    src = pattern(stotal, seed=98)
    dst = np.full(rtotal, 0xEE, dtype=np.uint8)
    args = (str(count), str(send_gap), str(recv_gap))
    with peer("segments", *args, channels=channels, chunk_bytes=64 << 10) as (s, _):
        sreg, rreg = s.register(src), s.register(dst)
        segs = [(sreg, so, n, ro) for so, n, ro in zip(soffs, lens, roffs)]
        with s.post(tcpx.SEND, segs) as t:
            assert t.bytes_total == sum(lens)
            assert t.wait(WAIT_S) == sum(lens)
        segs = [(rreg, ro, n, so) for so, n, ro in zip(soffs, lens, roffs)]
        with s.post(tcpx.RECV, segs) as t:
            assert t.wait(WAIT_S) == sum(lens)
    want = pattern(stotal, seed=99)
    for i, (so, n, ro) in enumerate(zip(soffs, lens, roffs)):
        assert np.array_equal(dst[ro : ro + n], want[so : so + n]), f"segment {i}"
        assert (dst[ro + n : ro + n + recv_gap] == 0xEE).all(), f"gap after segment {i}"


def test_peer_killed_breaks_the_session_within_the_timeout():
    """A receive from a peer that is killed fails with the session's error (not a
    timeout) before the wait's bound, and the session then says it is broken."""
    with peer("hold", expect_exit=-signal.SIGKILL, timeout_ms=30_000) as (s, proc):
        assert proc.stdout.readline().strip() == b"ready"
        buf = np.zeros(1 << 20, dtype=np.uint8)
        reg = s.register(buf)
        t = s.post(tcpx.RECV, [reg])
        assert not t.poll()
        proc.kill()
        proc.wait(30)
        with pytest.raises(tcpx.Error) as e:
            t.wait(25.0)
        assert not isinstance(e.value, tcpx.TimeoutError), e.value
        assert s.broken, "the session should say why it broke"
        with pytest.raises(tcpx.BrokenError, match="session broken"):
            s.post(tcpx.RECV, [reg])
        with pytest.raises(tcpx.BrokenError):
            s.progress()


def test_wait_releases_the_gil():
    """The peer sends only when a second Python thread of this process tells it to, and that
    thread runs only while the main thread is inside wait(): the transfer completes only if
    wait() let go of the GIL."""
    n = 1 << 20
    with peer("send_on_go", str(n)) as (s, proc):
        assert proc.stdout.readline().strip() == b"ready"
        dst = np.zeros(n, dtype=np.uint8)
        reg = s.register(dst)
        t = s.post(tcpx.RECV, [reg])
        waiting = threading.Event()
        ticks = []

        def other():
            waiting.wait(WAIT_S)
            # Python-level work on this thread while the main thread sits in wait().
            for i in range(50):
                ticks.append(i)
                threading.Event().wait(0.001)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

        th = threading.Thread(target=other)
        th.start()
        waiting.set()
        assert t.wait(WAIT_S) == n
        th.join(WAIT_S)
        assert len(ticks) == 50
        assert np.array_equal(dst, pattern(n, seed=5))
        t.release()


def test_establish_bad_rendezvous_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        tcpx.Session.establish()
    with pytest.raises(ValueError, match="exactly one"):
        tcpx.Session.establish(accept=("127.0.0.1", 0), connect=("127.0.0.1", 1))
    with pytest.raises(TypeError):
        tcpx.Session.establish(connect=42)
