#!/usr/bin/env bash
# Builds the `tcpx` wheel (python/, PyO3 + maturin) with both plugin libraries inside it,
# installs it into the project's venv and runs python/tests with pytest over loopback.
#
#   scripts/python-tests.sh             # debug build (shares the workspace's debug artifacts)
#   scripts/python-tests.sh --release   # optimised build (what python/bench.py should measure)
#   scripts/python-tests.sh --bench     # --release, then python/bench.py instead of the tests
#   PYTEST_ARGS="-k gil" scripts/python-tests.sh
#
# The venv is $TCPX_VENV, default <repo>/.venv (the one scripts/nixl-venv.sh makes; created
# here when missing). maturin, numpy and pytest come from PyPI. GPU tests print SKIP without
# torch and a CUDA device; REQUIRE_GPU=1 turns a skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

profile=debug
mode=test
for a in "$@"; do
    case "$a" in
        --release) profile=release ;;
        --bench) profile=release mode=bench ;;
        *)
            echo "usage: $0 [--release | --bench]" >&2
            exit 2
            ;;
    esac
done
cargo_profile=$([ "$profile" = debug ] && echo dev || echo release)

step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

venv="${TCPX_VENV:-$root/.venv}"
py="$venv/bin/python"
step "venv $venv: maturin, numpy, pytest"
if [[ ! -x "$py" ]]; then
    python3 -m venv "$venv"
fi
if ! "$py" -c 'import maturin, numpy, pytest' >/dev/null 2>&1; then
    "$py" -m pip install --quiet --upgrade pip
    "$py" -m pip install --quiet "maturin>=1.9,<2" numpy pytest
fi

step "plugins ($profile) into python/tcpx/plugins"
cargo build --profile "$cargo_profile" -p tcpx-sock -p tcpx-nixl --lib
bash scripts/collect-plugins.sh "$profile"
mkdir -p python/tcpx/plugins
cp -f target/plugins/libnccl-net-tcpxsock.so target/plugins/libplugin_TCPX.so python/tcpx/plugins/

step "wheel ($profile)"
wheels="target/wheels/$profile"
rm -rf "$wheels"
# --compatibility linux: a wheel for this machine and its like (no manylinux audit: the
# plugins are built here, against this glibc).
"$venv/bin/maturin" build --manifest-path python/Cargo.toml --profile "$cargo_profile" \
    --interpreter "$py" --compatibility linux --out "$wheels"
wheel=$(ls "$wheels"/tcpx-*.whl)
"$py" -m pip install --quiet --force-reinstall --no-deps "$wheel"
echo "installed $wheel"
echo "build: $(($(date +%s) - start)) s"

# Outside the source tree, so `import tcpx` is the installed wheel, not python/tcpx/.
cd "$root/python/tests"
export TCPX_SOCK_IFNAME=lo
if [ "$mode" = bench ]; then
    step "bench: Python-driven transfers vs tcpx bench --loopback"
    "$py" "$root/python/bench.py"
else
    step "pytest python/tests"
    # shellcheck disable=SC2086
    "$py" -m pytest -q ${PYTEST_ARGS:-} .
fi
echo "total: $(($(date +%s) - start)) s"
