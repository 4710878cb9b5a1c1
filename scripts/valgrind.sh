#!/usr/bin/env bash
# Valgrind memcheck over 1,000 host WRITEs (4 KiB) between two in-process NIXL backends over
# the engine (tcpxsock on loopback): the soak test with TCPX_SOAK_N=1000.
# Exit status 1 on any memcheck error or definite/possible leak.
# Env: TCPX_SOAK_N (default 1000), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not installed" >&2; exit 2; }
bin=$(cargo test --release -p tcpx-nixl --test soak --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "soak":
        print(m["executable"])')
[ -x "$bin" ] || { echo "soak test binary not built" >&2; exit 2; }
export TCPX_SOAK_N="${TCPX_SOAK_N:-1000}" TCPX_SOCK_IFNAME=lo
# One suppression, not ours: libtest's main thread lazily creates its std::thread::Thread
# handle (48 bytes, thread-local, never freed) while waiting for test results.
supp=$(mktemp)
trap 'rm -f "$supp"' EXIT
cat >"$supp" <<'SUPP'
{
   libtest-main-thread-handle
   Memcheck:Leak
   match-leak-kinds: possible
   fun:malloc
   ...
   fun:*init_current*
   ...
   fun:*run_tests_console*
}
SUPP
valgrind --tool=memcheck --error-exitcode=1 --leak-check=full --show-leak-kinds=definite,possible \
    --errors-for-leak-kinds=definite,possible --fair-sched=yes --suppressions="$supp" \
    "$bin" --ignored --nocapture --test-threads=1 soak_small_writes
