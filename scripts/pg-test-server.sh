#!/usr/bin/env bash
# A throwaway PostgreSQL for the test suite (issue 17): initdb into a directory of its own, a free
# port on loopback, trust authentication, no fsync. Debian's packages, no Docker image.
#
#   scripts/pg-test-server.sh start   # prints the admin URL (postgres://stagely@127.0.0.1:PORT/postgres)
#   scripts/pg-test-server.sh stop
#
# Idempotent: `start` on a running server prints its URL again. The tests make a database of
# their own per appliance on it (tests/it/common/store.rs).
set -euo pipefail

DIR=${STAGELY_TEST_PG_DIR:-/tmp/stagely-test-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bin" ] || { echo "pg-test-server: no PostgreSQL server binaries (apt-get install postgresql)" >&2; exit 1; }

# initdb and postgres refuse to run as root: run them as the packages' postgres user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case ${1:-start} in
  start)
    if [ -f "$DIR/url" ] && as_owner "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
      cat "$DIR/url"
      exit 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR"
    as_owner "$bin/initdb" -D "$DIR/data" -U stagely --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
      >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
      -o "-p $port -k $DIR -c listen_addresses=127.0.0.1 -c max_connections=1000 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null || { tail -30 "$DIR/server.log" >&2; exit 1; }
    echo "postgres://stagely@127.0.0.1:$port/postgres" >"$DIR/url"
    cat "$DIR/url"
    ;;
  stop)
    [ -d "$DIR/data" ] && as_owner "$bin/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
