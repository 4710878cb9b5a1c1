#!/usr/bin/env python3
"""Two-process NIXL benchmark: the same workload through our TCPX backend, NIXL's UCX backend
(UCX_TLS=tcp) and, with --peer, Mooncake Transfer Engine's TCP transport and a plain TCP
ping-pong, side by side.

For each backend a *target* process (this file, `--role target`) creates an agent with
NIXL's metadata listener and registers one buffer (`--mem DRAM`, or `VRAM` on GPU 0: UCX then
runs with UCX_TLS=tcp,cuda_copy); this process (the *initiator*)
fetches its metadata through the listener, then for every (op, batch, size) prepares one
transfer of `batch` descriptors of `size` bytes each and reposts it `iters` times, one at a
time, polling `check_xfer_state` until DONE (back to back for 20 µs, then yielding the core
between checks: `--poll`). Like nixlbench, every transfer carries a
notification (the target drains them). Reported per point: throughput (bytes moved / time
spent in transfers), the latency distribution of one transfer (post to DONE: p50, p90, p99,
p99.9, every sample kept in --json), CPU time per transfer of both processes, the load
average, and TCPX's ratios to each other backend. Every point's data is checked once: a READ
brings the target's pattern into a zeroed local buffer, a WRITE rewrites a target buffer the
target zeroed, and the target compares.

Peers beside UCX (`--peer mooncake,tcp`, or name them in --backends):
- MOONCAKE: Mooncake Transfer Engine (`mooncake-transfer-engine-non-cuda` from PyPI; its
  engine needs Debian's libibverbs1 even for TCP) with protocol "tcp" and P2P handshake, one
  engine per process; batch 1 is `transfer_sync` with a notification (as NIXL's), a batch is
  `batch_transfer_sync_{write,read}` (Mooncake has no notification for those). DRAM only.
- TCP: a plain TCP ping-pong between the two processes (TCP_NODELAY, blocking sockets, from
  Python like every other peer): WRITE sends a 9-byte header and the data, the target answers
  one byte; READ sends the header, the target answers the data. The machine's own floor and
  its scheduling noise (p99/p50) under the same harness.
- TCP-POLL: the same ping-pong on non-blocking sockets, both sides waiting the way the NIXL
  initiator polls (`--poll`: back to back, then yielding the core between tries): no thread
  sleeps, so no wake-up is in its latency, as none is in a transfer whose threads stay on a
  core; its p99/p50 is the scheduling noise such threads see on this machine (a timer
  interrupt or another thread taking their core mid-transfer).

`--rounds N` repeats every backend N times, interleaved (TCPX, UCX, ..., TCPX, UCX, ...),
each round with fresh processes; the table shows the median of the rounds and the spread of
GB/s around it. `--tail` takes 10,000 iterations per point up to 1 MiB (p99.9 needs at least
1,000 samples to be more than the maximum).

Usually run through scripts/bench-nixl.sh, which builds the release plugin. Directly:

    NIXL_PLUGIN_DIR is set by this script: it builds a temporary plugin folder with links to
    --tcpx-plugin and the wheel's libplugin_UCX.so (NIXL_PLUGIN_DIR replaces the default).

    .venv/bin/python benches/nixl/nixl_bench.py --tcpx-plugin target/plugins/libplugin_TCPX.so \
        --sizes 4K,1M --batches 1,16 --json out.json
    .venv/bin/python benches/nixl/nixl_bench.py --sizes 4K,64K,1M --batches 1 --ops WRITE,READ \
        --peer mooncake,tcp --tail --rounds 4 --json tail.json
"""

import argparse
import gc
import json
import os
import pathlib
import queue
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "nixl"))  # cuda_mem: device memory without torch
NOTIF = b"nixl-bench"
BOUND_S = 300  # any single wait (metadata, one transfer, a reply) fails past this
NIXL_BACKENDS = ("TCPX", "UCX")
PEERS = {"ucx": "UCX", "mooncake": "MOONCAKE", "tcp": "TCP", "tcp-poll": "TCP-POLL"}
TAIL_ITERS = 10_000  # --tail: iterations per point up to TAIL_MAX_BYTES
TAIL_MAX_BYTES = 1 << 20
# Percentiles reported per point, as (JSON key suffix, percent).
PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9))
MOONCAKE_PIP = "mooncake-transfer-engine-non-cuda"


def parse_size(s):
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(s[:-1] if s[-1:] in "KMG" else s) * mult


def fmt_size(n):
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def pattern(n, seed):
    """n bytes repeating with period 251 (cheap for GiB buffers: no wide temporaries)."""
    import numpy as np

    period = ((np.arange(251, dtype=np.uint32) * 7 + seed) % 251).astype(np.uint8)
    return np.resize(period, n)


def percentile(sorted_samples, p):
    """Nearest-rank percentile of sorted samples (the same rule as `tcpx bench`): the
    smallest sample with at least p % of the samples at or below it."""
    n = len(sorted_samples)
    if n == 0:
        return float("nan")
    permille = round(p * 10)  # integer arithmetic: ceil(p/100 * n) without float error
    rank = max(1, -(-permille * n // 1000))
    return sorted_samples[min(rank, n) - 1]


def summarize(samples_s):
    """The distribution of one point's latencies (seconds in, µs out)."""
    s = sorted(samples_s)
    out = {f"{k}_us": percentile(s, p) * 1e6 for k, p in PERCENTILES}
    out["mean_us"] = statistics.fmean(s) * 1e6 if s else float("nan")
    out["max_us"] = s[-1] * 1e6 if s else float("nan")
    return out


def thread_sched(pid=None):
    """{thread name: [CPU ns, runqueue wait ns, times scheduled]} of a process's threads,
    summed by name (/proc/<pid>/task/*/schedstat; helper threads share a name)."""
    out = {}
    base = pathlib.Path(f"/proc/{pid or os.getpid()}/task")
    for t in base.iterdir():
        try:
            name = (t / "comm").read_text().strip()
            run, wait, n = ((t / "schedstat").read_text().split() + ["0"] * 3)[:3]
        except OSError:
            continue  # the thread exited
        name = name.rstrip("0123456789-") or name  # tcpxsock-0..3 -> tcpxsock
        acc = out.setdefault(name, [0, 0, 0])
        acc[0] += int(run)
        acc[1] += int(wait)
        acc[2] += int(n)
    return out


def sched_per_xfer(before, after, n):
    """Per transfer, by thread name: CPU µs, µs waiting for a CPU while runnable, and how
    often it was scheduled (from two `thread_sched` snapshots)."""
    out = {}
    for name, (r1, w1, n1) in after.items():
        r0, w0, n0 = before.get(name, (0, 0, 0))
        if r1 - r0 or w1 - w0:
            out[name] = {"cpu_us": (r1 - r0) / n / 1e3, "wait_us": (w1 - w0) / n / 1e3,
                         "runs": (n1 - n0) / n}
    return out


def mooncake_engine():
    """Mooncake's TransferEngine class, or SystemExit saying what to install."""
    os.environ.setdefault("GLOG_minloglevel", "1")  # its INFO lines would bury ours
    try:
        from mooncake.engine import TransferEngine  # noqa: F401
    except ImportError as e:
        why = str(e)
        hint = (
            f"install it into this interpreter: {sys.executable} -m pip install --no-deps "
            f"{MOONCAKE_PIP}; its engine also needs Debian's libibverbs1, even for TCP "
            "(apt-get install libibverbs1)"
        )
        if "libibverbs" in why:
            hint = "apt-get install libibverbs1 (Mooncake's engine links it even for TCP)"
        raise SystemExit(
            f"--peer mooncake: Mooncake Transfer Engine ({MOONCAKE_PIP}) cannot be imported "
            f"({why}); {hint}"
        ) from None
    return TransferEngine


class Buffer:
    """The bench's memory: a numpy array (DRAM) or device memory on GPU 0 (VRAM), holding
    pattern(n, seed)."""

    def __init__(self, mem, n, seed):
        self.mem, self.n, self.seed = mem, n, seed
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

    def check_head(self, k):
        """None when the first k bytes hold the pattern, else the first wrong offset."""
        import numpy as np

        bad = np.flatnonzero(self.head(k) != pattern(k, self.seed))
        return int(bad[0]) if bad.size else None

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
    if backend == "TCP-POLL":
        return {"spin_s": poll_spin_s(args)}
    return {}


def poll_spin_s(args):
    """How long a polling side checks back to back before yielding the core (`--poll`)."""
    return args.poll_spin_us / 1e6 if args.poll == "yield" else float("inf")


def make_agent(name, backend, params):
    """An agent with NIXL's metadata listener and `backend`; returns (agent, listener port)."""
    from nixl_wheel import listening_agent

    agent, port = listening_agent(name)
    if backend not in agent.get_plugin_list():
        raise SystemExit(f"NIXL found no {backend} plugin in {os.environ.get('NIXL_PLUGIN_DIR')}")
    # Custom params reach the backend only through create_backend (nixl_agent_config has no
    # field for them).
    agent.create_backend(backend, params)
    if backend not in agent.backends:
        raise SystemExit(f"backend {backend} was not created")
    return agent, port


# --------------------------------------------------------------------------------- target


def recv_exact(sock, view, spin_s=None):
    """Fills `view` from `sock`: blocking, or (`spin_s` given) on a non-blocking socket
    waiting by `polled`."""
    got = 0
    while got < len(view):
        if spin_s is None:
            n = sock.recv_into(view[got:])
        else:
            n = polled(lambda: sock.recv_into(view[got:]), spin_s)
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def polled(try_once, spin_s):
    """Calls `try_once` until it does not raise BlockingIOError: back to back for `spin_s`,
    then yielding the core between tries (the NIXL initiator's `--poll`); returns its value."""
    t0 = None
    while True:
        try:
            return try_once()
        except BlockingIOError:
            now = time.perf_counter()
            if t0 is None:
                t0 = now
            elif now - t0 > BOUND_S:
                raise TimeoutError(f"no progress on the socket in {BOUND_S}s") from None
            elif now - t0 > spin_s:
                os.sched_yield()


def send_polled(sock, view, spin_s):
    """sendall on a non-blocking socket, waiting by `polled`."""
    sent = 0
    while sent < len(view):
        sent += polled(lambda: sock.send(view[sent:]), spin_s)


class TcpIo:
    """The TCP ping-pong's socket calls: blocking (TCP), or non-blocking and polled
    (TCP-POLL, `spin_s` of back-to-back tries before yielding)."""

    def __init__(self, sock, spin_s=None):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.spin_s = sock, spin_s
        if spin_s is not None:
            sock.setblocking(False)

    def recv(self, view):
        recv_exact(self.sock, view, self.spin_s)

    def send(self, data):
        if self.spin_s is None:
            self.sock.sendall(data)
        else:
            send_polled(self.sock, memoryview(data).cast("B"), self.spin_s)


def tcp_serve(listener, buf, spin_s):
    """The TCP peer's target side: one connection, `W len` + data -> 1 byte, `R len` -> data."""
    conn, _ = listener.accept()
    io = TcpIo(conn, spin_s)
    view = memoryview(buf.host).cast("B")
    head = bytearray(9)
    try:
        while True:
            io.recv(memoryview(head))
            op, n = head[0:1], struct.unpack("<Q", head[1:])[0]
            if op == b"W":
                io.recv(view[:n])
                io.send(b"\x01")
            else:
                io.send(view[:n])
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()


def run_target(args):
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # NIXL's own prints must not mix with our replies
    out_lock = threading.Lock()

    def reply(obj):
        with out_lock:
            out.write(json.dumps(obj) + "\n")

    buf = Buffer(args.mem, args.bytes, 5)
    agent = engine = reg = None
    hello = {"addr": buf.addr, "len": buf.n}
    if args.backend in NIXL_BACKENDS:
        agent, hello["port"] = make_agent(args.name, args.backend, json.loads(args.params))
        reg = agent.register_memory([(buf.addr, buf.n, 0, "")], args.mem)
        drain = lambda: sum(len(v) for v in agent.get_new_notifs().values())  # noqa: E731
    elif args.backend == "MOONCAKE":
        engine = mooncake_engine()()
        if engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
            raise SystemExit("Mooncake: initialize failed")
        if engine.register_memory(buf.addr, buf.n) != 0:
            raise SystemExit("Mooncake: register_memory failed")
        hello["rpc_port"] = engine.get_rpc_port()
        drain = lambda: len(engine.get_notifies())  # noqa: E731
    else:  # TCP, TCP-POLL
        listener = socket.create_server(("127.0.0.1", 0))
        hello["tcp_port"] = listener.getsockname()[1]
        spin_s = json.loads(args.params).get("spin_s")
        threading.Thread(target=tcp_serve, args=(listener, buf, spin_s), daemon=True).start()
        drain = lambda: 0  # noqa: E731
    quit_ = threading.Event()
    expected = [None]

    def stdin_watch():
        # Commands from the initiator, between timed iterations only.
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "quit":
                expected[0] = int(cmd[1])
                break
            if cmd[0] == "zero":
                buf.zero_head(int(cmd[1]))
                reply({"ok": True})
            elif cmd[0] == "check":
                reply({"first_bad": buf.check_head(int(cmd[1]))})
            elif cmd[0] == "cpu":
                reply({"cpu_s": time.process_time(), "sched": thread_sched()})
        quit_.set()  # "quit N" or the initiator died (EOF)

    threading.Thread(target=stdin_watch, daemon=True).start()
    reply(hello)
    notifs = 0
    while not quit_.is_set():
        notifs += drain()
        time.sleep(0.0005)
    # A READ's notification leaves the initiator after its DONE: wait (bounded) for the rest.
    deadline = time.monotonic() + 10
    while expected[0] is not None and notifs < expected[0] and time.monotonic() < deadline:
        notifs += drain()
        time.sleep(0.001)
    reply({"notifs": notifs})
    if agent is not None:
        agent.deregister_memory(reg)
    buf.free()


# ------------------------------------------------------------------------------ initiator


class Target:
    def __init__(self, args, backend, nbytes, env):
        self.name = f"bench-target-{backend.lower()}"
        cmd = [
            sys.executable, __file__, "--role", "target", "--backend", backend,
            "--name", self.name, "--bytes", str(nbytes),
            "--params", json.dumps(backend_params(args, backend)), "--mem", args.mem,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.buf = self.reply()
        # NIXL's metadata listener (NIXL backends only): the target picks its port.
        self.port = self.buf.get("port")

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

    def ask(self, *cmd):
        self.proc.stdin.write(" ".join(str(c) for c in cmd) + "\n")
        self.proc.stdin.flush()
        return self.reply()

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
    if args.tail and nbytes <= TAIL_MAX_BYTES:
        return TAIL_ITERS
    return max(args.min_iters, min(args.max_iters, args.budget // nbytes))


class NixlDriver:
    """Initiator side through a NIXL agent (TCPX or UCX)."""

    notifies = True

    def __init__(self, args, backend, target, local):
        self.backend = backend
        self.agent, _ = make_agent(
            f"bench-init-{backend.lower()}", backend, backend_params(args, backend)
        )
        self.reg = self.agent.register_memory([(local.addr, local.n, 0, "")], args.mem)
        self.target, self.mem, self.local = target, args.mem, local
        self.spin_s = poll_spin_s(args)
        self.agent.fetch_remote_metadata(target.name, "127.0.0.1", target.port)
        deadline = time.monotonic() + BOUND_S
        while not self.agent.check_remote_metadata(target.name):
            if time.monotonic() > deadline:
                raise SystemExit(f"{backend}: target metadata never arrived")
            time.sleep(0.005)
        self.agent.send_local_metadata("127.0.0.1", target.port)

    def prepare(self, op, batch, size):
        a = self.agent
        ldesc = a.get_xfer_descs(
            [(self.local.addr + i * size, size, 0) for i in range(batch)], self.mem
        )
        rdesc = a.get_xfer_descs(
            [(self.target.buf["addr"] + i * size, size, 0) for i in range(batch)], self.mem
        )
        self.h = a.initialize_xfer(op, ldesc, rdesc, self.target.name, NOTIF)
        self.what = f"{self.backend} {op} {size}x{batch}"

    def once(self):
        """One transfer, post to DONE; returns its start and end (perf_counter)."""
        a, h, spin_s = self.agent, self.h, self.spin_s
        t0 = time.perf_counter()
        state = a.transfer(h)
        while state == "PROC":
            state = a.check_xfer_state(h)
            waited = time.perf_counter() - t0
            if waited > spin_s:
                os.sched_yield()
            if waited > BOUND_S:
                raise SystemExit(f"{self.what}: stuck")
        t1 = time.perf_counter()
        if state != "DONE":
            raise SystemExit(f"{self.what}: {state}")
        return t0, t1

    def finish(self):
        self.agent.release_xfer_handle(self.h)

    def close(self):
        self.agent.remove_remote_agent(self.target.name)
        self.agent.deregister_memory(self.reg)
        del self.agent


class MooncakeDriver:
    """Initiator side through Mooncake Transfer Engine's TCP transport."""

    notifies = True  # batch 1 only; see `prepare`

    def __init__(self, args, backend, target, local):
        if args.mem != "DRAM":
            raise SystemExit("--peer mooncake: DRAM only (the non-CUDA engine)")
        TransferEngine = mooncake_engine()
        self.engine = TransferEngine()
        if self.engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") != 0:
            raise SystemExit("Mooncake: initialize failed")
        if self.engine.register_memory(local.addr, local.n) != 0:
            raise SystemExit("Mooncake: register_memory failed")
        self.peer = f"127.0.0.1:{target.buf['rpc_port']}"
        self.target, self.local = target, local

    def prepare(self, op, batch, size):
        from mooncake.engine import TransferNotify, TransferOpcode

        e, peer = self.engine, self.peer
        laddr, raddr = self.local.addr, self.target.buf["addr"]
        self.what = f"MOONCAKE {op} {size}x{batch}"
        self.notifies = batch == 1
        if batch == 1:
            opcode = TransferOpcode.Write if op == "WRITE" else TransferOpcode.Read
            notify = TransferNotify("bench-init-mooncake", NOTIF.decode())
            self.call = lambda: e.transfer_sync(peer, laddr, raddr, size, opcode, notify)
        else:
            ls = [laddr + i * size for i in range(batch)]
            rs = [raddr + i * size for i in range(batch)]
            ns = [size] * batch
            fn = e.batch_transfer_sync_write if op == "WRITE" else e.batch_transfer_sync_read
            self.call = lambda: fn(peer, ls, rs, ns)

    def once(self):
        t0 = time.perf_counter()
        rc = self.call()
        t1 = time.perf_counter()
        if rc != 0:
            raise SystemExit(f"{self.what}: Mooncake returned {rc}")
        return t0, t1

    def finish(self):
        pass

    def close(self):
        self.engine.unregister_memory(self.local.addr)


class TcpDriver:
    """Initiator side of the plain TCP ping-pong (blocking, or polled: TCP-POLL)."""

    notifies = False

    def __init__(self, args, backend, target, local):
        if args.mem != "DRAM":
            raise SystemExit(f"--peer {backend.lower()}: DRAM only")
        self.sock = socket.create_connection(("127.0.0.1", target.buf["tcp_port"]))
        self.io = TcpIo(self.sock, poll_spin_s(args) if backend == "TCP-POLL" else None)
        self.view = memoryview(local.host).cast("B")
        self.one = memoryview(bytearray(1))

    def prepare(self, op, batch, size):
        n = size * batch
        io, view, one = self.io, self.view, self.one
        if op == "WRITE":
            head = b"W" + struct.pack("<Q", n)

            def call():
                io.send(head)
                io.send(view[:n])
                io.recv(one)
        else:
            head = b"R" + struct.pack("<Q", n)

            def call():
                io.send(head)
                io.recv(view[:n])
        self.call = call

    def once(self):
        t0 = time.perf_counter()
        self.call()
        return t0, time.perf_counter()

    def finish(self):
        pass

    def close(self):
        self.sock.close()


DRIVERS = {"TCPX": NixlDriver, "UCX": NixlDriver, "MOONCAKE": MooncakeDriver, "TCP": TcpDriver,
           "TCP-POLL": TcpDriver}


def bench_backend(args, backend, env, round_=0):
    max_bytes = max(args.sizes) * max(args.batches)
    target = Target(args, backend, max_bytes, env)
    results = []
    notif_expected = 0
    try:
        # Both sides hold the same pattern, so every READ can be checked against it, and a
        # WRITE into a target buffer the target zeroed must bring the pattern back.
        local = Buffer(args.mem, max_bytes, 5)
        driver = DRIVERS[backend](args, backend, target, local)
        for op in args.ops:
            for batch in args.batches:
                for size in args.sizes:
                    nbytes = size * batch
                    driver.prepare(op, batch, size)
                    n = iterations(args, nbytes)
                    # The first transfer must bring the whole range back.
                    if op == "READ":
                        local.zero_head(nbytes)
                    else:
                        target.ask("zero", nbytes)
                    driver.once()
                    if op == "READ":
                        bad = local.check_head(nbytes)
                    else:
                        bad = target.ask("check", nbytes)["first_bad"]
                    if bad is not None:
                        raise SystemExit(f"{backend} {op} {size}x{batch}: wrong data at "
                                         f"byte {bad}")
                    for _ in range(args.warmup - 1):
                        driver.once()
                    notif_expected += max(1, args.warmup) * driver.notifies
                    load0 = os.getloadavg()
                    t_cpu = target.ask("cpu")
                    cpu_t0, cpu_i0 = t_cpu["cpu_s"], time.process_time()
                    sched_t0, sched_i0 = t_cpu["sched"], thread_sched()
                    samples = [0.0] * n
                    starts = [0.0] * n
                    # Python's cyclic collector would otherwise stop this loop for hundreds
                    # of µs every few ms (the transfers' own objects trigger it): a pause of
                    # the harness, not of any backend.
                    gc.collect()
                    gc.disable()
                    try:
                        for it in range(n):
                            t0, t1 = driver.once()
                            samples[it] = t1 - t0
                            starts[it] = t0
                    finally:
                        gc.enable()
                    cpu_i1, sched_i1 = time.process_time(), thread_sched()
                    t_cpu = target.ask("cpu")
                    cpu_t1, sched_t1 = t_cpu["cpu_s"], t_cpu["sched"]
                    load1 = os.getloadavg()
                    notif_expected += n * driver.notifies
                    driver.finish()
                    r = {
                        "backend": backend, "mem": args.mem, "op": op, "batch": batch,
                        "size": size, "round": round_,
                        "iters": n,
                        "gbps": nbytes * n / sum(samples) / 1e9,
                        **summarize(samples),
                        "cpu_us_initiator": (cpu_i1 - cpu_i0) / n * 1e6,
                        "cpu_us_target": (cpu_t1 - cpu_t0) / n * 1e6,
                        # Per thread (by name): where the CPU went and who waited for one.
                        "sched": {"I": sched_per_xfer(sched_i0, sched_i1, n),
                                  "T": sched_per_xfer(sched_t0, sched_t1, n)},
                        "loadavg_before": list(load0),
                        "loadavg_after": list(load1),
                        "notified": bool(driver.notifies),
                        "samples_us": [round(s * 1e6, 2) for s in samples],
                    }
                    if args.trace:
                        # perf_counter is CLOCK_MONOTONIC: the trace files' clock.
                        r["pids"] = {"I": os.getpid(), "T": target.proc.pid}
                        r["starts_ns"] = [int(t * 1e9) for t in starts]
                    results.append(r)
                    print(
                        f"  {backend:8} {op:5} batch {batch:2} {fmt_size(size):>4}: "
                        f"{r['gbps']:7.3f} GB/s  p50 {r['p50_us']:8.1f}  p90 {r['p90_us']:8.1f}"
                        f"  p99 {r['p99_us']:8.1f}  p99.9 {r['p999_us']:8.1f} us  "
                        f"cpu {r['cpu_us_initiator'] + r['cpu_us_target']:6.1f} us/xfer  "
                        f"({n} iters, load {load1[0]:.2f})\n      runqueue wait per xfer: "
                        + ", ".join(f"{w}:{t} {v['wait_us']:.1f} us" for w, t, v in sorted(
                            ((w, t, v) for w in ("I", "T") for t, v in r["sched"][w].items()),
                            key=lambda x: -x[2]["wait_us"])[:5]),
                        file=sys.stderr, flush=True,
                    )
        driver.close()
        del driver
        local.free()
    finally:
        notifs = target.close(notif_expected)
    print(f"  {backend}: target saw {notifs} of {notif_expected} notifications", file=sys.stderr)
    return results, {"notifs_received": notifs, "notifs_sent": notif_expected}


def gpu_present():
    from cuda_mem import gpu_reason

    return gpu_reason() is None


def plugin_env(tcpx_plugin, mem):
    """NIXL_PLUGIN_DIR replaces the wheel's plugin folder, so UCX must be linked in. The
    wheel's UCX plugin finds its libraries (libucp, libnixl_common, ...) through
    RPATH `$ORIGIN/..:$ORIGIN/../../<wheel>.libs`, which a link in another folder breaks:
    those two folders go on LD_LIBRARY_PATH (read at process start, hence the re-exec).
    The NIXL is whichever tests/nixl/nixl_wheel.py imports (`nixl`, nixl_cu12 or nixl_cu13;
    TCPX_NIXL_MODULE picks one)."""
    import nixl_wheel

    site = nixl_wheel.SITE
    libs = nixl_wheel.LIBS
    ucx = libs / "plugins" / "libplugin_UCX.so"
    d = pathlib.Path(tempfile.mkdtemp(prefix="nixl-bench-plugins-"))
    (d / "libplugin_TCPX.so").symlink_to(pathlib.Path(tcpx_plugin).resolve())
    if ucx.is_file():
        (d / "libplugin_UCX.so").symlink_to(ucx)
    env = dict(os.environ)
    env["NIXL_PLUGIN_DIR"] = str(d)
    env["NIXL_BENCH_PLUGIN_DIR"] = str(d)
    path = [str(libs), str(site / f"{nixl_wheel.WHEEL}.libs")]
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


def combine(results):
    """One row per (backend, op, batch, size): the median over rounds of each statistic,
    and the spread of GB/s around its median (max |x / median - 1|)."""
    groups = {}
    for r in results:
        groups.setdefault((r["backend"], r["op"], r["batch"], r["size"]), []).append(r)
    rows = {}
    for key, rs in groups.items():
        row = {k: statistics.median(r[k] for r in rs)
               for k in ("gbps", "p50_us", "p90_us", "p99_us", "p999_us",
                         "cpu_us_initiator", "cpu_us_target")}
        row["rounds"] = len(rs)
        row["iters"] = rs[0]["iters"]
        row["gbps_spread"] = max(abs(r["gbps"] / row["gbps"] - 1) for r in rs)
        row["load1"] = max(r["loadavg_after"][0] for r in rs)
        rows[key] = row
    return rows


def table(results, backends):
    rows = combine(results)
    rounds = max((r["rounds"] for r in rows.values()), default=1)
    points = sorted({k[1:] for k in rows}, key=lambda k: (k[0] != "WRITE", k[1], k[2]))
    head = ("| op | batch | size | backend | GB/s | " + ("GB/s ± | " if rounds > 1 else "")
            + "p50 us | p90 us | p99 us | p99.9 us | p99/p50 | cpu us/xfer | load |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for op, batch, size in points:
        for b in backends:
            r = rows.get((b, op, batch, size))
            if r is None:
                continue
            cells = [op, str(batch), fmt_size(size), b, f"{r['gbps']:.3f}"]
            if rounds > 1:
                cells.append(f"{r['gbps_spread'] * 100:.0f} %")
            cells += [f"{r['p50_us']:.0f}", f"{r['p90_us']:.0f}", f"{r['p99_us']:.0f}",
                      f"{r['p999_us']:.0f}", f"{r['p99_us'] / r['p50_us']:.1f}",
                      f"{r['cpu_us_initiator'] + r['cpu_us_target']:.1f}",
                      f"{r['load1']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    others = [b for b in backends if b != "TCPX"]
    if "TCPX" in backends and others:
        head = "| op | batch | size | " + " | ".join(
            f"vs {b}: GB/s | p50 | p99" for b in others) + " |"
        lines += ["", "TCPX / peer (GB/s: higher is better; latency: lower is better)", "",
                  head, "|" + "---|" * (head.count("|") - 1)]
        for op, batch, size in points:
            t = rows.get(("TCPX", op, batch, size))
            if t is None:
                continue
            cells = [op, str(batch), fmt_size(size)]
            for b in others:
                u = rows.get((b, op, batch, size))
                cells += ([f"{t['gbps'] / u['gbps']:.2f}", f"{t['p50_us'] / u['p50_us']:.2f}",
                           f"{t['p99_us'] / u['p99_us']:.2f}"] if u else ["-"] * 3)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_trace(path):
    """(ns, tid, label) of one process's trace file (lines `ns tid label key`), in time
    order."""
    events = []
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                continue
            f = line.split()
            key = int(f[3], 16) if len(f) > 3 else 0
            events.append((int(f[0]), int(f[1]), f[2], key))
    events.sort()
    return events


# Hand-offs between threads, as (from stage, to stage, what it measures): the same request
# (key) passing from one to the next.
HANDOFFS = (
    ("sock.send.dispatch", "sock.helper.send.job", "send helper woken"),
    ("sock.helper.send.done", "sock.send.done", "send completion seen by test"),
    ("sock.recv.dispatch", "sock.helper.recv.job", "recv helper woken"),
    ("sock.helper.recv.done", "sock.recv.done", "recv completion seen by test"),
    ("sock.recv.header", "sock.recv.inline", "inline payload read"),
)


def handoffs(events):
    """{what: [µs]} for each HANDOFFS pair: from each `from` event to the next `to` event
    with the same key."""
    want = {a: (b, what) for a, b, what in HANDOFFS}
    ends = {b for _, b, _ in HANDOFFS}
    open_, out = {}, {}
    for ns, _tid, label, key in events:
        if label in want and key:
            open_[(want[label][0], key)] = (ns, want[label][1])
        if label in ends and key:
            started = open_.pop((label, key), None)
            if started:
                out.setdefault(started[1], []).append((ns - started[0]) / 1000)
    return out


def trace_report(json_path):
    """Per point: each traced stage's offset from the transfer's start (first occurrence in
    the transfer's window), at the median transfer and across the slowest 1 %, and how often
    the stages repeat. A stage whose offset grows in the slow transfers is where the tail is."""
    import bisect

    doc = json.loads(pathlib.Path(json_path).read_text())
    prefix = doc["config"].get("trace")
    if not prefix:
        raise SystemExit(f"{json_path}: not a --trace run")
    cache = {}

    def events(pid):
        if pid not in cache:
            f = pathlib.Path(f"{prefix}.{pid}")
            cache[pid] = load_trace(f) if f.is_file() else []
        return cache[pid]

    for r in doc["results"]:
        if "starts_ns" not in r:
            continue
        streams = {who: events(pid) for who, pid in r["pids"].items()}
        if not any(streams.values()):
            print(f"{r['backend']} {r['op']} {fmt_size(r['size'])}x{r['batch']}: no trace events")
            continue
        keys = {who: [e[0] for e in ev] for who, ev in streams.items()}
        lat = r["samples_us"]
        n = len(lat)
        order = sorted(range(n), key=lambda i: lat[i])
        tail = order[-max(1, n // 100):]
        mid = order[n // 4: 3 * n // 4]
        per_iter = []
        for i, t0 in enumerate(r["starts_ns"]):
            t1 = t0 + int(lat[i] * 1000)
            first, count = {}, {}
            for who, ev in streams.items():
                lo = bisect.bisect_left(keys[who], t0)
                hi = bisect.bisect_right(keys[who], t1)
                for ns, _tid, label, _key in ev[lo:hi]:
                    k = f"{who}:{label}"
                    first.setdefault(k, (ns - t0) / 1000)
                    count[k] = count.get(k, 0) + 1
            per_iter.append((first, count))
        labels = sorted({k for f, _ in per_iter for k in f},
                        key=lambda k: statistics.median(
                            [f[k] for f, _ in per_iter if k in f]))

        def med(idx, k, what):
            v = [per_iter[i][what][k] for i in idx if k in per_iter[i][what]]
            return (statistics.median(v), len(v)) if v else (float("nan"), 0)

        print(f"\n{r['backend']} {r['op']} {fmt_size(r['size'])} x{r['batch']}: {n} transfers, "
              f"p50 {r['p50_us']:.1f} us, p99 {r['p99_us']:.1f} us; slowest 1 % = {len(tail)} "
              f"transfers from {lat[tail[0]]:.1f} us")
        print(f"  {'stage (I initiator, T target)':38} {'µs from post: mid 50 %':>22} "
              f"{'slowest 1 %':>12} {'seen mid/slow':>14} {'per xfer mid/slow':>18}")
        for k in labels:
            (m, mn), (t, tn) = med(mid, k, 0), med(tail, k, 0)
            (cm, _), (ct, _) = med(mid, k, 1), med(tail, k, 1)
            print(f"  {k:38} {m:22.1f} {t:12.1f} {mn:6}/{tn:<7} {cm:8.1f}/{ct:<8.1f}")
        t_lo, t_hi = r["starts_ns"][0], r["starts_ns"][-1] + int(lat[-1] * 1000)
        for who, ev in streams.items():
            lo, hi = bisect.bisect_left(keys[who], t_lo), bisect.bisect_right(keys[who], t_hi)
            for name, d in handoffs(ev[lo:hi]).items():
                d.sort()
                m = len(d)
                print(f"  hand-off {who}: {name:44} n {m:6}  p50 {d[m // 2]:7.1f}  "
                      f"p90 {d[m * 9 // 10]:7.1f}  p99 {d[m * 99 // 100]:7.1f}  "
                      f"max {d[-1]:8.1f} us")


def parse_backends(args):
    """--backends plus --peer, upper-cased, in order, once each; a bad name is an error."""
    names = [b.strip().upper() for b in args.backends.split(",") if b.strip()]
    for p in (p.strip().lower() for p in (args.peer or "").split(",") if p.strip()):
        if p not in PEERS:
            raise SystemExit(f"--peer {p!r}: expected one of {', '.join(PEERS)}")
        names.append(PEERS[p])
    out = []
    for n in names:
        if n not in DRIVERS:
            raise SystemExit(f"--backends: unknown backend {n!r} ({', '.join(DRIVERS)})")
        if n not in out:
            out.append(n)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["initiator", "target"], default="initiator")
    p.add_argument("--backends", default="TCPX,UCX",
                   help="comma list of TCPX, UCX, MOONCAKE, TCP, TCP-POLL")
    p.add_argument("--peer", help="peers to add beside --backends: ucx, mooncake, tcp, tcp-poll "
                   "(comma list)")
    p.add_argument("--ops", default="WRITE,READ")
    p.add_argument("--sizes", default="4K,64K,1M,4M,16M,64M")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--iters", type=int, default=0, help="fixed iterations per point (0: auto)")
    p.add_argument("--tail", action="store_true",
                   help=f"{TAIL_ITERS} iterations per point up to {fmt_size(TAIL_MAX_BYTES)} "
                   "(unless --iters), so p99.9 has 10 samples beyond it")
    p.add_argument("--poll", choices=["spin", "yield"], default="yield",
                   help="NIXL backends and TCP-POLL: check_xfer_state (the socket) with "
                   "sched_yield between checks once --poll-spin-us have passed (yield, the default: a thread the transfer needs "
                   "gets this core at once instead of at the next scheduler tick, which on a "
                   "2-core machine is what p99 measures otherwise; docs/PERFORMANCE.md), or "
                   "back to back for as long as it takes (spin, as nixlbench does)")
    p.add_argument("--poll-spin-us", type=float, default=20,
                   help="with --poll yield: check back to back for this long first")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every backend this many times, interleaved, fresh processes")
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
    p.add_argument("--json", help="write the results here (every latency sample included)")
    p.add_argument("--trace", metavar="PREFIX",
                   help="both processes record tcpxsock's per-stage timestamps "
                   "(TCPX_SOCK_TRACE=PREFIX, files PREFIX.<pid> at exit); --json keeps each "
                   "transfer's start; read them with --trace-report")
    p.add_argument("--trace-report", metavar="JSON",
                   help="print where each transfer's time went, from a --trace run's --json")
    # target-only
    p.add_argument("--backend")
    p.add_argument("--name")
    p.add_argument("--bytes", type=int)
    p.add_argument("--params", default="{}")
    args = p.parse_args()
    if args.role == "target":
        return run_target(args)
    if args.trace_report:
        return trace_report(args.trace_report)

    args.backends = parse_backends(args)
    args.ops = [o.strip().upper() for o in args.ops.split(",")]
    args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    if "MOONCAKE" in args.backends:
        mooncake_engine()  # before anything runs: say what is missing at once
        if args.mem != "DRAM":
            raise SystemExit("--peer mooncake: DRAM only (the non-CUDA engine)")
    for b in ("TCP", "TCP-POLL"):
        if b in args.backends and args.mem != "DRAM":
            raise SystemExit(f"--peer {b.lower()}: DRAM only")
    if not pathlib.Path(args.tcpx_plugin).is_file() and "TCPX" in args.backends:
        raise SystemExit(f"no TCPX plugin at {args.tcpx_plugin}: build it (scripts/bench-nixl.sh)")

    if args.trace and not args.json:
        raise SystemExit("--trace needs --json (the transfers' start times go there)")
    if "NIXL_BENCH_PLUGIN_DIR" not in os.environ:
        env = plugin_env(args.tcpx_plugin, args.mem)
        if args.trace:
            env["TCPX_SOCK_TRACE"] = str(pathlib.Path(args.trace).resolve())
        os.execve(sys.executable, [sys.executable, __file__] + sys.argv[1:], env)
    env = dict(os.environ)
    pdir = pathlib.Path(env["NIXL_BENCH_PLUGIN_DIR"])

    results, notifs = [], {}
    try:
        for rnd in range(args.rounds):
            for b in args.backends:
                print(f"== {b}" + (f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1
                                    else ""), file=sys.stderr, flush=True)
                r, n = bench_backend(args, b, env, rnd)
                results += r
                notifs.setdefault(b, []).append(n)
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
                "mem": args.mem, "rounds": args.rounds, "tail": args.tail, "poll": args.poll,
                "poll_spin_us": args.poll_spin_us if args.poll == "yield" else None,
                "chunk_bytes": args.chunk_bytes, "window": args.window,
                "inline_read_bytes": args.inline_read_bytes,
                "inline_write_bytes": args.inline_write_bytes,
                "UCX_TLS": env["UCX_TLS"], "cpus": os.cpu_count(),
                "percentile": "nearest rank", "latency": "post to DONE, one transfer",
                "trace": env.get("TCPX_SOCK_TRACE"),
            },
            "notifications": notifs,
            "summary": [
                {"backend": k[0], "op": k[1], "batch": k[2], "size": k[3], **v}
                for k, v in combine(results).items()
            ],
            "results": results,
        }
        pathlib.Path(args.json).write_text(json.dumps(doc) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


def run_and_leave(main):
    """Runs `main` and leaves with its exit status through os._exit once the output is
    flushed, skipping the interpreter's exit handlers: the wheel's UCX libraries can crash in
    theirs (libnl-route's destructor, SIGSEGV) when stdin is not a terminal, which would turn
    a finished run into a failed one. An exception is printed and leaves with status 1.
    With --trace (TCPX_SOCK_TRACE) the interpreter exits as usual: tcpxsock writes its trace
    file in an exit handler (a traced run with UCX loaded may then crash after it)."""
    try:
        code = main()
    except SystemExit as e:  # argparse's errors and --help, our own stops
        code = e.code if isinstance(e.code, int) or e.code is None else 1
        if code == 1 and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    if os.environ.get("TCPX_SOCK_TRACE"):
        sys.exit(code or 0)
    os._exit(code or 0)


if __name__ == "__main__":
    run_and_leave(main)
