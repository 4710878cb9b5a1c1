#!/usr/bin/env bash
# Creates (or reuses) <repo>/.venv with the NIXL wheel the TCPX plugin targets, numpy and
# pytest, then prints the venv's python path on stdout (the last line). Idempotent: a venv
# that already has the pinned versions is left alone.
#
# nixl-cu12 is installed with --no-deps: its declared dependencies pull in torch, which the
# Python API imports only when tensors are passed; our tests use numpy arrays.
set -euo pipefail

NIXL_PIN="nixl-cu12==1.5.1"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TCPX_VENV:-$repo/.venv}"
py="$venv/bin/python"

if [[ ! -x "$py" ]]; then
    python3 -m venv "$venv" >&2
fi

have() {
    "$py" - "$@" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    got = version(name)
    if want and got != want:
        sys.exit(1)
PY
}

if ! have "$NIXL_PIN" numpy pytest; then
    "$py" -m pip install --quiet --upgrade pip >&2
    "$py" -m pip install --quiet --no-deps "$NIXL_PIN" >&2
    "$py" -m pip install --quiet numpy pytest >&2
fi

# The wheel must import without torch; fail here rather than in the first test.
"$py" -c 'from nixl_cu12 import nixl_agent, nixl_agent_config' >&2
echo "$py"
