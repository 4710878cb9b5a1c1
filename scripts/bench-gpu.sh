#!/usr/bin/env bash
# GPU memory through the engine vs host memory, on one GPU machine, loopback:
#   tcpx bench --loopback --size 4M,64M --verify --json --mem {host:host,cuda:cuda,host:cuda,cuda:host}
# at 2 and 4 channels (CHANNELS="2 4"), ROUNDS times with the four kinds interleaved (a VM's
# speed drifts between runs; interleaving spreads the drift over all of them), each run's
# JSON in OUTDIR, then a table of median GB/s and ratios against DRAM->DRAM at the same size
# and channel count (target: VRAM->VRAM >= 0.8x).
#
# usage: scripts/bench-gpu.sh [TCPX_BINARY [OUTDIR [extra tcpx bench args...]]]
#   (e.g. `--gpu 0:1` on a machine with two GPUs: the sender's buffers on GPU 0, the
#   receiver's on GPU 1)
#   TCPX_BINARY  default target/release/tcpx (build: cargo build --release -p tcpx-cli --bin tcpx;
#                the unpack kernels need nvcc at build time: scripts/install-nvcc.sh)
#   OUTDIR       default .  (files: bench-gpu-c<channels>-<src>-<dst>-r<round>.json)
# Environment: CHANNELS (default "2 4"), SIZES (default 4M,64M), ROUNDS (default 3), TARGET
#   (default 0.8), STRICT=1 to exit 3 when a VRAM->VRAM ratio is below TARGET.
#   The plugin's own variables pass through: TCPX_SOCK_STAGE_KERNEL=1 stages CUDA sends with
#   the staging kernel (transport/sock/README.md).
set -euo pipefail

tcpx="${1:-target/release/tcpx}"
out="${2:-.}"
shift $(($# < 2 ? $# : 2))
channels="${CHANNELS:-2 4}"
sizes="${SIZES:-4M,64M}"
rounds="${ROUNDS:-3}"
target="${TARGET:-0.8}"

if [[ ! -x "$tcpx" ]]; then
    echo "bench-gpu: $tcpx is not an executable (build: cargo build --release -p tcpx-cli --bin tcpx)" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "bench-gpu: python3 is needed for the table" >&2; exit 2; }
mkdir -p "$out"

echo "== $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader || true
fi

mems="host:host cuda:cuda host:cuda cuda:host"
for c in $channels; do
    for r in $(seq "$rounds"); do
        for m in $mems; do
            f="$out/bench-gpu-c$c-${m/:/-}-r$r.json"
            echo "== round $r: --mem $m --channels $c -> $f"
            "$tcpx" bench --loopback --size "$sizes" --mem "$m" --channels "$c" --verify --json "$@" \
                | tee "$f"
        done
    done
done

echo
status=0
python3 - "$out" "$target" "$channels" "$rounds" <<'EOF' || status=$?
import json, statistics, sys

out, target, channels = sys.argv[1], float(sys.argv[2]), sys.argv[3].split()
rounds = int(sys.argv[4])
names = {"host:host": "DRAM->DRAM", "cuda:cuda": "VRAM->VRAM",
         "host:cuda": "DRAM->VRAM", "cuda:host": "VRAM->DRAM"}

def rows(c, m):
    """Median GB/s per size over the rounds."""
    runs = {}
    for r in range(1, rounds + 1):
        with open(f"{out}/bench-gpu-c{c}-{m.replace(':', '-')}-r{r}.json") as f:
            j = json.load(f)
        assert j["mem"] == m, (j["mem"], m)
        for row in j["rows"]:
            runs.setdefault(row["bytes"], []).append(row["gbps"])
    return {size: statistics.median(v) for size, v in runs.items()}

def label(n):
    for u, s in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= u and n % u == 0:
            return f"{n // u} {s}"
    return f"{n} B"

print(f"GB/s (p50 of each run, median of {rounds} interleaved rounds) and ratio to "
      f"DRAM->DRAM at the same size and channels; target VRAM->VRAM >= {target:.2f}x")
print(f"{'ch':>3} {'size':>8} {'DRAM->DRAM':>11} {'VRAM->VRAM':>17} "
      f"{'DRAM->VRAM':>17} {'VRAM->DRAM':>17}  VRAM->VRAM")
misses = 0
for c in channels:
    base = rows(c, "host:host")
    other = {m: rows(c, m) for m in ("cuda:cuda", "host:cuda", "cuda:host")}
    for size in sorted(base):
        b = base[size]
        cells = []
        for m in ("cuda:cuda", "host:cuda", "cuda:host"):
            g = other[m].get(size, float("nan"))
            r = g / b if b else float("nan")
            cells.append((g, r))
        vv = cells[0][1]
        ok = vv >= target  # NaN (missing row) counts as a miss
        misses += not ok
        print(f"{c:>3} {label(size):>8} {b:>11.3f} " +
              " ".join(f"{g:>8.3f} ({r:>5.2f}x)" for g, r in cells) +
              f"  {'ok' if ok else 'BELOW TARGET'}")
print(f"\n{misses} VRAM->VRAM row(s) below {target:.2f}x" if misses
      else f"\nall VRAM->VRAM rows >= {target:.2f}x")
sys.exit(3 if misses else 0)
EOF
if [[ $status -ne 0 && "${STRICT:-0}" == 1 ]]; then
    exit "$status"
fi
exit 0
