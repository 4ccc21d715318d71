#!/usr/bin/env bash
# Benchmarks (issue 6): a release build, then `stagely-loadgen bench` against a real
# `stagely serve` process. BENCHMARKS.md says what each figure means.
#
#   scripts/bench.sh                      # --quick: small counts, under a minute
#   scripts/bench.sh --full               # the issue's counts (10,000 agents …), ~15 min on 2 cores
#   scripts/bench.sh --full --only storm  # one group: appliance agent idle dispatch logs slow storm overhead sqlite abuse signin history webhooks runtime replicas replicas_fleet
#
# Other arguments go to `stagely-loadgen bench` (--runs N, --storm-handshakes N, --work-dir DIR).
# STAGELY_BENCH_DIST=1 runs packaging/build.sh first, so the shipped agent's size is measured.
# STAGELY_BENCH_APPLIANCE=dist/stagely measures the shipped (static musl) appliance instead of
# the glibc release build.
# STAGELY_BENCH_AGENT=dist/stagely-agent-linux-x86_64 measures the shipped (static musl) agent.
# The replicas group (issue 17) needs PostgreSQL: STAGELY_BENCH_DATABASE_URL names a server to
# create its databases on; unset, the test suite's throwaway one (scripts/pg-test-server.sh, no
# fsync) is started when Debian's postgresql package is installed.
# Results: printed as a table, and as JSON in target/bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(--quick)
fi

cargo build --release --workspace --bins
if [ "${STAGELY_BENCH_DIST:-0}" = 1 ]; then
  packaging/build.sh
fi

if [ -z "${STAGELY_BENCH_DATABASE_URL:-}" ] && url=$(scripts/pg-test-server.sh start 2>/dev/null); then
  export STAGELY_BENCH_DATABASE_URL=$url
fi

target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target/bench-results"
out="$target/bench-results/$(date -u +%Y%m%dT%H%M%SZ).json"
"$target/release/stagely-loadgen" bench \
  --stagely "${STAGELY_BENCH_APPLIANCE:-$target/release/stagely}" \
  --agent "${STAGELY_BENCH_AGENT:-$target/release/stagely-agent}" \
  --agent-dist dist/stagely-agent-linux-x86_64 \
  --out "$out" "${args[@]}"
echo "results: $out"
