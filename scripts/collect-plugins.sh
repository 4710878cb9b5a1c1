#!/usr/bin/env bash
# Copies the built plugin libraries to target/plugins/ under the names their loaders expect:
# libnccl-net-tcpxsock.so (ncclNet plugin) and libplugin_TCPX.so (NIXL backend).
#   scripts/collect-plugins.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-release}
src="${CARGO_TARGET_DIR:-target}/$profile"
mkdir -p target/plugins
# Replaced by rename, never overwritten in place: a process that has the old file mapped
# keeps a valid file (writing into a mapped library crashes it).
put() { cp -f "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
put "$src/libtcpx_sock.so" target/plugins/libnccl-net-tcpxsock.so
put "$src/libplugin_TCPX.so" target/plugins/libplugin_TCPX.so
echo "plugins: $(ls target/plugins | tr '\n' ' ')"
