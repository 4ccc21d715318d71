#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, banned crates, sources — and RustSec advisories when
# the advisory database can be fetched (it lives on GitHub, which some machines cannot reach).
# Installs cargo-deny from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[deny] %s\n' "$*" >&2; }

VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$VERSION"; then
  log "installing cargo-deny $VERSION from crates.io"
  # A checker run once per CI: built quickly rather than optimised (no LTO, parallel codegen,
  # light optimisation): on a fresh machine its build is part of every CI run.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo install --locked --quiet cargo-deny --version "$VERSION"
fi

checks=(licenses bans sources)
if timeout 60 cargo deny fetch db >/dev/null 2>&1; then
  checks+=(advisories)
else
  log "WARNING: the RustSec advisory database cannot be fetched here: advisories NOT checked"
fi
log "cargo deny check ${checks[*]}"
cargo deny --workspace check "${checks[@]}"
