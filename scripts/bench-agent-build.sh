#!/usr/bin/env bash
# Clean agent builds (BENCHMARKS.md "Agent build"): BEFORE is a checkout of the one-package
# layout (e.g. `git worktree add --detach /tmp/before 5fc787c`), AFTER one of the workspace.
# Each build gets an empty target dir; CPU seconds (user+sys) are reported beside wall time
# because they hold up on a shared machine. Needs the aarch64 cross gcc and rustup targets that
# packaging/build.sh installs.
#   scripts/bench-agent-build.sh /tmp/before /tmp/after
set -u
BEFORE=${1:?before checkout}
AFTER=${2:?after checkout}
out=${OUT:-target/agent-build.txt}
run() { # label dir target_dir args...
  local label=$1 dir=$2 tdir=$3; shift 3
  rm -rf "$tdir"
  cd "$dir"
  local t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$tmp/time" nice -n 19 env CARGO_TARGET_DIR="$tdir" \
    CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    cargo build --release --locked "$@" > "$tmp/$label.log" 2>&1
  local rc=$?
  local t1=$(date +%s.%N)
  local crates=$(grep -c "Compiling" "$tmp/$label.log")
  echo "$label rc=$rc wall=$(echo "$t1 - $t0" | bc) cpu_user_sys=$(cat "$tmp/time") crates=$crates" >> "$out"
}
tmp=$(mktemp -d)
out=$(realpath -m "$out")
: > "$out"
run before-host "$BEFORE" "$tmp/t1" --bin stagely-agent
run after-host "$AFTER" "$tmp/t2" -p stagely-agent
run before-arm "$BEFORE" "$tmp/t3" --target aarch64-unknown-linux-musl --bin stagely-agent
run after-arm "$AFTER" "$tmp/t4" --target aarch64-unknown-linux-musl -p stagely-agent
rm -rf "$tmp"
cat "$out"
