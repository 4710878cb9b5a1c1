#!/usr/bin/env bash
# Tests `tcpx nixl install | uninstall | status` against the real NIXL wheels, in fresh venvs
# made here on every run (tests/nixl_install/test_nixl_install.py says what each holds):
#   cu12   nixl-cu12                         (agents from `import nixl_cu12`)
#   nixl   nixl-cu12 + nixl-cu13 + nixl      (`import nixl`: the meta package picks nixl_cu13)
# Wheels are installed with --no-deps (their torch dependency is not needed without tensors)
# from .tools/nixl-wheels/, downloaded once (scripts/nixl-venv.sh). Prints how long each phase
# took.
#   scripts/nixl-install-tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# nixl_wheels, nixl_fresh_venv, NIXL_VERSION: the venv code every NIXL test shares.
. scripts/nixl-venv.sh
export NIXL_INSTALL_VENVS=${NIXL_INSTALL_VENVS:-$root/.tools/nixl-install}
export TCPX_BIN=$root/target/debug/tcpx TCPX_PLUGIN_DIR=$root/target/plugins

t0=$SECONDS
# Two commands: --bin would restrict every -p of one command to binaries (no plugin built).
cargo build --quiet -p tcpx-cli --bin tcpx
cargo build --quiet -p tcpx-nixl -p tcpx-sock
bash scripts/collect-plugins.sh debug >/dev/null

# The project venv runs pytest and lends its pip (--python) and interpreter to the new venvs,
# so the wheels' cp tag matches.
nixl_wheels
py=$nixl_py
t1=$SECONDS

nixl_fresh_venv "$NIXL_INSTALL_VENVS/cu12" "nixl-cu12==$NIXL_VERSION" >/dev/null
nixl_fresh_venv "$NIXL_INSTALL_VENVS/nixl" \
    "nixl-cu12==$NIXL_VERSION" "nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION" >/dev/null
t2=$SECONDS

"$py" -m pytest -q tests/nixl_install "$@"
t3=$SECONDS
echo "nixl-install-tests: build+wheels $((t1 - t0)) s, venvs $((t2 - t1)) s, tests $((t3 - t2)) s"
