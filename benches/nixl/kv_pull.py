#!/usr/bin/env python3
"""vLLM-shaped KV-cache pull over NIXL: the TCPX backend against NIXL's UCX backend
(UCX_TLS=tcp), both in the same run.

A *prefill* agent (a child process, `--role prefill`) holds a paged KV cache: `layers` × {K, V}
regions, one registration each (vLLM's NixlConnector registers one region per layer and K/V),
every region `num_blocks` blocks of `block_bytes` (a block holds `block_tokens` tokens:
block_tokens × kv_heads × head_dim × dtype_bytes). Every block is filled with a pattern that
depends on (region, block, byte): region = 2 × layer + (0 for K, 1 for V).

The *decode* agent (this process) has a cache of the same shape and pulls requests the way
vLLM's NixlConnector does: `prep_xfer_dlist` once per side over every (region, block)
descriptor (descriptor id = region × num_blocks + block), then per request ONE
`make_prepped_xfer("READ", local, local_ids, remote, remote_ids, notif)` whose id lists name,
for every region, the request's blocks (B blocks over R regions = R × B descriptors; block ids
come in runs of neighbours, as an allocator hands them out after a while), `transfer`, poll
`check_xfer_state` until DONE, release. Up to `inflight` requests are outstanding (each owns
its own local blocks); every request carries one notification, and the prefill side checks at
the end that it received each exactly once.

Data: before a request is posted its local blocks are poisoned (0xFF, a value the pattern never
has outside a block's 8-byte header); after DONE a sample (one random (region, block) and the
last descriptor) or, with `--verify`, every block of the request is compared with the pattern.

Reported per (request blocks, in flight) and backend: blocks/s (request blocks, each spanning
all regions), GB/s (bytes moved / wall time of the timed requests), p50/p99 latency of one
request (make_prepped_xfer to DONE seen), and the TCPX/UCX ratios. A point a backend refuses
(e.g. more descriptors than it takes in one transfer) is reported as "refused: <message>" and
the run carries on; so is a failed transfer or wrong data ("failed", "wrong data").

Usually run through scripts/bench-kv.sh (builds the release plugin). Directly:

    .venv/bin/python benches/nixl/kv_pull.py --tcpx-plugin target/plugins/libplugin_TCPX.so \\
        --blocks 1,16,256 --inflight 1,8 --json kv.json

`--mem VRAM` puts both caches in device memory on GPU 0; without a CUDA device it prints
`SKIP: ...` and exits 0 (1 under REQUIRE_GPU=1). UCX's `tcp` transport cannot register or
move device memory by itself: with VRAM, cuda_copy and cuda_ipc are added to UCX_TLS
(`--ucx-tls`, else $UCX_TLS, else tcp; kept as given when it reads `all` or `^...`), so the
default is UCX_TLS=tcp,cuda_copy,cuda_ipc; the document records the value. Where UCX still
refuses, its points say "refused: <UCX's message>".

The process leaves with os._exit after its output is flushed (the child processes too), as
nixl_bench.py does: see `run_and_leave` there.

Importable: tests/nixl/test_kv_pull.py drives `Prefill` and `Decode` directly.
"""

import argparse
import ctypes
import functools
import itertools
import json
import os
import pathlib
import queue
import random
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # nixl_bench: sizes, ports, the plugin folder
sys.path.insert(0, str(REPO / "tests" / "nixl"))  # cuda_mem: device memory without torch

from nixl_bench import (  # noqa: E402
    backend_params, fmt_size, parse_size, plugin_env, run_and_leave,
)

BOUND_S = 300  # any single wait (metadata, one request, a reply) fails past this
HEADER = 8  # each block starts with its region and block id (two little-endian u32)
POISON = 0xFF  # never produced by the pattern outside the header
LOCAL = "127.0.0.1"
_ids = itertools.count()


class Skip(Exception):
    """The run cannot happen on this machine (no GPU for --mem VRAM)."""


class Refused(Exception):
    """The backend refused a request (registration, preparation or make_prepped_xfer)."""


class Failed(Exception):
    """A transfer that was accepted did not complete."""


class WrongData(Exception):
    """A pulled block differs from the prefill's pattern."""


# --------------------------------------------------------------------------------- layout


class Layout:
    """The paged KV cache: `layers` × {K, V} regions of `num_blocks` × `block_bytes`."""

    def __init__(self, layers, num_blocks, block_bytes):
        if layers < 1 or num_blocks < 1:
            raise ValueError("layers and num_blocks must be at least 1")
        if block_bytes < 2 * HEADER:
            raise ValueError(f"block_bytes must be at least {2 * HEADER}")
        if num_blocks >= 1 << 32:
            raise ValueError("num_blocks must fit the block header (u32)")
        self.layers, self.num_blocks, self.block_bytes = layers, num_blocks, block_bytes

    @property
    def regions(self):
        return 2 * self.layers

    @property
    def region_bytes(self):
        return self.num_blocks * self.block_bytes

    @property
    def cache_bytes(self):
        return self.regions * self.region_bytes

    def to_json(self):
        return {"layers": self.layers, "num_blocks": self.num_blocks,
                "block_bytes": self.block_bytes}

    @classmethod
    def from_json(cls, d):
        return cls(d["layers"], d["num_blocks"], d["block_bytes"])

    def __repr__(self):
        return (f"{self.layers} layers x K/V = {self.regions} regions x {self.num_blocks} "
                f"blocks x {fmt_size(self.block_bytes)} = {fmt_size(self.cache_bytes)}")


@functools.lru_cache(maxsize=8)
def _row(block_bytes):
    import numpy as np

    return ((np.arange(block_bytes, dtype=np.uint64) * 7) % 251).astype(np.uint16)


def expected_blocks(region, block_ids, block_bytes):
    """The prefill's content of `block_ids` in `region`, one row per block: the header
    (region, block as u32 LE), then bytes (7 i + 31 region + 17 block + 1) mod 251, so a
    block pulled from the wrong region, the wrong block or a shifted offset differs."""
    import numpy as np

    ids = np.asarray(block_ids, dtype=np.int64).reshape(-1)
    shift = ((region * 31 + ids * 17 + 1) % 251).astype(np.uint16)
    out = ((_row(block_bytes)[None, :] + shift[:, None]) % 251).astype(np.uint8)
    header = np.empty((len(ids), 2), dtype="<u4")
    header[:, 0] = region
    header[:, 1] = ids
    out[:, :HEADER] = header.view(np.uint8)
    return out


def descriptor_ids(layout, block_ids):
    """vLLM's order: for every region, the request's blocks (id = region × num_blocks +
    block)."""
    import numpy as np

    ids = np.asarray(block_ids, dtype=np.int64)
    regions = np.arange(layout.regions, dtype=np.int64)[:, None] * layout.num_blocks
    return (regions + ids[None, :]).reshape(-1).astype(np.int32)


def block_order(rng, num_blocks, pick):
    """Every usable block id once, in the order requests take them. `runs`: runs of 1..8
    neighbours in random order (a block allocator some time into serving); `scattered`: the
    even ids in random order, so no two ids of a request are neighbours and nothing can be
    merged (the descriptor count reaches the backend as built)."""
    if pick == "scattered":
        ids = list(range(0, num_blocks, 2))
        rng.shuffle(ids)
        return ids
    runs, start = [], 0
    while start < num_blocks:
        n = min(rng.randint(1, 8), num_blocks - start)
        runs.append(range(start, start + n))
        start += n
    rng.shuffle(runs)
    return [b for run in runs for b in run]


# ---------------------------------------------------------------------------------- memory


def _cuda():
    """cuda_mem's driver handle with device 0's primary context current (gpu_reason() has
    succeeded before any device memory exists)."""
    import cuda_mem

    lib = cuda_mem._cuda
    if lib.cuCtxSetCurrent(cuda_mem._ctx) != 0:
        raise RuntimeError("cuCtxSetCurrent failed")
    return lib


def _cu_check(r, what):
    if r != 0:
        raise RuntimeError(f"{what} failed with CUresult {r}")


def _htod(addr, host):
    _cu_check(_cuda().cuMemcpyHtoD_v2(ctypes.c_uint64(addr), ctypes.c_void_p(host.ctypes.data),
                                      ctypes.c_size_t(host.nbytes)), "cuMemcpyHtoD")


def _dtoh(addr, host):
    _cu_check(_cuda().cuMemcpyDtoH_v2(ctypes.c_void_p(host.ctypes.data), ctypes.c_uint64(addr),
                                      ctypes.c_size_t(host.nbytes)), "cuMemcpyDtoH")


def _memset(addr, value, n):
    lib = _cuda()
    _cu_check(lib.cuMemsetD8_v2(ctypes.c_uint64(addr), ctypes.c_ubyte(value),
                                ctypes.c_size_t(n)), "cuMemsetD8")
    _cu_check(lib.cuCtxSynchronize(), "cuCtxSynchronize")


class Cache:
    """One side's KV cache: a numpy array (DRAM) or a device allocation on GPU 0 (VRAM) per
    region, filled with the pattern (prefill) or poison (decode)."""

    def __init__(self, layout, mem, fill):
        import numpy as np

        self.layout, self.mem = layout, mem
        self.arrays, self.devs, self.addrs = [], [], []
        if mem == "VRAM":
            from cuda_mem import DeviceBuffer, gpu_reason

            why = gpu_reason()
            if why is not None:
                raise Skip(f"--mem VRAM needs a CUDA device (GPU 0): {why}")
        n, bb = layout.num_blocks, layout.block_bytes
        chunk = max(1, (32 << 20) // bb)  # blocks per fill step: bounded temporaries
        try:
            for r in range(layout.regions):
                if mem == "VRAM":
                    dev = DeviceBuffer(layout.region_bytes)
                    self.devs.append(dev)
                    self.addrs.append(dev.addr)
                    if fill == "poison":
                        _memset(dev.addr, POISON, layout.region_bytes)
                    else:
                        for b in range(0, n, chunk):
                            ids = range(b, min(n, b + chunk))
                            _htod(dev.addr + b * bb, expected_blocks(r, ids, bb))
                else:
                    array = np.empty((n, bb), dtype=np.uint8)
                    if fill == "poison":
                        array.fill(POISON)
                    else:
                        for b in range(0, n, chunk):
                            array[b : b + chunk] = expected_blocks(
                                r, range(b, min(n, b + chunk)), bb
                            )
                    self.arrays.append(array)
                    self.addrs.append(array.ctypes.data)
        except BaseException:
            self.free()
            raise

    def reg_list(self):
        return [(a, self.layout.region_bytes, 0, "") for a in self.addrs]

    def poison(self, region, block_ids):
        bb = self.layout.block_bytes
        if self.mem == "VRAM":
            for b in block_ids:
                _memset(self.addrs[region] + b * bb, POISON, bb)
        else:
            self.arrays[region][list(block_ids)] = POISON

    def read(self, region, block_ids):
        """The blocks' bytes, one row per block, on the host."""
        import numpy as np

        if self.mem == "VRAM":
            bb = self.layout.block_bytes
            out = np.empty((len(block_ids), bb), dtype=np.uint8)
            for i, b in enumerate(block_ids):
                _dtoh(self.addrs[region] + b * bb, out[i])
            return out
        return self.arrays[region][list(block_ids)]

    def free(self):
        for dev in self.devs:
            dev.free()
        self.devs, self.arrays = [], []


def block_descs(layout, addrs):
    """Every (region, block) descriptor, id = region × num_blocks + block: an Nx3 array
    (address, length, device) for prep_xfer_dlist."""
    import numpy as np

    n, bb = layout.num_blocks, layout.block_bytes
    base = np.asarray(addrs, dtype=np.uint64)[:, None]
    offs = (np.arange(n, dtype=np.uint64) * np.uint64(bb))[None, :]
    out = np.zeros((layout.regions * n, 3), dtype=np.uint64)
    out[:, 0] = (base + offs).reshape(-1)
    out[:, 1] = bb
    return out


# ------------------------------------------------------------------------------- agents


def make_agent(name, backend, params):
    """An agent with NIXL's metadata listener and exactly one backend, created with
    create_backend (the Python API's only way to pass its options). Returns (agent, port)."""
    from nixl_wheel import listening_agent

    agent, port = listening_agent(name)
    if backend not in agent.get_plugin_list():
        raise Refused(f"NIXL found no {backend} plugin in {os.environ.get('NIXL_PLUGIN_DIR')}")
    try:
        agent.create_backend(backend, params)
    except Exception as e:
        raise Refused(f"create_backend: {type(e).__name__}: {e}") from None
    if backend not in agent.backends:
        raise Refused(f"backend {backend} was not created")
    return agent, port


def serve_prefill(args):
    """The prefill process: registers its pattern-filled cache, answers `notifs N` (the
    notifications received so far, after waiting boundedly for N) and `quit`, one JSON line
    each on its original stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # NIXL's own prints must not mix with our replies

    def reply(**kw):
        out.write(json.dumps(kw) + "\n")

    layout = Layout.from_json(json.loads(args.layout))
    cmds = queue.Queue()

    def stdin_reader():
        for line in sys.stdin:
            cmds.put(line.split())
        cmds.put(None)  # the decode process went away

    threading.Thread(target=stdin_reader, daemon=True).start()
    cache = agent = reg = None
    try:
        try:
            cache = Cache(layout, args.mem, "pattern")
            agent, port = make_agent(args.name, args.backend, json.loads(args.params))
            try:
                reg = agent.register_memory(cache.reg_list(), args.mem)
            except Exception as e:
                raise Refused(f"register_memory: {type(e).__name__}: {e}") from None
            reply(regions=cache.addrs, port=port, pid=os.getpid())
        except (Skip, Refused) as e:
            reply(refused=str(e))
        got, count = {}, 0
        while True:
            if agent is not None:
                for sender, msgs in agent.get_new_notifs().items():
                    got.setdefault(sender, []).extend(m.decode("latin-1") for m in msgs)
                    count += len(msgs)
            try:
                cmd = cmds.get_nowait()
            except queue.Empty:
                time.sleep(0.0005)
                continue
            if not cmd or cmd[0] == "quit":
                reply(ok=True)
                break
            if cmd[0] == "notifs":
                # A READ's notification leaves the decode side after its DONE: wait for it.
                deadline = time.monotonic() + (float(cmd[2]) if len(cmd) > 2 else 30)
                while agent is not None and count < int(cmd[1]) and time.monotonic() < deadline:
                    for sender, msgs in agent.get_new_notifs().items():
                        got.setdefault(sender, []).extend(m.decode("latin-1") for m in msgs)
                        count += len(msgs)
                    time.sleep(0.0005)
                reply(notifs=got)
                got, count = {}, 0
            else:
                reply(error=f"unknown command {cmd!r}")
    finally:
        if reg is not None:
            agent.deregister_memory(reg)
        if cache is not None:
            cache.free()


class Prefill:
    """Starts and drives a prefill process; every reply is awaited with a bound, `close()`
    kills the process if it does not quit by itself."""

    def __init__(self, backend, params, layout, mem="DRAM", env=None, name=None,
                 bound_s=BOUND_S):
        self.backend, self.layout, self.mem, self.bound_s = backend, layout, mem, bound_s
        self.name = name or f"kv-prefill-{backend.lower()}-{os.getpid()}-{next(_ids)}"
        cmd = [
            sys.executable, str(pathlib.Path(__file__).resolve()), "--role", "prefill",
            "--backend", backend, "--name", self.name,
            "--layout", json.dumps(layout.to_json()), "--params", json.dumps(params),
            "--mem", mem,
        ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=os.environ if env is None else env,
        )
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._reply()
        self.refused = ready.get("refused")
        self.regions = ready.get("regions")
        self.port = ready.get("port")  # its metadata listener

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _reply(self):
        try:
            line = self.lines.get(timeout=self.bound_s)
        except queue.Empty:
            raise Failed(f"{self.name}: no answer in {self.bound_s}s") from None
        if line is None:
            raise Failed(f"{self.name} exited (rc {self.proc.wait()})")
        return json.loads(line)

    def _send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def notifs(self, count, bound_s=30):
        """{sender: [message, ...]} received since the last call, once `count` arrived or
        after `bound_s`."""
        self._send(f"notifs {count} {bound_s}")
        return self._reply()["notifs"]

    def close(self):
        """Asks the process to quit; kills it past a bound. Never raises."""
        if self.proc.poll() is None:
            try:
                self._send("quit")
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=60)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Decode:
    """The decode agent: its own cache (poisoned), both sides' descriptor lists prepared
    once, then `run()` pulls requests with one prepped READ each."""

    def __init__(self, backend, params, layout, mem="DRAM", name=None, bound_s=BOUND_S):
        self.backend, self.layout, self.mem, self.bound_s = backend, layout, mem, bound_s
        self.name = name or f"kv-decode-{backend.lower()}-{os.getpid()}-{next(_ids)}"
        self.sent = []  # notification of every request that completed, in order
        self.prefill = self.agent = self.reg = self.local_side = self.remote_side = None
        self.cache = Cache(layout, mem, "poison")
        try:
            self.agent, _ = make_agent(self.name, backend, params)
            try:
                self.reg = self.agent.register_memory(self.cache.reg_list(), mem)
            except Exception as e:
                raise Refused(f"register_memory: {type(e).__name__}: {e}") from None
        except BaseException:
            self.close()
            raise

    def connect(self, prefill):
        """Loads the prefill's metadata (its listener), pushes ours, and prepares both
        descriptor lists (vLLM does this once per peer at its handshake)."""
        if prefill.refused:
            raise Refused(prefill.refused)
        agent = self.agent
        agent.fetch_remote_metadata(prefill.name, LOCAL, prefill.port)
        deadline = time.monotonic() + self.bound_s
        while not agent.check_remote_metadata(prefill.name):
            if time.monotonic() > deadline:
                raise Failed(f"{self.backend}: the prefill's metadata never arrived")
            time.sleep(0.005)
        agent.send_local_metadata(LOCAL, prefill.port)
        self.prefill = prefill
        t0 = time.perf_counter()
        try:
            self.local_side = agent.prep_xfer_dlist(
                "NIXL_INIT_AGENT", block_descs(self.layout, self.cache.addrs), self.mem
            )
            self.remote_side = agent.prep_xfer_dlist(
                prefill.name, block_descs(self.layout, prefill.regions), self.mem
            )
        except Exception as e:
            raise Refused(f"prep_xfer_dlist: {type(e).__name__}: {e}") from None
        self.prep_s = time.perf_counter() - t0

    def run(self, blocks, inflight, requests, warmup=2, verify="sample", pick="runs", seed=1):
        """Pulls `warmup` requests one at a time, then `requests` of `blocks` blocks with up
        to `inflight` outstanding. Returns a result dict whose `status` is "ok", "refused",
        "failed", "wrong data" or "too big" (with `message`); never raises for those."""
        lay = self.layout
        rng = random.Random(seed)
        result = {
            "backend": self.backend, "mem": self.mem, "blocks": blocks, "inflight": inflight,
            "descriptors": lay.regions * blocks, "request_bytes": lay.regions * blocks *
            lay.block_bytes, "requests": requests, "verify": verify, "pick": pick,
        }
        local_order = block_order(rng, lay.num_blocks, pick)
        remote_order = block_order(rng, lay.num_blocks, pick)
        slots = min(inflight, len(local_order) // blocks)
        if slots == 0 or blocks > len(remote_order):
            result.update(status="too big", message=f"{blocks} blocks do not fit {lay!r} "
                          f"(pick {pick})")
            return result
        self._slots = [local_order[k * blocks : (k + 1) * blocks] for k in range(slots)]
        self._remote_order, self._rng, self._verify = remote_order, rng, verify
        self._checked = 0
        try:
            self._pull(warmup, 1, blocks)
            t0 = time.perf_counter()
            lat = self._pull(requests, slots, blocks)
            elapsed = time.perf_counter() - t0
        except Refused as e:
            result.update(status="refused", message=str(e))
            return result
        except Failed as e:
            result.update(status="failed", message=str(e))
            return result
        except WrongData as e:
            result.update(status="wrong data", message=str(e))
            return result
        lat.sort()
        result.update(
            status="ok", inflight_used=slots, elapsed_s=elapsed,
            blocks_per_s=requests * blocks / elapsed,
            gbps=requests * result["request_bytes"] / elapsed / 1e9,
            p50_ms=lat[len(lat) // 2] * 1e3,
            p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3,
            mean_ms=sum(lat) / len(lat) * 1e3,
            verified_region_blocks=self._checked,
        )
        return result

    def _pull(self, count, slots, blocks):
        """Pulls `count` requests with up to `slots` outstanding; returns their latencies."""
        free = list(range(slots))
        outstanding, lat, posted = [], [], 0
        try:
            while posted < count or outstanding:
                while free and posted < count:
                    outstanding.append(self._post(free.pop(), blocks))
                    posted += 1
                for req in list(outstanding):
                    try:
                        state = self.agent.check_xfer_state(req["h"])
                    except Exception as e:
                        raise Failed(f"check_xfer_state: {type(e).__name__}: {e}") from None
                    if state == "PROC":
                        if time.perf_counter() - req["t0"] > self.bound_s:
                            raise Failed(f"a request stayed in progress over {self.bound_s}s")
                        continue
                    t1 = time.perf_counter()
                    if state != "DONE":
                        raise Failed(f"check_xfer_state: {state}")
                    outstanding.remove(req)
                    lat.append(t1 - req["t0"])
                    self.agent.release_xfer_handle(req["h"])
                    self.sent.append(req["msg"])
                    self._check(req)
                    free.append(req["slot"])
        finally:
            self._abandon(outstanding)
        return lat

    def _post(self, slot, blocks):
        lay, rng = self.layout, self._rng
        local = self._slots[slot]
        order = self._remote_order
        start = rng.randrange(len(order))
        remote = order[start : start + blocks] + order[: max(0, start + blocks - len(order))]
        if self._verify == "all":
            checks = [(r, j) for r in range(lay.regions) for j in range(blocks)]
            for r in range(lay.regions):
                self.cache.poison(r, local)
        else:
            # A random (region, block) and the request's last descriptor.
            checks = [(rng.randrange(lay.regions), rng.randrange(blocks)),
                      (lay.regions - 1, blocks - 1)]
            for r, j in checks:
                self.cache.poison(r, [local[j]])
        msg = f"kv-{self.name}-{next(_ids)}"
        li, ri = descriptor_ids(lay, local), descriptor_ids(lay, remote)
        t0 = time.perf_counter()
        try:
            h = self.agent.make_prepped_xfer(
                "READ", self.local_side, li, self.remote_side, ri, msg.encode()
            )
        except Exception as e:
            raise Refused(f"make_prepped_xfer ({len(li)} descriptors): "
                          f"{type(e).__name__}: {e}") from None
        req = {"h": h, "t0": t0, "slot": slot, "local": local, "remote": remote,
               "checks": checks, "msg": msg}
        try:
            state = self.agent.transfer(h)
        except Exception as e:
            self.agent.release_xfer_handle(h)
            raise Failed(f"transfer: {type(e).__name__}: {e}") from None
        if state == "ERR":
            self.agent.release_xfer_handle(h)
            raise Failed("transfer: ERR")
        return req

    def _check(self, req):
        """Compares the request's checked blocks with the prefill's pattern."""
        import numpy as np

        bb = self.layout.block_bytes
        by_region = {}
        for r, j in req["checks"]:
            by_region.setdefault(r, []).append(j)
        for r, js in by_region.items():
            local = [req["local"][j] for j in js]
            remote = [req["remote"][j] for j in js]
            got = self.cache.read(r, local)
            want = expected_blocks(r, remote, bb)
            if not np.array_equal(got, want):
                k = int(np.flatnonzero((got != want).any(axis=1))[0])
                i = int(np.flatnonzero(got[k] != want[k])[0])
                raise WrongData(
                    f"region {r} (layer {r // 2} {'KV'[r % 2]}): local block {local[k]} <- "
                    f"remote block {remote[k]}: byte {i} is {got[k, i]}, want {want[k, i]} "
                    f"({int((got[k] != want[k]).sum())} of {bb} bytes differ); request "
                    f"{req['msg']}: local blocks {req['local']}, remote blocks {req['remote']}"
                )
            self._checked += len(js)

    def _abandon(self, outstanding):
        """After an error: waits (bounded) for the requests still in flight, then releases
        them, so their memory is not reused while a backend still writes it."""
        deadline = time.monotonic() + min(self.bound_s, 60)
        for req in outstanding:
            try:
                state = self.agent.check_xfer_state(req["h"])
                while state == "PROC" and time.monotonic() < deadline:
                    time.sleep(0.001)
                    state = self.agent.check_xfer_state(req["h"])
                if state == "DONE":
                    self.sent.append(req["msg"])  # its notification goes out all the same
            except Exception:
                pass
            try:
                self.agent.release_xfer_handle(req["h"])
            except Exception:
                pass
        outstanding.clear()

    def close(self):
        """Releases the prepared lists, forgets the prefill, deregisters, frees. Never
        raises."""
        agent = self.agent
        for side in (self.local_side, self.remote_side):
            if side is not None:
                try:
                    agent.release_dlist_handle(side)
                except Exception:
                    pass
        self.local_side = self.remote_side = None
        if agent is not None and self.prefill is not None:
            try:
                agent.remove_remote_agent(self.prefill.name)
            except Exception:
                pass
        if self.reg is not None:
            try:
                agent.deregister_memory(self.reg)
            except Exception:
                pass
        self.reg = self.agent = self.prefill = None
        self.cache.free()


# ---------------------------------------------------------------------------- benchmark


def requests_for(args, layout, blocks):
    if args.requests:
        return args.requests
    n = args.budget // (layout.regions * blocks * layout.block_bytes)
    return max(args.min_requests, min(args.max_requests, n))


def bench_backend(args, backend, layout):
    params = backend_params(args, backend)
    points = [(b, q) for b in args.blocks for q in args.inflight]

    def all_refused(message):
        return [{"backend": backend, "mem": args.mem, "blocks": b, "inflight": q,
                 "descriptors": layout.regions * b, "status": "refused", "message": message}
                for b, q in points], {}

    prefill = decode = None
    results, sent = [], []
    try:
        try:
            prefill = Prefill(backend, params, layout, args.mem)
            decode = Decode(backend, params, layout, args.mem)
            decode.connect(prefill)
        except (Refused, Failed) as e:
            print(f"  {backend}: refused: {e}", file=sys.stderr, flush=True)
            return all_refused(str(e))
        print(f"  {backend}: prepared 2 x {layout.regions * layout.num_blocks} descriptors "
              f"in {decode.prep_s * 1e3:.1f} ms", file=sys.stderr, flush=True)
        for b, q in points:
            r = decode.run(b, q, requests_for(args, layout, b), warmup=args.warmup,
                           verify="all" if args.verify else "sample", pick=args.pick,
                           seed=args.seed)
            results.append(r)
            head = f"  {backend:4} {b:4} blocks ({r['descriptors']:5} descs) x{q}:"
            if r["status"] == "ok":
                print(f"{head} {r['blocks_per_s']:9.1f} blocks/s {r['gbps']:7.3f} GB/s  "
                      f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  "
                      f"({r['requests']} requests, {r['inflight_used']} in flight)",
                      file=sys.stderr, flush=True)
            else:
                print(f"{head} {r['status']}: {r['message']}", file=sys.stderr, flush=True)
            if r["status"] in ("failed", "wrong data"):
                # Whatever broke must not spill into the next point: a new decode agent, so
                # a new connection.
                sent += decode.sent
                decode.close()
                decode = None
                decode = Decode(backend, params, layout, args.mem)
                decode.connect(prefill)
        sent += decode.sent
        got = prefill.notifs(len(sent))
        received = sum(len(v) for v in got.values())
        exact = sorted(m for v in got.values() for m in v) == sorted(sent)
        sent = len(sent)
        notifs = {"sent": sent, "received": received, "exact": exact}
        print(f"  {backend}: prefill got {received} of {sent} notifications"
              f"{'' if exact else ' (NOT the ones sent)'}", file=sys.stderr, flush=True)
        return results, notifs
    finally:
        if decode is not None:
            decode.close()
        if prefill is not None:
            prefill.close()


def cell(r, key, fmt):
    if r is None:
        return "-"
    if r["status"] != "ok":
        return r["status"]
    return format(r[key], fmt)


def table(results, backends, layout):
    by = {(r["backend"], r["blocks"], r["inflight"]): r for r in results}
    points = sorted({(r["blocks"], r["inflight"]) for r in results})
    two = backends == ["TCPX", "UCX"]
    head = "| blocks | descriptors | MiB/request | in flight | " + " | ".join(
        f"{b} blocks/s | {b} GB/s | {b} p50 ms | {b} p99 ms" for b in backends
    )
    head += " | blocks/s TCPX/UCX | p50 TCPX/UCX |" if two else " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    notes = []
    for blocks, q in points:
        mib = layout.regions * blocks * layout.block_bytes / (1 << 20)
        used = {r.get("inflight_used", q) for r in results if (r["blocks"], r["inflight"]) ==
                (blocks, q) and r["status"] == "ok"}
        # The cache may hold fewer requests' blocks at once than asked for.
        inflight = str(q) if used <= {q} else f"{q} ({max(used)} fit)"
        cells = [str(blocks), str(layout.regions * blocks), f"{mib:.2f}", inflight]
        for b in backends:
            r = by.get((b, blocks, q))
            cells += [cell(r, "blocks_per_s", ".0f"), cell(r, "gbps", ".3f"),
                      cell(r, "p50_ms", ".2f"), cell(r, "p99_ms", ".2f")]
            if r is not None and r["status"] != "ok":
                notes.append(f"- {b}, {blocks} blocks x{q}: {r['status']}: {r['message']}")
        if two:
            t, u = by.get(("TCPX", blocks, q)), by.get(("UCX", blocks, q))
            ok = t and u and t["status"] == u["status"] == "ok"
            cells += ([f"{t['blocks_per_s'] / u['blocks_per_s']:.2f}",
                       f"{t['p50_ms'] / u['p50_ms']:.2f}"] if ok else ["-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + sorted(set(notes)) if notes else []))


def ratios(results):
    by = {(r["backend"], r["blocks"], r["inflight"]): r for r in results}
    out = []
    for (b, blocks, q), t in sorted(by.items()):
        u = by.get(("UCX", blocks, q))
        if b == "TCPX" and u and t["status"] == u["status"] == "ok":
            out.append({"blocks": blocks, "inflight": q,
                        "blocks_per_s": t["blocks_per_s"] / u["blocks_per_s"],
                        "gbps": t["gbps"] / u["gbps"], "p50": t["p50_ms"] / u["p50_ms"],
                        "p99": t["p99_ms"] / u["p99_ms"]})
    return out


# UCX transports that can register and move device memory; added for --mem VRAM.
UCX_CUDA_TLS = ("cuda_copy", "cuda_ipc")


def ucx_tls(base, mem):
    """UCX_TLS for the UCX side: `base` (the caller's value), plus UCX's CUDA transports
    for device memory. A list UCX reads as "all" or "all but" (`all`, `^...`) is kept as
    given."""
    base = (base or "tcp").strip()
    if mem != "VRAM" or base == "all" or base.startswith("^"):
        return base
    names = [t for t in base.split(",") if t]
    return ",".join(names + [t for t in UCX_CUDA_TLS if t not in names])


def skip_vram(args):
    """SKIP without a GPU (exit 0; 1 under REQUIRE_GPU=1), with the reason."""
    from cuda_mem import gpu_reason

    why = gpu_reason()
    if why is None:
        return
    msg = f"--mem VRAM needs a CUDA device (GPU 0): {why}"
    print(f"SKIP: {msg}", file=sys.stderr)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"skipped": msg}, indent=2) + "\n")
    sys.exit(1 if os.environ.get("REQUIRE_GPU") == "1" else 0)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["decode", "prefill"], default="decode")
    p.add_argument("--backends", default="TCPX,UCX")
    p.add_argument("--layers", type=int, default=16, help="regions = 2 x layers (K and V)")
    p.add_argument("--num-blocks", type=int, default=512, help="blocks per region")
    p.add_argument("--block-tokens", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--dtype-bytes", type=int, default=2)
    p.add_argument("--block-bytes", type=parse_size, default=0,
                   help="bytes per block (default: tokens x kv heads x head dim x dtype)")
    p.add_argument("--blocks", default="1,16,256", help="blocks per request (list)")
    p.add_argument("--inflight", default="1,8", help="requests outstanding at once (list)")
    p.add_argument("--requests", type=int, default=0, help="timed requests per point (0: auto)")
    p.add_argument("--budget", type=parse_size, default=parse_size("1G"),
                   help="auto requests: about this many bytes per point")
    p.add_argument("--min-requests", type=int, default=8)
    p.add_argument("--max-requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per point")
    p.add_argument("--verify", action="store_true",
                   help="check every block of every request (else a sample per request)")
    p.add_argument("--pick", choices=["runs", "scattered"], default="runs",
                   help="block ids: runs of neighbours, or no two neighbours")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--channels", type=int, default=2, help="TCPX backend param")
    p.add_argument("--chunk-bytes", type=parse_size, default=524288, help="TCPX backend param")
    p.add_argument("--window", type=int, default=16, help="TCPX backend param")
    p.add_argument("--timeout-ms", type=int, default=30000, help="TCPX backend param")
    p.add_argument("--inline-read-bytes", type=parse_size, default=16384,
                   help="TCPX backend param")
    p.add_argument("--inline-write-bytes", type=parse_size, default=16384,
                   help="TCPX backend param")
    p.add_argument("--tcpx-plugin", default=str(REPO / "target" / "plugins" / "libplugin_TCPX.so"))
    p.add_argument("--mem", choices=["DRAM", "VRAM"], default="DRAM",
                   help="both caches: host memory, or device memory on GPU 0")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--ucx-tls", help="UCX_TLS for the UCX side (default: $UCX_TLS or tcp; "
                   "with --mem VRAM, cuda_copy and cuda_ipc are added)")
    # prefill-only
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    p.add_argument("--layout", help=argparse.SUPPRESS)
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "prefill":
        return serve_prefill(args)

    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    # Each (blocks, inflight) is one point: repeats would overwrite each other in the table.
    args.blocks = list(dict.fromkeys(int(b) for b in args.blocks.split(",")))
    args.inflight = list(dict.fromkeys(int(q) for q in args.inflight.split(",")))
    if min(args.blocks) < 1 or min(args.inflight) < 1:
        p.error("--blocks and --inflight take positive numbers")
    bb = args.block_bytes or args.block_tokens * args.kv_heads * args.head_dim * args.dtype_bytes
    try:
        layout = Layout(args.layers, args.num_blocks, bb)
    except ValueError as e:
        p.error(str(e))
    if args.mem == "VRAM":
        skip_vram(args)
    if "TCPX" in args.backends and not pathlib.Path(args.tcpx_plugin).is_file():
        p.error(f"no TCPX plugin at {args.tcpx_plugin}: build it (scripts/bench-kv.sh)")

    if "NIXL_BENCH_PLUGIN_DIR" not in os.environ:
        # The plugin folder and LD_LIBRARY_PATH must be in place when the process starts.
        if args.ucx_tls:
            os.environ["UCX_TLS"] = args.ucx_tls
        env = plugin_env(args.tcpx_plugin, args.mem)
        env["UCX_TLS"] = ucx_tls(env["UCX_TLS"], args.mem)
        os.execve(sys.executable, [sys.executable, __file__] + sys.argv[1:], env)
    pdir = pathlib.Path(os.environ["NIXL_BENCH_PLUGIN_DIR"])
    # stdout carries the table alone: NIXL's own log lines go to stderr.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    print(f"KV cache per side: {layout!r}, {args.mem}; UCX_TLS={os.environ.get('UCX_TLS')}",
          file=sys.stderr, flush=True)
    results, notifs = [], {}
    try:
        for b in args.backends:
            print(f"== {b}", file=sys.stderr, flush=True)
            r, n = bench_backend(args, b, layout)
            results += r
            notifs[b] = n
    finally:
        for f in pdir.iterdir():
            f.unlink()
        pdir.rmdir()

    print(table(results, args.backends, layout), file=out)
    if args.json:
        doc = {
            "config": {
                "backends": args.backends, "mem": args.mem, "layout": layout.to_json(),
                "regions": layout.regions, "cache_bytes_per_side": layout.cache_bytes,
                "blocks": args.blocks, "inflight": args.inflight, "warmup": args.warmup,
                "verify": "all" if args.verify else "sample", "pick": args.pick,
                "tcpx_params": backend_params(args, "TCPX"),
                "UCX_TLS": os.environ.get("UCX_TLS"), "cpus": os.cpu_count(),
            },
            "notifications": notifs,
            "results": results,
            "ratios_tcpx_over_ucx": ratios(results),
        }
        pathlib.Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    bad = [r for r in results if r["status"] in ("failed", "wrong data")]
    bad_notifs = [b for b, n in notifs.items() if n and not n["exact"]]
    return 1 if bad or bad_notifs else 0


if __name__ == "__main__":
    run_and_leave(main)
