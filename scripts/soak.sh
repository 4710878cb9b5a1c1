#!/usr/bin/env bash
# Soak, two runs (release, in-process NIXL backends, engine over tcpxsock on loopback):
# - 100,000 small (4 KiB) WRITEs on one connection, RSS and fds sampled at 10k / 50k / 100k;
#   fails if RSS grows by more than 1 MiB between 10k and 100k, or the fd count changes;
# - 4,000 peers connecting (real handshake + engine session), sending a notification and
#   leaving; fails if RSS grows by more than 1 MiB over the second half, or the fd count moves.
# Env: TCPX_SOAK_N (default 100000), TCPX_SOAK_BYTES (default 4096), TCPX_SOAK_CONNS (default
# 4000), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export TCPX_SOAK_N="${TCPX_SOAK_N:-100000}" TCPX_SOAK_BYTES="${TCPX_SOAK_BYTES:-4096}"
export TCPX_SOAK_CONNS="${TCPX_SOAK_CONNS:-4000}"
export TCPX_SOCK_IFNAME=lo
exec cargo test --release -p tcpx-nixl --test soak -- --ignored --nocapture --test-threads=1
