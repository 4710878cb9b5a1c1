#!/usr/bin/env bash
# Multi-host NIXL tests (tests/multihost): TCPX agents in network namespaces joined by a
# bridge, metadata through etcd, link faults (loss/delay, cable pulled) and process faults.
#
#   scripts/multihost.sh                     # install what is missing, build, run
#   CARGO_TARGET_DIR=/work/tgt/mh TCPX_PLUGIN_DIR=/work/tgt/mh/plugins scripts/multihost.sh
#
# Installs (Debian, as root, only if missing): iproute2 (ip, tc), etcd-server, etcd-client,
# nftables (the loss-only fallback where the kernel has neither sch_netem nor /dev/net/tun;
# with a TUN device tests/multihost/delay_link.py gives loss and delay). Builds tcpx-nixl and
# copies libplugin_TCPX.so to $TCPX_PLUGIN_DIR (default <repo>/target/plugins). Extra
# arguments go to pytest (e.g. -s to see the measured times, -k to select).
#
# Exits 0 when network namespaces are not permitted here (the tests skip, saying why), and
# non-zero on a real failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target="${CARGO_TARGET_DIR:-$root/target}"
export TCPX_PLUGIN_DIR="${TCPX_PLUGIN_DIR:-$root/target/plugins}"

step() { printf '\n==> %s\n' "$*"; }

step "system tools"
need=()
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v nft >/dev/null || need+=(nftables)
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        # Update the package lists only if the install cannot find the packages.
        apt-get install -y "${need[@]}" >/dev/null ||
            { apt-get update >/dev/null && apt-get install -y "${need[@]}" >/dev/null; } ||
            echo "warning: could not install ${need[*]}; the tests that need them skip" >&2
    else
        echo "warning: missing ${need[*]} and not root with apt-get; the tests that need them skip" >&2
    fi
fi

step "build the TCPX plugin into $TCPX_PLUGIN_DIR"
CARGO_TARGET_DIR="$target" cargo build -p tcpx-nixl
mkdir -p "$TCPX_PLUGIN_DIR"
cp "$target/debug/libplugin_TCPX.so" "$TCPX_PLUGIN_DIR/"

step "NIXL venv"
py=$(bash scripts/nixl-venv.sh | tail -n 1)

step "pytest tests/multihost"
"$py" -m pytest -q -rs tests/multihost "$@"
