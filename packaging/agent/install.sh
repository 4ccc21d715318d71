#!/bin/sh
# Stagely agent installer, served by the appliance at <public_url>/agent/install.sh.
#
#   curl -fsSL @PUBLIC_URL@/agent/install.sh | sudo sh
#
# It asks for the agent token (typed at the terminal, so it never appears in a command line or
# shell history), downloads the agent from this same appliance, checks its sha256 and prints it
# (compare it with the one on the appliance's Agents page), verifies the appliance's signature
# over it against the key fingerprint the token carries (with openssl 3; a mismatch aborts),
# writes the token to a 0600 file, pins the key for the agent, installs a systemd unit and
# starts it. Options:
#   --token-file FILE   read the token from FILE instead of asking (automation)
#   --server URL        appliance URL (default: @PUBLIC_URL@)
#   --root DIR          install under DIR instead of / (no service is started)
#   --no-start          install only
#   --insecure-transport  accept an http:// URL to a host that is not loopback (or set
#                       STAGELY_INSECURE_TRANSPORT=1): the binary, its checksum and later the token
#                       and every secret then cross the network unencrypted. Written into agent.toml.
set -eu

SERVER="@PUBLIC_URL@"
ROOT=""
TOKEN_FILE=""
START=1
INSECURE=${STAGELY_INSECURE_TRANSPORT:-0}

die() { printf 'stagely-agent install: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --token-file) [ $# -ge 2 ] || die "--token-file needs a file"; TOKEN_FILE=$2; shift 2 ;;
    --server) [ $# -ge 2 ] || die "--server needs a URL"; SERVER=$2; shift 2 ;;
    --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; START=0; shift 2 ;;
    --no-start) START=0; shift ;;
    --insecure-transport) INSECURE=1; shift ;;
    --token) die "--token is not accepted: a token on the command line is visible to every user of this machine. Use --token-file FILE, or run without it to be asked." ;;
    *) die "unknown option: $1" ;;
  esac
done
SERVER=${SERVER%/}

# --- the transport: refused before anything is fetched ---
# http:// only to this machine (localhost, 127.0.0.0/8, [::1]); anything else must be https://,
# else anyone on the path could swap the binary and its checksum, and later read the token.
case "$INSECURE" in 1|true|yes|on) INSECURE=1 ;; *) INSECURE=0 ;; esac
case "$SERVER" in
  https://*) ;;
  http://*)
    HOSTPORT=${SERVER#http://}; HOSTPORT=${HOSTPORT%%/*}
    case "$HOSTPORT" in
      \[*\]*) HOST=${HOSTPORT#\[}; HOST=${HOST%%\]*} ;;
      *) HOST=${HOSTPORT%%:*} ;;
    esac
    HOST=$(printf '%s' "$HOST" | tr 'A-Z' 'a-z'); HOST=${HOST%.}
    case "$HOST" in
      localhost|*.localhost|::1) LOOPBACK=1 ;;
      127.*) printf '%s' "$HOST" | grep -Eq '^127\.[0-9]+\.[0-9]+\.[0-9]+$' && LOOPBACK=1 || LOOPBACK=0 ;;
      *) LOOPBACK=0 ;;
    esac
    if [ "$LOOPBACK" = 0 ]; then
      [ "$INSECURE" = 1 ] || die "refusing $SERVER: http:// to $HOST is not encrypted, so anyone on the path could replace the agent binary and its checksum, and read the agent token and every secret later. Use https://, or pass --insecure-transport (STAGELY_INSECURE_TRANSPORT=1) to accept that."
      printf 'stagely-agent install: WARNING: --insecure-transport: downloading from %s without encryption\n' "$SERVER" >&2
    fi
    ;;
  *) die "the server URL must start with https:// (or http:// to this machine): $SERVER" ;;
esac

case "$(uname -s)" in Linux) ;; *) die "only Linux is supported" ;; esac
case "$(uname -m)" in
  x86_64|amd64) TARGET=linux-x86_64 ;;
  aarch64|arm64) TARGET=linux-aarch64 ;;
  *) die "no agent build for $(uname -m)" ;;
esac
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (pipe to 'sudo sh'), or pass --root DIR"
fi

fetch() { # fetch URL FILE
  if command -v curl >/dev/null 2>&1; then curl -fsSL -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -O "$2" "$1"
  else die "curl or wget is required"; fi
}

# --- the token: from a file, or typed at the terminal (stdin is this script when piped) ---
if [ -n "$TOKEN_FILE" ]; then
  [ -r "$TOKEN_FILE" ] || die "cannot read $TOKEN_FILE"
  TOKEN=$(head -n 1 "$TOKEN_FILE")
else
  [ -r /dev/tty ] || die "no terminal to ask for the token: use --token-file FILE"
  printf 'Agent token (shown once when the agent was created; input hidden): ' >/dev/tty
  stty -echo </dev/tty 2>/dev/null || true
  IFS= read -r TOKEN </dev/tty || true
  stty echo </dev/tty 2>/dev/null || true
  printf '\n' >/dev/tty
fi
case "$TOKEN" in stga_*) ;; *) die "that is not an agent token (they start with stga_)" ;; esac
# Tokens made since signed commands end with ".<fingerprint of the appliance's signing key>".
case "$TOKEN" in
  *.*) FINGERPRINT=${TOKEN#*.}; FINGERPRINT=${FINGERPRINT#ed25519:} ;;
  *) FINGERPRINT="" ;;
esac

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

say "Downloading the agent ($TARGET) from $SERVER"
fetch "$SERVER/agent/download/$TARGET" "$TMP/stagely-agent"
fetch "$SERVER/agent/download/$TARGET/sha256" "$TMP/sha256"
WANT=$(cut -d ' ' -f 1 "$TMP/sha256")
if command -v sha256sum >/dev/null 2>&1; then GOT=$(sha256sum "$TMP/stagely-agent" | cut -d ' ' -f 1)
else GOT=$(openssl dgst -sha256 -r "$TMP/stagely-agent" | cut -d ' ' -f 1); fi
[ -n "$WANT" ] && [ "$WANT" = "$GOT" ] || die "checksum mismatch (expected $WANT, got $GOT): not installing"
say "sha256 of the downloaded agent: $GOT"
say "  (the appliance's Agents page shows the same; compare them out of band if in doubt)"

# --- the signature: the checksum above came over the same channel as the binary; the signature
# is checked against the key the token names, which no one on the path can change ---
has_openssl3() {
  command -v openssl >/dev/null 2>&1 || return 1
  case "$(openssl version 2>/dev/null)" in OpenSSL\ [3-9]*) return 0 ;; *) return 1 ;; esac
}
if [ -z "$FINGERPRINT" ]; then
  printf 'stagely-agent install: WARNING: the token names no appliance key (it was made before signed downloads), so the download could not be verified; compare the sha256 above with the Agents page. The agent will trust the first key it sees.\n' >&2
elif ! has_openssl3; then
  printf 'stagely-agent install: WARNING: openssl 3 is not installed, so the signature could not be verified; compare the sha256 above with the Agents page. The agent itself still refuses any command not signed by ed25519:%s.\n' "$FINGERPRINT" >&2
else
  fetch "$SERVER/agent/signing-key" "$TMP/signing-key.pem"
  fetch "$SERVER/agent/download/$TARGET/sig" "$TMP/sig.b64"
  KEY_FP=$(openssl pkey -pubin -in "$TMP/signing-key.pem" -outform DER 2>/dev/null | tail -c 32 \
    | openssl dgst -sha256 -binary | openssl base64 -A | tr '+/' '-_' | tr -d '=')
  [ "$KEY_FP" = "$FINGERPRINT" ] || die "the appliance's signing key (ed25519:$KEY_FP) is not the one the token names (ed25519:$FINGERPRINT): someone may be in the path, or the token belongs to another appliance. Not installing."
  openssl base64 -d -A -in "$TMP/sig.b64" -out "$TMP/sig.bin" 2>/dev/null || die "the signature served is not base64: not installing"
  printf 'stagely agent download v1\n%s\n%s\n' "$TARGET" "$GOT" >"$TMP/statement"
  openssl pkeyutl -verify -pubin -inkey "$TMP/signing-key.pem" -rawin -in "$TMP/statement" -sigfile "$TMP/sig.bin" >/dev/null 2>&1 \
    || die "signature check failed: this binary (sha256 $GOT) is not the one the appliance signed with ed25519:$FINGERPRINT. Not installing."
  say "Signature verified: signed by ed25519:$FINGERPRINT, the appliance key the token names"
fi

BIN_DIR="$ROOT/usr/local/bin"
CONF_DIR="$ROOT/etc/stagely-agent"
WORK_DIR="$ROOT/var/lib/stagely-agent"
UNIT_DIR="$ROOT/etc/systemd/system"
mkdir -p "$BIN_DIR" "$CONF_DIR" "$UNIT_DIR"
mkdir -p "$WORK_DIR" && chmod 0700 "$WORK_DIR"
install -m 0755 "$TMP/stagely-agent" "$BIN_DIR/stagely-agent"

umask 077
printf '%s\n' "$TOKEN" >"$CONF_DIR/token"
chmod 0600 "$CONF_DIR/token"
if [ -n "$FINGERPRINT" ]; then
  # The key this agent obeys: the token's (replacing a pin left by an earlier install).
  printf '# The Stagely appliance signing key this agent obeys (written by install.sh).\ned25519:%s\n' "$FINGERPRINT" >"$WORK_DIR/appliance-key.pin"
  chmod 0600 "$WORK_DIR/appliance-key.pin"
fi
umask 022
cat >"$CONF_DIR/agent.toml" <<CONF
# Stagely agent configuration (written by install.sh). The token lives in token_file only.
server = "$SERVER"
token_file = "/etc/stagely-agent/token"
work_dir = "/var/lib/stagely-agent"

# The compose policy refuses privileged services, extra capabilities, devices, host namespaces,
# binds and files outside the checkout. Allow one thing for one project here, e.g.:
# [policy.project."traefik/production"]
# allow_bind = ["/var/run/docker.sock"]
# (docs/agent.md, "Compose policy"; only this file can loosen it, never the appliance)
CONF
if [ "$INSECURE" = 1 ]; then
  printf '# Accepted at install (--insecure-transport): the server is http:// and not on this machine.\ninsecure_transport = true\n' >>"$CONF_DIR/agent.toml"
fi

cat >"$UNIT_DIR/stagely-agent.service" <<'UNIT'
@AGENT_UNIT@
UNIT

say "Installed: $BIN_DIR/stagely-agent, config $CONF_DIR/agent.toml, token $CONF_DIR/token (0600)"
if [ "$START" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  systemctl daemon-reload
  systemctl enable --now stagely-agent.service
  say "Started: systemctl status stagely-agent"
else
  say "Start it with:"
  say "  $BIN_DIR/stagely-agent run --config $CONF_DIR/agent.toml"
  [ -n "$ROOT" ] && say "(installed under $ROOT: the config's paths are for /; pass --token-file $CONF_DIR/token --work-dir $WORK_DIR to run it from here)"
fi
