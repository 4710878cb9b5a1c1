#!/usr/bin/env bash
# CI smoke run of every cargo-fuzz target declared in fuzz/Cargo.toml: SECONDS (default 10)
# each, on nightly, with ASan and overflow checks. Exits non-zero if any target crashes.
# Seeds are read from fuzz/seeds/<target> (committed, written by scripts/fuzz-seeds.sh);
# new inputs go to fuzz/corpus/<target> (git-ignored), which grows from run to run on this
# machine. Crash inputs land in fuzz/artifacts/<target>/.
set -euo pipefail

secs=${1:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz or the nightly toolchain is missing: cargo install cargo-fuzz" >&2
    exit 2
fi

targets=$(cargo +nightly fuzz list)
for t in $targets; do
    if [ ! -d "seeds/$t" ]; then
        echo "no seeds for $t: run scripts/fuzz-seeds.sh" >&2
        exit 2
    fi
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One build for all targets; the runs below then only link-check.
cargo +nightly fuzz build

failed=()
for t in $targets; do
    mkdir -p "corpus/$t"
    if cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" >"$work/$t.log" 2>&1; then
        execs=$(grep -oE '^#[0-9]+' "$work/$t.log" | tail -1 | tr -d '#' || true)
        rate=$(grep -oE 'exec/s: [0-9]+' "$work/$t.log" | tail -1 | grep -oE '[0-9]+$' || true)
        kept=$(find "corpus/$t" -type f | wc -l)
        echo "ok    $t: ${execs:-?} executions in ${secs}s (${rate:-?}/s), corpus/$t: $kept inputs"
    else
        echo "CRASH $t (log tail below; input in fuzz/artifacts/$t/)"
        tail -n 60 "$work/$t.log"
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz smoke failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke passed: $(echo "$targets" | wc -w) targets"
