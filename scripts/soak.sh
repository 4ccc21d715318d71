#!/usr/bin/env bash
# The fault soak (issue 12): the fault suite (`tests/it/faults.rs`) with many runs and long
# blackholes. Real `stagely serve` and `stagely-agent run` processes on the real engine, a TCP
# proxy between them; each run injects one fault (appliance SIGKILL + restart, agent SIGKILL +
# restart, a 5–60 s blackhole, a cut link) at a random point of a deploy, then checks every
# invariant. At the end: runs per fault kind, successes, explained failures, invariant violations
# (0 expected) and the total time.
#
#   scripts/soak.sh            # 200 runs
#   scripts/soak.sh 20         # 20 runs
#   STAGELY_FAULT_SEED=1a2b scripts/soak.sh 20    # repeat a seed (printed at the start)
#
# Also read: STAGELY_FAULT_BLACKHOLE_MIN / _MAX (seconds, default 5 / 60), STAGELY_FAULT_WINDOW_MS,
# STAGELY_FAULT_KINDS (docs/testing.md). Needs the engine: scripts/test-deps.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-200}
case "$runs" in
  '' | *[!0-9]*) echo "usage: scripts/soak.sh [RUNS]" >&2; exit 2 ;;
esac

export STAGELY_FAULT_RUNS=$runs
export STAGELY_FAULT_BLACKHOLE_MIN=${STAGELY_FAULT_BLACKHOLE_MIN:-5}
export STAGELY_FAULT_BLACKHOLE_MAX=${STAGELY_FAULT_BLACKHOLE_MAX:-60}
export STAGELY_TEST_ARTIFACTS=${STAGELY_TEST_ARTIFACTS:-$PWD/artifacts}
mkdir -p "$STAGELY_TEST_ARTIFACTS"
log="$STAGELY_TEST_ARTIFACTS/soak-$(date +%Y%m%d-%H%M%S).log"

if ! docker info >/dev/null 2>&1; then
  scripts/test-deps.sh
fi
# Built before the clock starts: the soak's time is the runs'.
cargo build --workspace --bins
cargo test --test it --no-run
# The build the test itself asks for (tests/it/bins.rs), so it finds nothing left to do.
cargo build --quiet -p stagely-agent --bin stagely-agent

start=$(date +%s)
status=0
# One test, its output kept whole (every run's line, every violation) in the log.
cargo test --test it faults:: -- --nocapture --test-threads 1 2>&1 | tee "$log" || status=$?
end=$(date +%s)

echo
echo "=== soak: $runs runs, blackholes ${STAGELY_FAULT_BLACKHOLE_MIN}-${STAGELY_FAULT_BLACKHOLE_MAX} s ==="
grep -E '^fault suite: ' "$log" | head -1 || true
# The summary the test prints: per kind, totals, violations.
# (printed once; a failing test repeats it in its panic message)
awk '/^fault suite summary/ { p = 1 } p { print } p && /invariant violations:/ { exit }' "$log"
echo "total time: $((end - start)) s (log: $log; process logs: $STAGELY_TEST_ARTIFACTS/faults/)"
if [ "$status" != 0 ]; then
  echo "soak FAILED (exit $status): see the VIOLATION lines above" >&2
fi
exit "$status"
