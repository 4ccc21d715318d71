#!/usr/bin/env bash
# Release builds of the appliance and the agent, static (musl) so they run on any x86_64 Linux whatever its
# glibc, stripped, into dist/. Installs what the build needs when missing (musl-tools, the rustup
# target). An aarch64 agent is built too when an aarch64 C cross compiler can be had; otherwise
# that is said, and only x86_64 is served.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[build] %s\n' "$*" >&2; }

TARGET=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null 2>&1; then
  log "installing musl-tools"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi
rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"

# The two shipped packages only: the appliance (root package) and the agent. The benchmark
# tool (crates/loadgen) is never built here.
log "cargo build --release --target $TARGET -p stagely -p stagely-agent"
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" \
  -p stagely --bin stagely -p stagely-agent --bin stagely-agent

mkdir -p dist
cp "target/$TARGET/release/stagely" dist/stagely
cp "target/$TARGET/release/stagely-agent" dist/stagely-agent-linux-x86_64

# The aarch64 agent: Debian's aarch64 cross gcc compiles ring's C; rust-lld links against the
# musl that rustup ships for the target. Best effort: x86_64 is what the tests need.
if [ "${STAGELY_BUILD_AARCH64:-1}" = 1 ]; then
  A=aarch64-unknown-linux-musl
  command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || {
    log "installing gcc-aarch64-linux-gnu"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu >/dev/null 2>&1 || true
  }
  rustup target list --installed | grep -qx "$A" || rustup target add "$A" >/dev/null 2>&1 || true
  if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && rustup target list --installed | grep -qx "$A" &&
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc \
      CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
      cargo build --release --locked --target "$A" -p stagely-agent --bin stagely-agent; then
    cp "target/$A/release/stagely-agent" dist/stagely-agent-linux-aarch64
  else
    log "WARNING: no aarch64 agent (cross toolchain unavailable or build failed); only x86_64 is served"
    rm -f dist/stagely-agent-linux-aarch64
  fi
fi

for f in dist/stagely dist/stagely-agent-linux-*; do
  log "$(basename "$f"): $(stat -c %s "$f") bytes, $(file -b "$f" 2>/dev/null | cut -d, -f1-2 || true)"
done
