#!/usr/bin/env python3
"""Two-process NIXL benchmark: the same workload through our TCPX backend and NIXL's UCX
backend (UCX_TLS=tcp), side by side.

For each backend a *target* process (this file, `--role target`) creates an agent with
NIXL's metadata listener and registers one buffer (`--mem DRAM`, or `VRAM` on GPU 0: UCX then
runs with UCX_TLS=tcp,cuda_copy); this process (the *initiator*)
fetches its metadata through the listener, then for every (op, batch, size) prepares one
transfer of `batch` descriptors of `size` bytes each and reposts it `iters` times, one at a
time, polling `check_xfer_state` until DONE. Like nixlbench, every transfer carries a
notification (the target drains them). Reported per point: throughput (bytes moved / time
spent in transfers) and p50/p99 latency of one transfer (post to DONE), and the TCPX/UCX
ratios. READ data is checked once per point (the first byte range against the target's
pattern), so a backend that moves nothing cannot look fast.

Usually run through scripts/bench-nixl.sh, which builds the release plugin. Directly:

    NIXL_PLUGIN_DIR is set by this script: it builds a temporary plugin folder with links to
    --tcpx-plugin and the wheel's libplugin_UCX.so (NIXL_PLUGIN_DIR replaces the default).

    .venv/bin/python benches/nixl/nixl_bench.py --tcpx-plugin target/plugins/libplugin_TCPX.so \
        --sizes 4K,1M --batches 1,16 --json out.json
"""

import argparse
import json
import os
import pathlib
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "nixl"))  # cuda_mem: device memory without torch
NOTIF = b"nixl-bench"
BOUND_S = 300  # any single wait (metadata, one transfer, a reply) fails past this


def parse_size(s):
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "KMG" else s) * mult


def fmt_size(n):
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pattern(n, seed):
    """n bytes repeating with period 251 (cheap for GiB buffers: no wide temporaries)."""
    import numpy as np

    period = ((np.arange(251, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)
    return np.resize(period, n)


class Buffer:
    """The bench's memory: a numpy array (DRAM) or device memory on GPU 0 (VRAM), holding
    pattern(n, seed)."""

    def __init__(self, mem, n, seed):
        self.mem, self.n = mem, n
        host = pattern(n, seed)
        if mem == "VRAM":
            from cuda_mem import DeviceBuffer, gpu_reason

            why = gpu_reason()
            if why is not None:
                raise SystemExit(f"--mem VRAM: {why}")
            self.dev = DeviceBuffer(n)
            self.dev.write(host.tobytes())
            self.addr = self.dev.addr
        else:
            self.host = host
            self.addr = host.ctypes.data

    def head(self, k):
        """The first k bytes, on the host."""
        import numpy as np

        if self.mem == "VRAM":
            return np.frombuffer(self.dev.read()[:k], dtype=np.uint8)
        return self.host[:k]

    def zero_head(self, k):
        if self.mem == "VRAM":
            self.dev.write(bytes(k))  # writes the first k bytes only
        else:
            self.host[:k] = 0

    def free(self):
        if self.mem == "VRAM":
            self.dev.free()


def backend_params(args, backend):
    if backend == "TCPX":
        return {
            "channels": str(args.channels),
            "chunk_bytes": str(args.chunk_bytes),
            "window": str(args.window),
            "timeout_ms": str(args.timeout_ms),
            "inline_read_bytes": str(args.inline_read_bytes),
            "inline_write_bytes": str(args.inline_write_bytes),
        }
    return {}


def make_agent(name, port, backend, params):
    from nixl_cu12 import nixl_agent, nixl_agent_config

    agent = nixl_agent(
        name, nixl_agent_config(enable_listen_thread=True, listen_port=port, backends=[])
    )
    if backend not in agent.get_plugin_list():
        raise SystemExit(f"NIXL found no {backend} plugin in {os.environ.get('NIXL_PLUGIN_DIR')}")
    # Custom params reach the backend only through create_backend (nixl_agent_config has no
    # field for them).
    agent.create_backend(backend, params)
    if backend not in agent.backends:
        raise SystemExit(f"backend {backend} was not created")
    return agent


# --------------------------------------------------------------------------------- target


def run_target(args):
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # NIXL's own prints must not mix with our replies
    agent = make_agent(args.name, args.port, args.backend, json.loads(args.params))
    buf = Buffer(args.mem, args.bytes, 5)
    reg = agent.register_memory([(buf.addr, buf.n, 0, "")], args.mem)
    quit_ = threading.Event()

    expected = [None]

    def stdin_watch():
        for line in sys.stdin:
            if line.startswith("quit"):
                expected[0] = int(line.split()[1])
                break
        quit_.set()  # "quit N" or the initiator died (EOF)

    threading.Thread(target=stdin_watch, daemon=True).start()
    out.write(json.dumps({"addr": buf.addr, "len": buf.n}) + "\n")
    notifs = 0
    while not quit_.is_set():
        got = agent.get_new_notifs()
        notifs += sum(len(v) for v in got.values())
        time.sleep(0.0005)
    # A READ's notification leaves the initiator after its DONE: wait (bounded) for the rest.
    deadline = time.monotonic() + 10
    while expected[0] is not None and notifs < expected[0] and time.monotonic() < deadline:
        notifs += sum(len(v) for v in agent.get_new_notifs().values())
        time.sleep(0.001)
    out.write(json.dumps({"notifs": notifs}) + "\n")
    agent.deregister_memory(reg)
    buf.free()


# ------------------------------------------------------------------------------ initiator


class Target:
    def __init__(self, args, backend, nbytes, env):
        self.name = f"bench-target-{backend.lower()}"
        self.port = free_port()
        cmd = [
            sys.executable, __file__, "--role", "target", "--backend", backend,
            "--name", self.name, "--port", str(self.port), "--bytes", str(nbytes),
            "--params", json.dumps(backend_params(args, backend)), "--mem", args.mem,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.buf = self.reply()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def reply(self):
        try:
            line = self.lines.get(timeout=BOUND_S)
        except queue.Empty:
            raise SystemExit(f"{self.name}: no answer in {BOUND_S}s") from None
        if line is None:
            raise SystemExit(f"{self.name} exited (rc {self.proc.wait()})")
        return json.loads(line)

    def close(self, expected=0):
        notifs = None
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(f"quit {expected}\n")
                self.proc.stdin.flush()
                notifs = self.reply().get("notifs")
                self.proc.wait(timeout=60)
            except (OSError, SystemExit, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=60)
        return notifs


def iterations(args, nbytes):
    if args.iters:
        return args.iters
    return max(args.min_iters, min(args.max_iters, args.budget // nbytes))


def bench_backend(args, backend, env):
    import numpy as np

    max_bytes = max(args.sizes) * max(args.batches)
    target = Target(args, backend, max_bytes, env)
    results = []
    try:
        agent = make_agent(
            f"bench-init-{backend.lower()}", free_port(), backend, backend_params(args, backend)
        )
        # Both sides hold the same pattern, so WRITEs (same offsets) leave the target's bytes
        # as they were and every READ can be checked against it.
        expect = pattern(max_bytes, 5)
        local = Buffer(args.mem, max_bytes, 5)
        reg = agent.register_memory([(local.addr, local.n, 0, "")], args.mem)
        agent.fetch_remote_metadata(target.name, "127.0.0.1", target.port)
        deadline = time.monotonic() + BOUND_S
        while not agent.check_remote_metadata(target.name):
            if time.monotonic() > deadline:
                raise SystemExit(f"{backend}: target metadata never arrived")
            time.sleep(0.005)
        agent.send_local_metadata("127.0.0.1", target.port)
        for op in args.ops:
            for batch in args.batches:
                for size in args.sizes:
                    ldesc = agent.get_xfer_descs(
                        [(local.addr + i * size, size, 0) for i in range(batch)], args.mem
                    )
                    rdesc = agent.get_xfer_descs(
                        [(target.buf["addr"] + i * size, size, 0) for i in range(batch)],
                        args.mem,
                    )
                    h = agent.initialize_xfer(op, ldesc, rdesc, target.name, NOTIF)
                    n = iterations(args, size * batch)
                    lat = []
                    if op == "READ":
                        local.zero_head(size)  # the first READ must bring it back
                    for it in range(args.warmup + n):
                        t0 = time.perf_counter()
                        state = agent.transfer(h)
                        while state == "PROC":
                            state = agent.check_xfer_state(h)
                            if time.perf_counter() - t0 > BOUND_S:
                                raise SystemExit(f"{backend} {op} {size}x{batch}: stuck")
                        t1 = time.perf_counter()
                        if state != "DONE":
                            raise SystemExit(f"{backend} {op} {size}x{batch}: {state}")
                        if it == 0 and op == "READ":
                            if not np.array_equal(local.head(size), expect[:size]):
                                raise SystemExit(f"{backend} READ {size}: wrong data")
                        if it >= args.warmup:
                            lat.append(t1 - t0)
                    agent.release_xfer_handle(h)
                    lat.sort()
                    total = size * batch * len(lat)
                    r = {
                        "backend": backend, "mem": args.mem, "op": op, "batch": batch,
                        "size": size,
                        "iters": len(lat),
                        "gbps": total / sum(lat) / 1e9,
                        "p50_us": lat[len(lat) // 2] * 1e6,
                        "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
                        "mean_us": statistics.fmean(lat) * 1e6,
                    }
                    results.append(r)
                    print(
                        f"  {backend:5} {op:5} batch {batch:2} {fmt_size(size):>4}: "
                        f"{r['gbps']:7.3f} GB/s  p50 {r['p50_us']:10.1f} us  "
                        f"p99 {r['p99_us']:10.1f} us  ({r['iters']} iters)",
                        file=sys.stderr, flush=True,
                    )
        agent.remove_remote_agent(target.name)
        agent.deregister_memory(reg)
        del agent
        local.free()
    finally:
        expected = sum(args.warmup + r["iters"] for r in results)
        notifs = target.close(expected)
    print(f"  {backend}: target saw {notifs} of {expected} notifications", file=sys.stderr)
    return results, {"notifs_received": notifs, "notifs_sent": expected}


def gpu_present():
    from cuda_mem import gpu_reason

    return gpu_reason() is None


def plugin_env(tcpx_plugin, mem):
    """NIXL_PLUGIN_DIR replaces the wheel's plugin folder, so UCX must be linked in. The
    wheel's UCX plugin finds its libraries (libucp, libnixl_common, ...) through
    RPATH `$ORIGIN/..:$ORIGIN/../../nixl_cu12.libs`, which a link in another folder breaks:
    those two folders go on LD_LIBRARY_PATH (read at process start, hence the re-exec)."""
    import importlib.util

    spec = importlib.util.find_spec("nixl_cu12")
    site = pathlib.Path(spec.origin).resolve().parents[1]
    libs = site / ".nixl_cu12.mesonpy.libs"
    ucx = libs / "plugins" / "libplugin_UCX.so"
    d = pathlib.Path(tempfile.mkdtemp(prefix="nixl-bench-plugins-"))
    (d / "libplugin_TCPX.so").symlink_to(pathlib.Path(tcpx_plugin).resolve())
    if ucx.is_file():
        (d / "libplugin_UCX.so").symlink_to(ucx)
    env = dict(os.environ)
    env["NIXL_PLUGIN_DIR"] = str(d)
    env["NIXL_BENCH_PLUGIN_DIR"] = str(d)
    path = [str(libs), str(site / "nixl_cu12.libs")]
    if env.get("LD_LIBRARY_PATH"):
        path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(path)
    env.setdefault("UCX_TLS", "tcp")  # UCX over plain TCP, the like-for-like comparison
    if "cuda_copy" not in env["UCX_TLS"] and (mem == "VRAM" or gpu_present()):
        # UCX moves device memory only with cuda_copy, and NIXL's UCX backend refuses to
        # start without it on a machine with a GPU (even for DRAM).
        env["UCX_TLS"] += ",cuda_copy"
    env.setdefault("TCPX_SOCK_IFNAME", "lo")
    return env


def table(results, backends):
    key = lambda r: (r["op"], r["batch"], r["size"])  # noqa: E731
    by = {(r["backend"],) + key(r): r for r in results}
    points = sorted({key(r) for r in results}, key=lambda k: (k[0] != "WRITE", k[1], k[2]))
    two = backends == ["TCPX", "UCX"]
    head = f"| op | batch | size | " + " | ".join(
        f"{b} GB/s | {b} p50 us | {b} p99 us" for b in backends
    )
    head += " | GB/s TCPX/UCX | p50 TCPX/UCX |" if two else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for op, batch, size in points:
        cells = [op, str(batch), fmt_size(size)]
        for b in backends:
            r = by.get((b, op, batch, size))
            cells += [f"{r['gbps']:.3f}", f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}"] if r else ["-"] * 3
        if two:
            t, u = by.get(("TCPX", op, batch, size)), by.get(("UCX", op, batch, size))
            cells += (
                [f"{t['gbps'] / u['gbps']:.2f}", f"{t['p50_us'] / u['p50_us']:.2f}"]
                if t and u else ["-", "-"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["initiator", "target"], default="initiator")
    p.add_argument("--backends", default="TCPX,UCX")
    p.add_argument("--ops", default="WRITE,READ")
    p.add_argument("--sizes", default="4K,64K,1M,4M,16M,64M")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--iters", type=int, default=0, help="fixed iterations per point (0: auto)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--budget", type=parse_size, default=parse_size("2G"),
                   help="auto iterations: about this many bytes per point")
    p.add_argument("--min-iters", type=int, default=8)
    p.add_argument("--max-iters", type=int, default=1000)
    p.add_argument("--channels", type=int, default=2, help="TCPX backend param")
    p.add_argument("--chunk-bytes", type=parse_size, default=524288, help="TCPX backend param")
    p.add_argument("--window", type=int, default=16, help="TCPX backend param")
    p.add_argument("--timeout-ms", type=int, default=30000, help="TCPX backend param")
    p.add_argument("--inline-read-bytes", type=parse_size, default=16384,
                   help="TCPX backend param (0: READs always through the data session)")
    p.add_argument("--inline-write-bytes", type=parse_size, default=16384,
                   help="TCPX backend param (0: WRITEs always through the data session)")
    p.add_argument("--tcpx-plugin", default=str(REPO / "target" / "plugins" / "libplugin_TCPX.so"))
    p.add_argument("--mem", choices=["DRAM", "VRAM"], default="DRAM",
                   help="both sides' buffers: host memory, or device memory on GPU 0")
    p.add_argument("--json", help="write the results here")
    # target-only
    p.add_argument("--backend")
    p.add_argument("--name")
    p.add_argument("--port", type=int)
    p.add_argument("--bytes", type=int)
    p.add_argument("--params", default="{}")
    args = p.parse_args()
    if args.role == "target":
        return run_target(args)

    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.ops = [o.strip().upper() for o in args.ops.split(",")]
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    if not pathlib.Path(args.tcpx_plugin).is_file() and "TCPX" in args.backends:
        raise SystemExit(f"no TCPX plugin at {args.tcpx_plugin}: build it (scripts/bench-nixl.sh)")

    if "NIXL_BENCH_PLUGIN_DIR" not in os.environ:
        env = plugin_env(args.tcpx_plugin, args.mem)
        os.execve(sys.executable, [sys.executable, __file__] + sys.argv[1:], env)
    env = dict(os.environ)
    pdir = pathlib.Path(env["NIXL_BENCH_PLUGIN_DIR"])

    results, notifs = [], {}
    try:
        for b in args.backends:
            print(f"== {b}", file=sys.stderr, flush=True)
            r, n = bench_backend(args, b, env)
            results += r
            notifs[b] = n
    finally:
        for f in pdir.iterdir():
            f.unlink()
        pdir.rmdir()

    print(table(results, args.backends))
    if args.json:
        doc = {
            "config": {
                "backends": args.backends, "ops": args.ops, "sizes": args.sizes,
                "batches": args.batches, "warmup": args.warmup, "channels": args.channels,
                "mem": args.mem,
                "chunk_bytes": args.chunk_bytes, "window": args.window,
                "inline_read_bytes": args.inline_read_bytes,
                "inline_write_bytes": args.inline_write_bytes,
                "UCX_TLS": env["UCX_TLS"], "cpus": os.cpu_count(),
            },
            "notifications": notifs,
            "results": results,
        }
        pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
