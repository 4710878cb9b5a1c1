#!/usr/bin/env bash
# Tests `tcpx nixl install | uninstall | status` against the real NIXL wheels, in fresh venvs
# made here on every run (tests/nixl_install/test_nixl_install.py says what each holds):
#   cu12   nixl-cu12                         (agents from `import nixl_cu12`)
#   nixl   nixl-cu12 + nixl-cu13 + nixl      (`import nixl`: the meta package picks nixl_cu13)
# Wheels are installed with --no-deps (their torch dependency is not needed without tensors)
# from .tools/nixl-wheels/, downloaded once. Prints how long each phase took.
#   scripts/nixl-install-tests.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
NIXL_VERSION=1.5.1
wheels=$root/.tools/nixl-wheels
export NIXL_INSTALL_VENVS=${NIXL_INSTALL_VENVS:-$root/.tools/nixl-install}
export TCPX_BIN=$root/target/debug/tcpx TCPX_PLUGIN_DIR=$root/target/plugins

t0=$SECONDS
cargo build --quiet -p tcpx --bin tcpx -p tcpx-nixl -p tcpx-sock
bash scripts/collect-plugins.sh debug >/dev/null

# The project venv runs pytest and lends its pip (--python) and interpreter to the new venvs,
# so the wheels' cp tag matches.
py=$(bash scripts/nixl-venv.sh)
numpy=$("$py" -c 'import numpy; print(numpy.__version__)')
pins=("nixl-cu12==$NIXL_VERSION" "nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION" "numpy==$numpy")
if ! "$py" -m pip download --quiet --no-deps --no-index --find-links "$wheels" -d "$wheels" \
        "${pins[@]}" >/dev/null 2>&1; then
    "$py" -m pip download --quiet --no-deps -d "$wheels" "${pins[@]}"
fi
t1=$SECONDS

fresh() {
    local venv=$NIXL_INSTALL_VENVS/$1
    shift
    rm -rf "$venv"
    "$py" -m venv --without-pip "$venv"
    "$py" -m pip --python "$venv/bin/python" install --quiet --no-deps --no-index \
        --find-links "$wheels" "$@" "numpy==$numpy"
}
fresh cu12 "nixl-cu12==$NIXL_VERSION"
fresh nixl "nixl-cu12==$NIXL_VERSION" "nixl-cu13==$NIXL_VERSION" "nixl==$NIXL_VERSION"
t2=$SECONDS

"$py" -m pytest -q tests/nixl_install "$@"
t3=$SECONDS
echo "nixl-install-tests: build+wheels $((t1 - t0)) s, venvs $((t2 - t1)) s, tests $((t3 - t2)) s"
