"""One rank of the NCCL checks: torch.distributed over NCCL, started once per rank by
run_nccl.py with its own NCCL_HOSTID, so NCCL takes the ranks for separate hosts and moves every
byte through its network transport (tcpxsock, or NCCL's own Socket for the baseline).

Check mode runs a plan of collectives and compares every result exactly with what it must be
(integer-valued data, so sums are exact). Bench mode times all_reduce. Before each operation
it prints `NCCLTEST BEGIN <n> ...` and after it `NCCLTEST OK <n>` or `NCCLTEST MISMATCH <n>`
(flushed), so the runner can name the operation a rank was in when it was killed; results go
to the JSON file named by --result.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

MARK = "NCCLTEST"
MIB = 1 << 20

# Every value is 1 + (a mix of two primes' residues) mod M, so no element is 0 (an all_reduce
# that left an element untouched cannot equal the sum by luck) and no shift by a page, a chunk
# or a power of two maps the pattern onto itself within 4 M elements.
FLOAT_MOD = 1021  # float32 values 1 ... 1021: sums of a few ranks stay exact integers
BYTE_MOD = 255  # uint8 values 1 ... 255: uint8 sums wrap mod 256 (NCCL's too), never to 0 + v

# Sizes in elements that exercise partial pages, partial chunks and one-element messages.
SMALL_COUNTS = (1, 7, 1023, 4097)


def say(*parts):
    print(MARK, *parts, flush=True)


def plan_ops(plan):
    """(op, dtype name, element count) for a plan. `full` goes to 256 MiB; `quick` stops at
    64 MiB; `probe` has small sizes only; `multi` (for more than two ranks) small sizes, one
    1 MiB + 3 all_reduce and an 8 MiB one, all_to_all included. all_to_all counts are per peer."""
    ops = []
    if plan in ("probe", "multi"):
        for op in ("all_reduce", "all_gather", "broadcast", "sendrecv", "alltoall"):
            for count in SMALL_COUNTS:
                ops.append((op, "float32", count))
        ops.append(("all_reduce", "uint8", MIB + 3))
        if plan == "multi":
            ops.append(("alltoall", "uint8", MIB + 3))
            ops.append(("all_reduce", "float32", 2 * MIB))
            ops.append(("burst", "float32", 4097))
        return ops
    big = [64 * MIB] + ([256 * MIB] if plan == "full" else [])
    # The large sizes run once per operation, in the dtype named here (time), the small ones
    # in both dtypes.
    big_dtype = {
        "all_reduce": "float32",
        "all_gather": "uint8",
        "broadcast": "float32",
        "sendrecv": "uint8",
    }
    for op in ("all_reduce", "all_gather", "broadcast", "sendrecv", "alltoall"):
        for dtype in ("float32", "uint8"):
            for count in SMALL_COUNTS:
                ops.append((op, dtype, count))
            # 1 MiB + 3 bytes: for float32 the nearest element count (1 MiB + 4 bytes).
            ops.append((op, dtype, MIB + 3 if dtype == "uint8" else (MIB + 3 + 3) // 4))
        if op in big_dtype:
            dtype = big_dtype[op]
            for nbytes in big:
                ops.append((op, dtype, nbytes if dtype == "uint8" else nbytes // 4))
    ops.append(("burst", "float32", 4097))
    return ops


class Ctx:
    def __init__(self, torch, dist, rank, world, device):
        self.torch, self.dist = torch, dist
        self.rank, self.world, self.device = rank, world, device

    def dtype(self, name):
        return {"float32": self.torch.float32, "uint8": self.torch.uint8}[name]

    def pattern(self, count, dtype, rank, seed):
        """The data rank `rank` contributes to operation `seed` (deterministic, on the GPU)."""
        torch = self.torch
        i = torch.arange(count, device=self.device, dtype=torch.int32)
        mod = BYTE_MOD if dtype == torch.uint8 else FLOAT_MOD
        v = ((i % 1021) * 37 + (i % 4093) * 11 + rank * 101 + seed * 7919) % mod + 1
        return v.to(dtype)

    def sentinel(self, want):
        """A buffer that differs from `want` in every element: whatever an operation does not
        write stays wrong."""
        if want.dtype == self.torch.uint8:
            return self.torch.bitwise_xor(want, 0xFF)
        return want + 100000.0

    def reduce_sum(self, parts):
        torch = self.torch
        if parts[0].dtype == torch.uint8:
            total = sum(p.to(torch.int32) for p in parts)
            return (total % 256).to(torch.uint8)
        return sum(parts)


def compare(ctx, got, want):
    """None when equal, else where and how they differ (first bad element, count)."""
    torch = ctx.torch
    if torch.equal(got, want):
        return None
    bad = got != want
    first = int(bad.to(torch.int32).argmax())  # the first True (argmax returns the first maximum)
    elem = got.element_size()
    return {
        "bad_elements": int(bad.sum()),
        "first_bad": first,
        "first_bad_byte": first * elem,
        "first_bad_page": first * elem // 4096,
        "got": got[first].item(),
        "want": want[first].item(),
    }


def run_op(ctx, op, dtype_name, count, seed):
    torch, dist, rank, world = ctx.torch, ctx.dist, ctx.rank, ctx.world
    dtype = ctx.dtype(dtype_name)
    if op == "all_reduce":
        want = ctx.reduce_sum([ctx.pattern(count, dtype, r, seed) for r in range(world)])
        t = ctx.pattern(count, dtype, rank, seed)
        dist.all_reduce(t)
        torch.cuda.synchronize()
        return compare(ctx, t, want)
    if op == "all_gather":
        want = torch.cat([ctx.pattern(count, dtype, r, seed) for r in range(world)])
        out = ctx.sentinel(want)
        dist.all_gather_into_tensor(out, ctx.pattern(count, dtype, rank, seed))
        torch.cuda.synchronize()
        return compare(ctx, out, want)
    if op == "broadcast":
        root = seed % world
        want = ctx.pattern(count, dtype, root, seed)
        t = want.clone() if rank == root else ctx.sentinel(want)
        dist.broadcast(t, src=root)
        torch.cuda.synchronize()
        return compare(ctx, t, want)
    if op == "sendrecv":
        # Both directions at once: each rank sends to the next and receives from the previous.
        nxt, prv = (rank + 1) % world, (rank - 1) % world
        want = ctx.pattern(count, dtype, prv, seed)
        out = ctx.sentinel(want)
        works = dist.batch_isend_irecv(
            [
                dist.P2POp(dist.isend, ctx.pattern(count, dtype, rank, seed), nxt),
                dist.P2POp(dist.irecv, out, prv),
            ]
        )
        for w in works:
            w.wait()
        torch.cuda.synchronize()
        return compare(ctx, out, want)
    if op == "alltoall":
        # Chunk j of rank r goes to rank j. NCCL runs it as send/recv with every peer at once:
        # several receive connections in one kernel block.
        def chunk(src, dst):
            return ctx.pattern(count, dtype, src, seed * 64 + dst)

        want = torch.cat([chunk(r, rank) for r in range(world)])
        out = ctx.sentinel(want)
        dist.all_to_all_single(out, torch.cat([chunk(rank, j) for j in range(world)]))
        torch.cuda.synchronize()
        return compare(ctx, out, want)
    if op == "burst":
        # Eight all_reduces queued back to back without a synchronisation: NCCL keeps several
        # kernels and their receives in flight on every connection.
        tensors, wants = [], []
        for k in range(8):
            s = seed * 8 + k
            wants.append(ctx.reduce_sum([ctx.pattern(count, dtype, r, s) for r in range(world)]))
            tensors.append(ctx.pattern(count, dtype, rank, s))
        for t in tensors:
            dist.all_reduce(t)
        torch.cuda.synchronize()
        for k, (t, want) in enumerate(zip(tensors, wants)):
            diff = compare(ctx, t, want)
            if diff is not None:
                diff["burst_index"] = k
                return diff
        return None
    raise ValueError(f"unknown operation {op}")


def check(ctx, plan):
    results = []
    for n, (op, dtype_name, count) in enumerate(plan_ops(plan)):
        nbytes = count * (4 if dtype_name == "float32" else 1)
        if op == "alltoall":
            nbytes *= ctx.world
        say("BEGIN", n, f"op={op}", f"dtype={dtype_name}", f"count={count}", f"bytes={nbytes}")
        t0 = time.monotonic()
        diff = run_op(ctx, op, dtype_name, count, seed=n + 1)
        entry = {
            "n": n,
            "op": op,
            "dtype": dtype_name,
            "count": count,
            "bytes": nbytes,
            "seconds": round(time.monotonic() - t0, 4),
            "ok": diff is None,
        }
        if diff is None:
            say("OK", n)
        else:
            entry["mismatch"] = diff
            say("MISMATCH", n, json.dumps(diff))
        results.append(entry)
    return results


def bench(ctx, args):
    """all_reduce: bus bandwidth at 64 MiB and 256 MiB, and 4 KiB latency, each the median of
    per-iteration times (every iteration synchronised); the last result of each size is
    checked."""
    torch, dist, world = ctx.torch, ctx.dist, ctx.world
    out = {}
    cases = [
        ("allreduce_64MiB", 64 * MIB // 4, args.bw_iters),
        ("allreduce_256MiB", 256 * MIB // 4, max(3, args.bw_iters // 2)),
        ("allreduce_4KiB", 1024, args.lat_iters),
    ]
    for n, (name, count, iters) in enumerate(cases):
        say("BEGIN", f"bench-{n}", f"op=all_reduce", f"count={count}", f"iters={iters}")
        src = ctx.pattern(count, torch.float32, ctx.rank, 1000 + n)
        want = ctx.reduce_sum([ctx.pattern(count, torch.float32, r, 1000 + n) for r in range(world)])
        t = torch.empty_like(src)
        times = []
        warmup = 5 if count <= 1024 else 2
        for k in range(warmup + iters):
            t.copy_(src)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            torch.cuda.synchronize()
            if k >= warmup:
                times.append(time.perf_counter() - t0)
        diff = compare(ctx, t, want)
        nbytes = count * 4
        med = statistics.median(times)
        algbw = nbytes / med / 1e9
        out[name] = {
            "bytes": nbytes,
            "iters": iters,
            "median_s": med,
            "min_s": min(times),
            "max_s": max(times),
            "algbw_GBps": algbw,
            "busbw_GBps": algbw * 2 * (world - 1) / world,
            "median_us": med * 1e6,
            "ok": diff is None,
        }
        if diff is not None:
            out[name]["mismatch"] = diff
            say("MISMATCH", f"bench-{n}", json.dumps(diff))
        else:
            say("OK", f"bench-{n}", f"median_us={med * 1e6:.1f}", f"busbw_GBps={out[name]['busbw_GBps']:.3f}")
    return out


def write(path, doc):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--store", required=True, help="file for torch.distributed's FileStore")
    p.add_argument("--mode", choices=("check", "bench"), default="check")
    p.add_argument("--plan", choices=("full", "quick", "probe", "multi"), default="full")
    p.add_argument("--result", required=True, help="JSON file this rank writes")
    p.add_argument("--timeout-s", type=float, default=120)
    p.add_argument("--bw-iters", type=int, default=10)
    p.add_argument("--lat-iters", type=int, default=200)
    args = p.parse_args()

    import torch
    import torch.distributed as dist

    device = torch.device("cuda", args.gpu)
    torch.cuda.set_device(device)
    nccl = torch.cuda.nccl.version()
    doc = {
        "rank": args.rank,
        "gpu": args.gpu,
        "gpu_name": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
        "mode": args.mode,
        "plan": args.plan,
        "destroyed": False,
    }
    say("BEGIN", "init", f"rank={args.rank}", f"torch={doc['torch']}", f"nccl={doc['nccl']}")
    kwargs = dict(
        backend="nccl",
        init_method="file://" + os.path.abspath(args.store),
        world_size=args.world,
        rank=args.rank,
        timeout=datetime.timedelta(seconds=args.timeout_s),
    )
    try:
        # Eager communicator creation, so a plugin that fails to load fails here.
        dist.init_process_group(device_id=device, **kwargs)
    except TypeError:  # torch < 2.3 has no device_id
        dist.init_process_group(**kwargs)
    say("OK", "init")
    ctx = Ctx(torch, dist, args.rank, args.world, device)
    if args.mode == "check":
        doc["ops"] = check(ctx, args.plan)
        ok = all(e["ok"] for e in doc["ops"])
    else:
        doc["bench"] = bench(ctx, args)
        ok = all(e["ok"] for e in doc["bench"].values())
    doc["ok"] = ok
    write(args.result, doc)
    say("BEGIN", "destroy")
    dist.destroy_process_group()
    say("OK", "destroy")
    doc["destroyed"] = True
    write(args.result, doc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
