#!/usr/bin/env bash
# The whole test suite: installs and starts what the tests need (Docker engine, Compose v2, the
# local busybox test image, Chromium), then runs every test. README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${STAGELY_SKIP_DEPS:-0}" != 1 ]; then
  if ! scripts/test-deps.sh; then
    if [ "${CI:-}" = "true" ]; then
      echo "test-deps failed: in CI the engine and browser are required" >&2
      exit 1
    fi
    echo "!!! test-deps failed: tests that need Docker or Chromium will SKIP loudly !!!" >&2
  fi
fi

export STAGELY_TEST_ARTIFACTS=${STAGELY_TEST_ARTIFACTS:-$PWD/artifacts}
mkdir -p "$STAGELY_TEST_ARTIFACTS"
cargo build --bins
# Static release binaries into dist/ for the packaging tests (.deb, container image).
if [ "${STAGELY_SKIP_RELEASE_BUILD:-0}" != 1 ]; then
  packaging/build.sh
fi
cargo test --all-targets "$@"
