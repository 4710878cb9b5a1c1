#!/usr/bin/env bash
# Regenerates the committed fuzz seeds, fuzz/seeds/<target>/, from the current wire format
# (core/examples/fuzz_seeds). Run it after a format change; core/tests/fuzz_seeds.rs fails
# until the committed seeds equal what it writes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo run -q -p tcpx-core --example fuzz_seeds -- "$root/fuzz/seeds"
