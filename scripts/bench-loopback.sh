#!/usr/bin/env bash
# The README's main-job benchmark: tcpx loopback throughput next to iperf3 and latency next
# to a plain TCP ping-pong, all measured in one run on this machine.
#   64 MiB, C=1 and C=4, vs iperf3 -P 1 / -P 4   (target >= 0.9x)
#   4 KiB p50 latency vs a 4 KiB TCP ping-pong    (target <= 1.5x)
# Extra arguments go to every `tcpx bench` call (e.g. --json, --poller threads).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v iperf3 >/dev/null 2>&1; then
    # The baselines need it; `tcpx bench` would only skip them with a note.
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y iperf3 || { $SUDO apt-get update && $SUDO apt-get install -y iperf3; }
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo build --release -p tcpx-cli --bin tcpx
TCPX="$CARGO_TARGET_DIR/release/tcpx"

echo "== $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in 1 4; do
    echo
    echo "== 64 MiB, $c channel(s) vs iperf3 -P 1 / -P 4"
    "$TCPX" bench --loopback --baseline --size 64M --channels "$c" "$@"
done
echo
echo "== 4 KiB latency vs TCP ping-pong"
"$TCPX" bench --loopback --baseline --size 4K "$@"
