#!/usr/bin/env bash
# vLLM-shaped KV-cache pull over NIXL, TCPX backend vs NIXL's UCX backend (UCX_TLS=tcp), in
# one command: builds the release plugin, then runs benches/nixl/kv_pull.py (a prefill
# process holding layers x K/V regions of paged blocks; this process pulls each request with
# one prepped READ of regions x blocks descriptors, several requests in flight).
#
#   scripts/bench-kv.sh                                   # 1/16/256-block requests, 1 and 8 in flight
#   scripts/bench-kv.sh --json kv.json --verify           # every byte checked (slower figures)
#   scripts/bench-kv.sh --mem VRAM                        # GPU 0 (SKIP without one); UCX
#                                                         # gets UCX_TLS=tcp,cuda_copy,cuda_ipc
#   scripts/bench-kv.sh --help                            # every option
#
# TCPX data goes over the built-in tcpxsock on loopback (TCPX_SOCK_IFNAME=lo unless set).
# Exit status 1 when a transfer failed or moved wrong data; refusals are reported, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tcpx-nixl -p tcpx-sock >&2
# Replaced by rename (collect-plugins.sh): a process that has the old file mapped keeps it.
bash scripts/collect-plugins.sh release >&2
py=$(bash scripts/nixl-venv.sh | tail -n 1)
export TCPX_SOCK_IFNAME="${TCPX_SOCK_IFNAME:-lo}"
export UCX_TLS="${UCX_TLS:-tcp}"
exec "$py" benches/nixl/kv_pull.py --tcpx-plugin target/plugins/libplugin_TCPX.so "$@"
