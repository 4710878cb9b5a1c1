"""What the Python layer costs: the same loopback transfers driven from Python and by the Rust
`tcpx bench --loopback`, in one command, with their ratio.

    TCPX_SOCK_IFNAME=lo python python/bench.py [--rounds 3] [--json]

Both sides measure alike: two sessions in one process, one thread posting the receive then
the send and driving both until both are done, yielding the CPU when nothing moved
(`--poller single`), host memory, one segment,
the TCPX_* environment's settings; time = post to both done, median (p50) over the
iterations. The Rust rows come from `python -m tcpx bench` (the same wheel's engine) in a
subprocess; rounds alternate Python and Rust, and the median of each side's p50s is
reported. Build the wheel with `scripts/python-tests.sh --bench` (release) first.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

# This file sits next to the package's source folder (python/tcpx, without the compiled
# module): import the installed wheel instead.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

import tcpx  # noqa: E402

# (bytes, label, iterations)
SIZES = [(4096, "4 KiB", 4000), (64 << 20, "64 MiB", 40)]


def pair(cfg):
    la, lb = tcpx.Listener(cfg), tcpx.Listener(cfg)
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("b", lb.connect(la.conn_info)))
    th.start()
    a = la.connect(lb.conn_info)
    th.join(cfg.timeout_ms / 1000)
    return a, out["b"]


def python_p50_us(tx, rx, sreg, rreg, size, iters):
    """Median microseconds of `iters` transfers, after a tenth as many warm-up ones."""
    ssegs, rsegs = [(sreg, 0, size)], [(rreg, 0, size)]
    send, recv = tcpx.SEND, tcpx.RECV
    times = []
    deadline = time.monotonic() + 600
    for i in range(iters // 10 + iters):
        t0 = time.perf_counter_ns()
        r = rx.post(recv, rsegs)
        s = tx.post(send, ssegs)
        rd = sd = False
        # As tcpx bench's single poller: drive each unfinished side, check it, and give the
        # CPU away when nothing moved (the plugin's threads share the cores).
        while True:
            moved = False
            if not rd:
                moved |= rx.progress()
                rd = r.status()
            if not sd:
                moved |= tx.progress()
                sd = s.status()
            if rd and sd:
                break
            if not moved:
                if time.monotonic() > deadline:
                    raise SystemExit("python bench: a transfer did not complete in time")
                os.sched_yield()
        t = time.perf_counter_ns() - t0
        r.release()
        s.release()
        if i >= iters // 10:
            times.append(t / 1000)
    return statistics.median(times)


def rust_p50_us(size, iters):
    """p50 of `tcpx bench --loopback` for one size (a subprocess on the same wheel)."""
    cmd = [sys.executable, "-m", "tcpx", "bench", "--loopback", "--poller", "single",
           "--size", str(size), "--iters", str(iters), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    (row,) = json.loads(p.stdout)["rows"]
    return row["p50_us"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    o = ap.parse_args()
    os.environ.setdefault("TCPX_SOCK_IFNAME", "lo")

    cfg = tcpx.Config()
    tx, rx = pair(cfg)
    rows = []
    with tx, rx:
        for size, label, iters in SIZES:
            src = np.frombuffer(np.random.default_rng(1).bytes(size), dtype=np.uint8)
            dst = np.zeros(size, dtype=np.uint8)
            sreg, rreg = tx.register(src), rx.register(dst)
            py, rs = [], []
            for _ in range(o.rounds):
                py.append(python_p50_us(tx, rx, sreg, rreg, size, iters))
                rs.append(rust_p50_us(size, iters))
            if not np.array_equal(src, dst):
                raise SystemExit(f"{label}: the received bytes differ")
            sreg.deregister()
            rreg.deregister()
            p, r = statistics.median(py), statistics.median(rs)
            rows.append({
                "bytes": size, "label": label, "iters": iters, "rounds": o.rounds,
                "python_p50_us": p, "rust_p50_us": r,
                "python_gbps": size / p / 1e3, "rust_gbps": size / r / 1e3,
                "overhead_us": p - r, "python_over_rust": p / r,
            })

    if o.json:
        print(json.dumps({"config": repr(cfg), "rows": rows}, indent=1))
        return
    print(f"tcpx Python layer vs tcpx bench --loopback --poller single ({cfg!r})")
    print("time = post both to both done, p50; median of "
          f"{o.rounds} alternating rounds per side\n")
    print(f"{'size':>8} {'iters':>6} {'rust µs':>10} {'python µs':>10} {'Δ µs':>8} "
          f"{'rust GB/s':>10} {'python GB/s':>11} {'python/rust':>12}")
    for r in rows:
        print(f"{r['label']:>8} {r['iters']:>6} {r['rust_p50_us']:>10.1f} "
              f"{r['python_p50_us']:>10.1f} {r['overhead_us']:>8.1f} {r['rust_gbps']:>10.3f} "
              f"{r['python_gbps']:>11.3f} {r['python_over_rust']:>11.3f}x")
    big = rows[-1]
    small = rows[0]
    print(f"\nPython layer: {100 * (big['python_over_rust'] - 1):+.1f} % time at "
          f"{big['label']}, {small['overhead_us']:+.1f} µs per transfer at {small['label']}")


if __name__ == "__main__":
    main()
