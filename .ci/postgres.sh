#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the tests.
#
#   eval "$(.ci/postgres.sh start)"   # prints export lines: MASE_LITE_TEST_POSTGRES (the URL), MASE_LITE_PG_DIR
#   .ci/postgres.sh stop [DIR]        # stops the server of DIR (default $MASE_LITE_PG_DIR) and deletes DIR
#   .ci/postgres.sh pause DIR         # stops the server of DIR and keeps its data (an outage, for the tests)
#   .ci/postgres.sh resume DIR        # starts the paused server of DIR again, on the same port
#
# start installs Debian's postgresql package if initdb/pg_ctl are missing (needs root and apt), runs
# initdb in a new temporary folder and starts the server on 127.0.0.1 at a free port, with a
# database "optuna" and trust authentication (loopback only). initdb and pg_ctl refuse to run as
# root, so as root they run as the postgres user. Progress goes to stderr, the export lines to stdout.
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  return 1
}

as_pg() {  # run a server command as the postgres user when we are root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  local bin
  if ! bin="$(find_bin)"; then
    echo "postgres.sh: initdb/pg_ctl not found; installing Debian's postgresql" >&2
    if [ "$(id -u)" -ne 0 ]; then echo "postgres.sh: not root, cannot apt-get install postgresql" >&2; exit 1; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
    bin="$(find_bin)" || { echo "postgres.sh: postgresql installed but initdb/pg_ctl not found" >&2; exit 1; }
  fi
  local dir port
  dir="$(mktemp -d /tmp/mase-lite-pg.XXXXXX)"
  chmod 755 "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  echo "$bin" >"$dir/bin"
  echo "$port" >"$dir/port"
  pg_start "$dir" || exit 1
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna >&2 \
    || { as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true; rm -rf "$dir"; exit 1; }
  echo "postgres.sh: server on 127.0.0.1:$port (folder $dir)" >&2
  echo "export MASE_LITE_TEST_POSTGRES=postgresql+psycopg://postgres@127.0.0.1:$port/optuna"
  echo "export MASE_LITE_PG_DIR=$dir"
}

pg_start() {  # start the server of folder $1 (initialised by start) on its port
  local dir="$1" bin port
  bin="$(cat "$dir/bin")"
  port="$(cat "$dir/port")"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >&2 \
    || { cat "$dir/server.log" >&2; return 1; }
}

pause() {
  local dir="${1:-}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then echo "postgres.sh pause: no server folder given" >&2; exit 1; fi
  as_pg "$(cat "$dir/bin")/pg_ctl" -D "$dir/data" -m fast -w stop >&2
}

resume() {
  local dir="${1:-}"
  if [ -z "$dir" ] || [ ! -f "$dir/port" ]; then echo "postgres.sh resume: no server folder given" >&2; exit 1; fi
  pg_start "$dir"
}

stop() {
  local dir="${1:-${MASE_LITE_PG_DIR:-}}"
  if [ -z "$dir" ] || [ ! -d "$dir/data" ]; then echo "postgres.sh stop: no server folder given" >&2; exit 1; fi
  local bin
  bin="$(cat "$dir/bin" 2>/dev/null || find_bin)"
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  pause) shift; pause "$@" ;;
  resume) shift; resume "$@" ;;
  *) echo "usage: $0 start | stop [DIR] | pause DIR | resume DIR" >&2; exit 2 ;;
esac
