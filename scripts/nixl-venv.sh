#!/usr/bin/env bash
# The NIXL venvs the tests use. NIXL wheels are always installed with --no-deps: their declared
# dependencies pull in torch, which the Python API imports only when tensors are passed; our
# tests use numpy arrays.
#
#   scripts/nixl-venv.sh
#       Creates (or reuses) <repo>/.venv ($TCPX_VENV overrides) with nixl-cu12==1.5.1, numpy
#       and pytest; idempotent (a venv that already has the pinned versions is left alone).
#   scripts/nixl-venv.sh fresh DIR [--pytest] PKG...
#       A new venv at DIR (removed first), made by the project venv's interpreter (so the
#       wheels' cp tag matches), holding PKG... (pins of nixl-cu12, nixl-cu13 or nixl: see
#       NIXL_PINS) and numpy, plus pytest with --pytest, all from .tools/nixl-wheels (downloaded
#       from PyPI once, then reused offline).
#   scripts/nixl-venv.sh meta-cu13 DIR
#       `fresh DIR --pytest nixl-cu13 nixl`: what users get from `pip install nixl` on a
#       machine without torch (`import nixl` picks nixl_cu13), for scripts/test.sh.
# Either prints the venv's python as its last line of stdout. Sourced, the file only defines
# the functions (nixl_project_venv, nixl_wheels, nixl_fresh_venv) for other scripts.
#
# Which venv tests what (docs/NIXL.md, Testing): .venv runs tests/nixl with the plugin from
# NIXL_PLUGIN_DIR; scripts/test.sh's TCPX-mode step runs it again in a fresh venv holding
# `nixl` + `nixl-cu13` with the plugin put in place by `tcpx nixl install`;
# scripts/nixl-install-tests.sh makes its own fresh venvs for the install command.

NIXL_VERSION=1.5.1
NIXL_PINS=("nixl-cu12==$NIXL_VERSION" "nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION")
NIXL_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NIXL_WHEELS=${NIXL_WHEELS:-$NIXL_REPO/.tools/nixl-wheels}

# <repo>/.venv with nixl-cu12, numpy and pytest; prints its python.
nixl_project_venv() {
    local venv="${TCPX_VENV:-$NIXL_REPO/.venv}"
    local py="$venv/bin/python"
    if [[ ! -x "$py" ]]; then
        python3 -m venv "$venv" >&2
    fi
    if ! "$py" - "nixl-cu12==$NIXL_VERSION" numpy pytest <<'PY' >/dev/null 2>&1; then
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    got = version(name)
    if want and got != want:
        sys.exit(1)
PY
        "$py" -m pip install --quiet --upgrade pip >&2
        "$py" -m pip install --quiet --no-deps "nixl-cu12==$NIXL_VERSION" >&2
        "$py" -m pip install --quiet numpy pytest >&2
    fi
    # The wheel must import without torch; fail here rather than in the first test.
    "$py" -c 'from nixl_cu12 import nixl_agent, nixl_agent_config' >&2
    echo "$py"
}

# Fills $NIXL_WHEELS once: the NIXL wheels (no dependencies), numpy and pytest (with its
# dependencies) at the project venv's versions. Sets nixl_py, nixl_numpy, nixl_pytest.
nixl_wheels() {
    nixl_py=$(nixl_project_venv)
    read -r nixl_numpy nixl_pytest < <("$nixl_py" -c \
        'import numpy, pytest; print(numpy.__version__, pytest.__version__)')
    local pins=("${NIXL_PINS[@]}" "numpy==$nixl_numpy")
    local have=(--quiet --no-index --find-links "$NIXL_WHEELS" -d "$NIXL_WHEELS")
    if ! "$nixl_py" -m pip download "${have[@]}" --no-deps "${pins[@]}" >/dev/null 2>&1; then
        "$nixl_py" -m pip download --quiet --no-deps -d "$NIXL_WHEELS" "${pins[@]}" >&2
    fi
    if ! "$nixl_py" -m pip download "${have[@]}" "pytest==$nixl_pytest" >/dev/null 2>&1; then
        "$nixl_py" -m pip download --quiet --only-binary :all: -d "$NIXL_WHEELS" \
            "pytest==$nixl_pytest" >&2
    fi
}

# nixl_fresh_venv DIR [--pytest] PKG...: see the header; prints DIR's python.
nixl_fresh_venv() {
    local venv=$1 pytest=0
    shift
    if [[ ${1:-} == --pytest ]]; then
        pytest=1
        shift
    fi
    [[ -n ${nixl_py:-} ]] || nixl_wheels
    rm -rf "$venv"
    "$nixl_py" -m venv --without-pip "$venv" >&2
    local pip=("$nixl_py" -m pip --python "$venv/bin/python" install --quiet --no-compile --no-index
        --find-links "$NIXL_WHEELS")
    "${pip[@]}" --no-deps "$@" "numpy==$nixl_numpy" >&2
    if [[ $pytest == 1 ]]; then
        "${pip[@]}" "pytest==$nixl_pytest" >&2
    fi
    echo "$venv/bin/python"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    case "${1:-}" in
        "") nixl_project_venv ;;
        fresh)
            shift
            [[ $# -ge 2 ]] || { echo "usage: $0 fresh DIR [--pytest] PKG..." >&2; exit 2; }
            nixl_fresh_venv "$@"
            ;;
        meta-cu13)
            [[ $# -eq 2 ]] || { echo "usage: $0 meta-cu13 DIR" >&2; exit 2; }
            nixl_fresh_venv "$2" --pytest "nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION"
            ;;
        *)
            echo "usage: $0 [fresh DIR [--pytest] PKG... | meta-cu13 DIR]" >&2
            exit 2
            ;;
    esac
fi
