#!/usr/bin/env bash
# Run the cargo-fuzz targets in crates/fuzz on the pinned stable toolchain (RUSTC_BOOTSTRAP=1
# lets it take the sanitizer flags). Each target runs from its committed seed corpus for
# SECONDS_PER_TARGET (default 60) with JOBS workers (default: the number of cores); a crash
# stops with the reproducer's path under crates/fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   scripts/fuzz.sh masker 600           # one target, 10 minutes
#   SECONDS_PER_TARGET=900 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(protocol_decode override_writer compose_policy masker config_loader)
if [[ $# -ge 1 ]]; then
    TARGETS=("$1")
fi
SECONDS_PER_TARGET="${2:-${SECONDS_PER_TARGET:-60}}"
JOBS="${JOBS:-$(nproc)}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "[fuzz] installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1

for target in "${TARGETS[@]}"; do
    corpus="crates/fuzz/corpus/$target"
    work="crates/fuzz/target/corpus/$target"
    mkdir -p "$work"
    echo "[fuzz] $target: ${SECONDS_PER_TARGET}s x $JOBS worker(s)" >&2
    # New inputs go to the scratch corpus; the committed seeds are read only.
    cargo fuzz run --fuzz-dir crates/fuzz "$target" "$work" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -fork="$JOBS" \
        -print_final_stats=1 -max_len=65536 2>&1 | tee "crates/fuzz/target/$target.log" |
        grep -E "^#[0-9]+.*(DONE|pulse)|stat::|ERROR|SUMMARY|crash-|Done" || true
    if ls "crates/fuzz/artifacts/$target"/crash-* >/dev/null 2>&1; then
        echo "[fuzz] $target: CRASH, see crates/fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
echo "[fuzz] done: no crash" >&2
