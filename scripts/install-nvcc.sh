#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels from PyPI into <repo>/.tools/nvcc and prints
# the nvcc path. kernels/build.rs finds nvcc there. Idempotent: does nothing when the pinned
# nvcc is already installed. Keep nvcc at 13.0.x: newer PTX is rejected by driver 580.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${TCPX_NVCC_DIR:-$root/.tools/nvcc}"
nvcc="$dest/nvidia/cu13/bin/nvcc"
want="13.0.88"
stamp="$dest/.tcpx-nvcc-$want"

if [[ -x "$nvcc" && -f "$stamp" ]]; then
    echo "$nvcc"
    exit 0
fi

python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --upgrade --target "$dest" \
    "nvidia-cuda-nvcc==$want" \
    "nvidia-nvvm==$want" \
    "nvidia-cuda-crt==$want" \
    "nvidia-cuda-runtime==13.0.96" >&2

if ! "$nvcc" --version >/dev/null; then
    echo "install-nvcc: $nvcc does not run" >&2
    exit 1
fi
touch "$stamp"
echo "$nvcc"
