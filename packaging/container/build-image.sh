#!/usr/bin/env bash
# Builds the appliance image (default tag stagely:<version>) from dist/ (packaging/build.sh first),
# in a small staged context so the engine is not sent the whole target/ folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
TAG=${1:-stagely:$VERSION}
[ -x dist/stagely ] || { echo "run packaging/build.sh first" >&2; exit 1; }
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
cp dist/stagely "$CTX/stagely"
mkdir -p "$CTX/agents" "$CTX/etc/ssl/certs"
cp dist/stagely-agent-linux-* "$CTX/agents/"
# CA roots for outbound TLS (GitHub sign-in); passwd/group name the unprivileged user.
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$CTX/etc/ssl/certs/"
printf 'root:x:0:0:root:/:/sbin/nologin\nstagely:x:10001:10001:stagely:/data:/sbin/nologin\n' >"$CTX/etc/passwd"
printf 'root:x:0:\nstagely:x:10001:\n' >"$CTX/etc/group"
cp -r packaging/container/rootfs "$CTX/rootfs"
cp packaging/Dockerfile "$CTX/Dockerfile"
docker build -q -t "$TAG" "$CTX" >/dev/null
echo "$TAG"
