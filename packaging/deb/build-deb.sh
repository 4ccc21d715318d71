#!/usr/bin/env bash
# Builds dist/stagely_<version>_amd64.deb from the binaries in dist/ (run packaging/build.sh first).
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -x dist/stagely ] && [ -x dist/stagely-agent-linux-x86_64 ] || { echo "run packaging/build.sh first" >&2; exit 1; }

ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
install -D -m 0755 dist/stagely "$ROOT/usr/bin/stagely"
for agent in dist/stagely-agent-linux-*; do
  install -D -m 0755 "$agent" "$ROOT/usr/lib/stagely/agents/$(basename "$agent")"
done
install -D -m 0640 packaging/deb/stagely.toml "$ROOT/etc/stagely/stagely.toml"
install -D -m 0644 packaging/systemd/stagely.service "$ROOT/lib/systemd/system/stagely.service"
install -D -m 0644 packaging/systemd/stagely-agent.service "$ROOT/usr/share/stagely/stagely-agent.service"
install -D -m 0644 stagely.toml.example "$ROOT/usr/share/doc/stagely/stagely.toml.example"
install -D -m 0644 README.md "$ROOT/usr/share/doc/stagely/README.md"
install -D -m 0644 docs/operations.md "$ROOT/usr/share/doc/stagely/operations.md"

mkdir -p "$ROOT/DEBIAN"
SIZE=$(du -sk "$ROOT" | cut -f1)
cat >"$ROOT/DEBIAN/control" <<CONTROL
Package: stagely
Version: $VERSION
Section: admin
Priority: optional
Architecture: amd64
Maintainer: Stagely <team@stagely.invalid>
Installed-Size: $SIZE
Depends: adduser
Description: deploy docker-compose projects onto your own servers
 Stagely is a self-hosted deploy appliance: one binary with an embedded
 SQLite store, age-encrypted secrets and a web UI. Target servers run the
 Stagely agent, which connects outbound, so they open no inbound port.
CONTROL
echo "/etc/stagely/stagely.toml" >"$ROOT/DEBIAN/conffiles"
install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$ROOT/DEBIAN/"

OUT="dist/stagely_${VERSION}_amd64.deb"
fakeroot dpkg-deb --build -Zxz "$ROOT" "$OUT" >/dev/null
echo "$OUT"
