#!/usr/bin/env bash
# The whole test suite: installs and starts what the tests need (Docker engine, Compose v2, the
# local busybox test image, Chromium), builds the release binaries, then runs every test of every
# workspace crate. README's second command.
#
#   scripts/test.sh            # everything (what CI runs)
#   scripts/test.sh --quick    # the edit-test loop: unit tests and in-process integration tests;
#                              # no installer, no engine, no browser, no release build
#   scripts/test.sh --quick --postgres   # the quick tier's integration tests on PostgreSQL
#
# The full run then runs the integration suite (`--test it`) a second time with every appliance
# on PostgreSQL (STAGELY_TEST_STORE=postgres, tests/it/common/store.rs); the quick tier stays on
# SQLite unless given --postgres.
#
# Other arguments go to `cargo test` (a test name filter, `-- --nocapture` …). docs/testing.md
# says which tier covers what.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi
quick_postgres=0
if [ "$quick" = 1 ] && [ "${1:-}" = "--postgres" ]; then
  quick_postgres=1
  shift
fi

export STAGELY_TEST_ARTIFACTS=${STAGELY_TEST_ARTIFACTS:-$PWD/artifacts}
mkdir -p "$STAGELY_TEST_ARTIFACTS"

# A throwaway PostgreSQL for the tests of the PostgreSQL store (scripts/pg-test-server.sh; the
# server binaries come from test-deps). Without it those tests skip loudly, and fail in CI.
start_postgres() {
  if [ -z "${STAGELY_TEST_DATABASE_URL:-}" ]; then
    if url=$(scripts/pg-test-server.sh start); then
      export STAGELY_TEST_DATABASE_URL=$url
    else
      echo "!!! PostgreSQL did not start: the PostgreSQL store's tests will SKIP (fail in CI) !!!" >&2
    fi
  fi
}

if [ "$quick" = 1 ]; then
  start_postgres
  # The modules that need a Docker engine, a browser or dist/ (docs/testing.md). Everything else
  # runs: unit tests of every crate, and the integration tests against in-process appliances,
  # real SQLite files and real WebSockets.
  cargo build --workspace --bins
  skips=(--skip agent_engine:: --skip e2e_engine:: --skip web_browser:: --skip packaging::
    --skip operations:: --skip bench_quick:: --skip agent_git:: --skip agent_override:: --skip agent_run:: --skip agent_policy:: --skip compose_names::
    --skip faults:: --skip log_resend:: --skip hooks_engine:: --skip cancel_engine:: --skip releases_engine:: --skip agent_release:: --skip container_logs_engine:: --skip actions_engine:: --skip replicas_engine::)
  if [ "$quick_postgres" = 1 ]; then
    echo "=== the quick tier's integration tests with every appliance on PostgreSQL ===" >&2
    STAGELY_TEST_STORE=postgres cargo test --workspace --test it "$@" -- "${skips[@]}"
  else
    cargo test --workspace --all-targets "$@" -- "${skips[@]}"
  fi
  exit 0
fi

if [ "${STAGELY_SKIP_DEPS:-0}" != 1 ]; then
  if ! scripts/test-deps.sh; then
    if [ "${CI:-}" = "true" ]; then
      echo "test-deps failed: in CI the engine and browser are required" >&2
      exit 1
    fi
    echo "!!! test-deps failed: tests that need Docker or Chromium will SKIP loudly !!!" >&2
  fi
fi

start_postgres
cargo build --workspace --bins
# Static release binaries into dist/ for the packaging tests (.deb, container image).
if [ "${STAGELY_SKIP_RELEASE_BUILD:-0}" != 1 ]; then
  packaging/build.sh
fi
cargo test --workspace --all-targets "$@"
# The same integration suite again, every appliance on a PostgreSQL database of its own (issue
# 17: one store interface, the same behaviour on both). Tests only SQLite can run say so and stay
# on SQLite (tests/it/common/store.rs, sqlite_only).
echo "=== the integration suite again, with every appliance on PostgreSQL (STAGELY_TEST_STORE=postgres) ===" >&2
STAGELY_TEST_STORE=postgres cargo test --workspace --test it "$@"
