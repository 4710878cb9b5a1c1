#!/usr/bin/env bash
# Copies the built plugin libraries to target/plugins/ under the names their loaders expect:
# libnccl-net-tcpxsock.so (ncclNet plugin) and libplugin_TCPX.so (NIXL backend).
#   scripts/collect-plugins.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
src="${CARGO_TARGET_DIR:-target}/$profile"
mkdir -p target/plugins
cp -f "$src/libtcpx_sock.so" target/plugins/libnccl-net-tcpxsock.so
cp -f "$src/libplugin_TCPX.so" target/plugins/libplugin_TCPX.so
echo "plugins: $(ls target/plugins | tr '\n' ' ')"
