#!/usr/bin/env bash
# Soak: 100,000 small (4 KiB) WRITEs between two in-process NIXL backends (tcpx-nixl, engine
# over tcpxsock on loopback), RSS and fd count sampled at 10k / 50k / 100k. Fails if RSS grows
# by more than 1 MiB between 10k and 100k, or the fd count changes.
# Env: TCPX_SOAK_N (default 100000), TCPX_SOAK_BYTES (default 4096), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export TCPX_SOAK_N="${TCPX_SOAK_N:-100000}" TCPX_SOAK_BYTES="${TCPX_SOAK_BYTES:-4096}"
export TCPX_SOCK_IFNAME=lo
exec cargo test --release -p tcpx-nixl --test soak -- --ignored --nocapture --test-threads=1 \
    soak_small_writes
