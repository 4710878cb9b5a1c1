#!/usr/bin/env bash
# Every GPU test and benchmark, on a GPU machine, from a bundle made by scripts/gpu-bundle.sh
# (no Rust toolchain needed here). Run from the repository root.
#
#   REQUIRE_GPU=1 scripts/gpu-check.sh BUNDLE OUTDIR [steps...]
#
# steps (default: all of them, in this order):
#   tests      GPU tests: kernels vs the CPU unpack, tcpxsock CUDA buffers, engine VRAM paths
#              in one process and in two, zero allocation on the GPU hot path, the bench CLI
#              with device memory, the NIXL backend's inline READs of device memory
#   sanitizer  the unpack kernel tests and the plugin's CUDA tests (the staging kernel) under
#              compute-sanitizer --tool memcheck (where installed)
#   kernels    unpack throughput vs cuMemcpy{DtoD,HtoD}, launch latency (unpack_bench)
#   engine     tcpx bench VRAM/DRAM paths vs DRAM->DRAM (scripts/bench-gpu.sh), 2 and 4 channels
#   nixl       NIXL VRAM tests, and TCPX vs UCX (tcp,cuda_copy) VRAM and DRAM with 4 channels
#              (needs python3 that imports NIXL: nixl, nixl_cu12 or nixl_cu13; skipped with a
#              note otherwise)
#   nccl       real NCCL (PyTorch's) through tcpxsock vs NCCL's Socket: exact collectives with
#              NCCL's unpack kernel (tests/nccl), then all_reduce bandwidth and 4 KiB latency
#              side by side (needs python3 that imports torch; skipped with a note otherwise)
# Each step's log and JSON land in OUTDIR; the exit code is non-zero if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bundle="$(cd "${1:?usage: gpu-check.sh BUNDLE OUTDIR [steps...]}" && pwd)"
out="${2:?usage: gpu-check.sh BUNDLE OUTDIR [steps...]}"
shift 2
steps="${*:-tests sanitizer kernels engine nixl nccl}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export REQUIRE_GPU="${REQUIRE_GPU:-1}" TCPX_SOCK_IFNAME=lo
failed=""

step() { # name, command...
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    if "$@" >"$out/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - t0)) s)"
    else
        echo "   FAILED ($((SECONDS - t0)) s), last lines of $name.log:"
        tail -n 25 "$out/$name.log" | sed 's/^/   | /'
        failed="$failed $name"
    fi
}

# The CLI where the tests expect it (the path cargo built it at).
cli="$(cat "$bundle/cli-path")"
if [[ ! -x "$cli" ]]; then
    mkdir -p "$(dirname "$cli")" && cp "$bundle/bin/tcpx" "$cli"
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null |
    tee "$out/gpu.txt"
echo "$(nproc) cores"

for s in $steps; do
    case $s in
    tests)
        for t in "$bundle"/bin/test-*; do
            step "$(basename "$t")" "$t" --test-threads 1
        done
        ;;
    sanitizer)
        if command -v compute-sanitizer >/dev/null; then
            step sanitizer compute-sanitizer --tool memcheck --error-exitcode 9 \
                --target-processes all "$bundle/bin/test-unpack_gpu" --test-threads 1
            step sanitizer-stage compute-sanitizer --tool memcheck --error-exitcode 9 \
                --target-processes all "$bundle/bin/test-cuda" --test-threads 1
        else
            echo "== sanitizer: compute-sanitizer not installed, not run"
        fi
        ;;
    kernels)
        step unpack_bench "$bundle/bin/unpack_bench" --json "$out/unpack_bench.json"
        ;;
    engine)
        step bench_gpu env CHANNELS="2 4" bash scripts/bench-gpu.sh "$bundle/bin/tcpx" "$out"
        ;;
    nixl)
        # Whichever NIXL python3 imports (tests/nixl/nixl_wheel.py: the `nixl` meta package,
        # nixl_cu12 or nixl_cu13; TCPX_NIXL_MODULE picks one). On a CUDA 13 image take
        # nixl-cu13: nixl-cu12's UCX finds no libcudart.so.12 there and refuses VRAM.
        if ! (cd tests/nixl && python3 -c 'import nixl_wheel; print(nixl_wheel.describe())'); then
            echo "== nixl: python3 cannot import NIXL, not run"
            continue
        fi
        step nixl_tests env TCPX_PLUGIN_DIR="$bundle/plugins" python3 -m pytest -q \
            tests/nixl/test_vram.py tests/nixl/test_load.py
        # The vLLM-shaped pull from device memory, TCPX and UCX (UCX's refusal skips).
        step nixl_kv_vram env TCPX_PLUGIN_DIR="$bundle/plugins" python3 -m pytest -q -rs \
            tests/nixl/test_kv_pull.py -k vram
        for mem in VRAM DRAM; do
            step "nixl_bench_$mem" python3 benches/nixl/nixl_bench.py \
                --tcpx-plugin "$bundle/plugins/libplugin_TCPX.so" --mem "$mem" \
                --channels 4 --sizes 4K,1M,64M --batches 1,16 --budget 1G \
                --json "$out/nixl_bench_$mem.json"
        done
        ;;
    nccl)
        if ! python3 -c 'import torch' 2>/dev/null; then
            echo "== nccl: python3 cannot import torch, not run"
            continue
        fi
        # Every run's NCCL log stays in OUTDIR/nccl/<configuration>/rank<r>.log.
        if python3 -c 'import pytest' 2>/dev/null; then
            step nccl_tests env TCPX_PLUGIN_DIR="$bundle/plugins" TCPX_NCCL_LOGDIR="$out/nccl" \
                python3 -m pytest -q -rA tests/nccl
        else
            step nccl_tests python3 tests/nccl/run_nccl.py --check --probe \
                --plugin "$bundle/plugins/libnccl-net-tcpxsock.so" --logdir "$out/nccl"
        fi
        step nccl_bench python3 tests/nccl/run_nccl.py --bench \
            --plugin "$bundle/plugins/libnccl-net-tcpxsock.so" --logdir "$out/nccl_bench" \
            --json "$out/nccl_bench.json"
        ;;
    *)
        echo "unknown step $s" >&2
        exit 2
        ;;
    esac
done

if [[ -n "$failed" ]]; then
    echo "failed:$failed"
    exit 1
fi
echo "all steps passed"
