#!/usr/bin/env bash
# Builds what the GPU checks run into one folder, for a GPU machine without a Rust toolchain:
# the release test binaries of every GPU test, the `tcpx` CLI, the unpack benchmark and the
# plugins (libnccl-net-tcpxsock.so, libplugin_TCPX.so), debug info stripped.
# Run them there from a checkout of the same tree with scripts/gpu-check.sh.
#
#   scripts/gpu-bundle.sh [OUTDIR]     # default .device/bundle
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.device/bundle}"
target_dir="${CARGO_TARGET_DIR:-target}"

bash scripts/install-nvcc.sh >/dev/null
export KERNELS_REQUIRE_NVCC=1 # a bundle without the kernels would only test the stub

cargo build --release -p tcpx-cli --bin tcpx
cargo build --release -p tcpx-nixl -p tcpx-sock
cargo build --release -p tcpx-kernels --example unpack_bench
bash scripts/collect-plugins.sh release >/dev/null

rm -rf "$out"
mkdir -p "$out/bin" "$out/plugins"
# Each GPU test binary by its target name (cargo names the file <name>-<hash>).
cargo test --release --no-run --message-format=json \
    -p tcpx-kernels --test unpack_gpu -p tcpx-sock --test cuda -p tcpx --lib --test engine_gpu \
    -p tcpx-cli --test bench_cli --test bench_cuda -p tcpx-tests --test no_alloc_gpu -p tcpx-nixl --test vram_inline --test multi_gpu --test vram_registration |
    python3 -c '
import json, shutil, sys
out = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        # --lib selects every package'"'"'s unit tests; only the engine'"'"'s have GPU tests.
        if m["target"]["kind"] != ["test"] and (m["target"]["kind"], m["target"]["name"]) != (["lib"], "tcpx"):
            continue
        shutil.copy(m["executable"], f"{out}/bin/test-{m['"'"'target'"'"']['"'"'name'"'"']}")
' "$out"
cp "$target_dir/release/tcpx" "$target_dir/release/examples/unpack_bench" "$out/bin/"
cp target/plugins/*.so "$out/plugins/"
# Tests that load the plugin as a shared object look for it next to their own binary.
cp "$target_dir/release/libtcpx_sock.so" "$out/bin/"
strip --strip-debug "$out"/bin/* "$out"/plugins/*.so
# Tests that start the CLI look for it where cargo built it.
echo "$(cd "$target_dir" && pwd)/release/tcpx" >"$out/cli-path"
ls -l "$out/bin" "$out/plugins"
du -sh "$out"
