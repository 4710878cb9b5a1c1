#!/usr/bin/env bash
# NIXL two-process benchmark, TCPX backend vs NIXL's UCX backend (UCX_TLS=tcp), in one
# command: builds the release plugin, then runs benches/nixl/nixl_bench.py (which links
# libplugin_TCPX.so and the wheel's libplugin_UCX.so into a temporary NIXL_PLUGIN_DIR,
# because that variable replaces the wheel's own plugin folder).
#
#   scripts/bench-nixl.sh                                  # WRITE+READ, 4K..64M, batch 1 and 16
#   scripts/bench-nixl.sh --json out.json --sizes 4K,1M --iters 50 --channels 4
#   scripts/bench-nixl.sh --help                           # every option
#
# TCPX data goes over the built-in tcpxsock on loopback (TCPX_SOCK_IFNAME=lo unless set).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p tcpx-nixl >&2
mkdir -p target/plugins
cp -f "$target_dir/release/libplugin_TCPX.so" target/plugins/libplugin_TCPX.so
py=$(bash scripts/nixl-venv.sh | tail -n 1)
export TCPX_SOCK_IFNAME="${TCPX_SOCK_IFNAME:-lo}"
export UCX_TLS="${UCX_TLS:-tcp}"
exec "$py" benches/nixl/nixl_bench.py --tcpx-plugin target/plugins/libplugin_TCPX.so "$@"
