#!/usr/bin/env python3
"""Registration cost and the first transfer to a peer with many regions: the TCPX backend
against NIXL's UCX backend (UCX_TLS=tcp), through the real NIXL Python API, agents in one
process.

For each backend:
1. `register_memory` of one region per call, half of `--regions` times, on an agent with no
   peer: microseconds per call (median and mean);
2. the other half with `--peers` agents connected to it both ways (each has sent it a WRITE
   and received one from it);
3. the first transfer to a peer holding all those regions, 4 KiB into one of them, from a new
   agent: milliseconds from `initialize_xfer` to DONE, connection set-up included; then the
   second, for comparison;
4. the first transfer from the agent holding all those regions to a new peer;
5. the first transfer touching every region (one READ of one descriptor per region) to a new
   peer.

Reported, not asserted (item 6 of the work on real KV-cache workloads: at most 50 us per
registration per peer on a 2-core box, at most 50 ms for the first transfer to a peer with
1,000 regions). Run after building the plugin:

    cargo build --release -p tcpx-nixl && bash scripts/collect-plugins.sh release
    .venv/bin/python nixl/bench/registration.py [--regions 1000] [--peers 4] [--json out]
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "benches" / "nixl"))
sys.path.insert(0, str(REPO / "tests" / "nixl"))

BOUND_S = 120


def wait(agent, h, state):
    deadline = time.monotonic() + BOUND_S
    while state == "PROC":
        if time.monotonic() > deadline:
            raise TimeoutError("transfer did not finish")
        state = agent.check_xfer_state(h)
    if state != "DONE":
        raise RuntimeError(f"transfer ended {state}")


def timed_xfer(agent, op, local, remote, peer):
    """Milliseconds from initialize_xfer to DONE."""
    t = time.perf_counter()
    h = agent.initialize_xfer(op, local, remote, peer)
    wait(agent, h, agent.transfer(h))
    ms = (time.perf_counter() - t) * 1e3
    agent.release_xfer_handle(h)
    return ms


def run(backend, args):
    import numpy as np
    from nixl_wheel import nixl_agent, nixl_agent_config

    n, size = args.regions, args.region_bytes
    keep = []  # arrays and agents stay alive until the end

    def agent(name):
        a = nixl_agent(f"{name}-{backend.lower()}", nixl_agent_config(backends=[]))
        a.create_backend(backend, {"listen_addr": "127.0.0.1"} if backend == "TCPX" else {})
        keep.append(a)
        return a

    def region(a, nbytes=size):
        x = np.zeros(nbytes, np.uint8)
        keep.append(x)
        return x, a.register_memory([(x.ctypes.data, nbytes, 0, "")], "DRAM")

    def register_many(a, count):
        took, arrays = [], []
        for _ in range(count):
            x = np.zeros(size, np.uint8)
            t = time.perf_counter()
            a.register_memory([(x.ctypes.data, size, 0, "")], "DRAM")
            took.append((time.perf_counter() - t) * 1e6)
            arrays.append(x)
        keep.extend(arrays)
        return took, arrays

    def descs(a, arrays, nbytes=4096):
        return a.get_xfer_descs([(x.ctypes.data, nbytes, 0) for x in arrays], "DRAM")

    out = {"backend": backend}
    t = agent("target")
    took, first = register_many(t, n // 2)
    out["register_us_no_peer"] = {"median": statistics.median(took), "mean": statistics.mean(took)}
    # Peers connected both ways.
    for i in range(args.peers):
        p = agent(f"peer{i}")
        px, _ = region(p)
        p.add_remote_agent(t.get_agent_metadata())
        t.add_remote_agent(p.get_agent_metadata())
        timed_xfer(p, "WRITE", descs(p, [px]), descs(p, [first[0]]), t.name)
        timed_xfer(t, "WRITE", descs(t, [first[1]]), descs(t, [px]), p.name)
    took, more = register_many(t, n - n // 2)
    out["peers"] = args.peers
    out["register_us_with_peers"] = {"median": statistics.median(took),
                                     "mean": statistics.mean(took)}
    regions = first + more
    # A new agent's first transfer into one of the target's regions, then its second.
    x = agent("newcomer")
    xx, _ = region(x)
    x.add_remote_agent(t.get_agent_metadata())
    out["regions_at_target"] = len(regions)
    out["first_xfer_to_target_ms"] = timed_xfer(x, "WRITE", descs(x, [xx]),
                                                descs(x, [regions[-1]]), t.name)
    out["second_xfer_to_target_ms"] = timed_xfer(x, "WRITE", descs(x, [xx]),
                                                 descs(x, [regions[-2]]), t.name)
    # The agent holding the regions makes the first transfer to a new peer.
    y = agent("fresh")
    yx, _ = region(y)
    t.add_remote_agent(y.get_agent_metadata())
    out["first_xfer_from_target_ms"] = timed_xfer(t, "WRITE", descs(t, [regions[0]]),
                                                  descs(t, [yx]), y.name)
    # A first transfer touching every region: one READ of a descriptor per region.
    z = agent("reader")
    zx, _ = region(z, len(regions) * 4096)
    z.add_remote_agent(t.get_agent_metadata())
    local = z.get_xfer_descs(
        [(zx.ctypes.data + i * 4096, 4096, 0) for i in range(len(regions))], "DRAM")
    out["first_read_of_every_region_ms"] = timed_xfer(z, "READ", local, descs(z, regions),
                                                      t.name)
    out["second_read_of_every_region_ms"] = timed_xfer(z, "READ", local, descs(z, regions),
                                                       t.name)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tcpx-plugin", default=str(REPO / "target" / "plugins" /
                                                "libplugin_TCPX.so"))
    ap.add_argument("--backends", default="TCPX,UCX")
    ap.add_argument("--regions", type=int, default=1000)
    ap.add_argument("--region-bytes", type=int, default=4096)
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--json")
    args = ap.parse_args()
    if "NIXL_BENCH_PLUGIN_DIR" not in os.environ:
        # The plugin folder (UCX linked in) and LD_LIBRARY_PATH must be in place at start.
        from nixl_bench import plugin_env

        env = plugin_env(args.tcpx_plugin, "DRAM")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    results = []
    for backend in args.backends.split(","):
        r = run(backend, args)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    print("| | " + " | ".join(r["backend"] for r in results) + " |")
    print("|---|" + "---|" * len(results))
    rows = [
        ("register_memory, no peer (us, median)", lambda r: r["register_us_no_peer"]["median"]),
        (f"register_memory, {args.peers} peers connected (us, median)",
         lambda r: r["register_us_with_peers"]["median"]),
        ("first transfer to a peer with the regions (ms)", lambda r: r["first_xfer_to_target_ms"]),
        ("second transfer (ms)", lambda r: r["second_xfer_to_target_ms"]),
        ("first transfer from the agent with the regions (ms)",
         lambda r: r["first_xfer_from_target_ms"]),
        ("first READ of every region (ms)", lambda r: r["first_read_of_every_region_ms"]),
        ("second READ of every region (ms)", lambda r: r["second_read_of_every_region_ms"]),
    ]
    for label, f in rows:
        print(f"| {label} | " + " | ".join(f"{f(r):.1f}" for r in results) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "cpus": os.cpu_count(),
                       "regions": args.regions, "peers": args.peers}, fh, indent=1)
    sys.stdout.flush()
    sys.stderr.flush()
    # The wheel's UCX libraries can crash in their exit handlers: leave without them.
    os._exit(0)


if __name__ == "__main__":
    main()
