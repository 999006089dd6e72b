#!/usr/bin/env bash
# The whole test suite: lint, types, import contracts, pytest on SQLite, then pytest again on a
# throwaway PostgreSQL. `scripts/test-fast.sh` is the everyday lane.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

bash scripts/lint.sh
echo "== pytest (SQLite)"
"$bin/pytest" "$@"

echo "== pytest (PostgreSQL)"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$pg_bin" ]; then
  echo "PostgreSQL is not installed (scripts/setup.sh test installs it)" >&2
  exit 1
fi
pg_dir="$(mktemp -d /tmp/smi-pg.XXXXXX)"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  chown postgres "$pg_dir"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$pg_dir"
}
trap cleanup EXIT
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U smi --auth=trust >/dev/null
# A unix socket in its own folder and no TCP port at all: nothing to pick, nothing to race for.
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
  -o "-k $pg_dir -c listen_addresses='' -c fsync=off" start >/dev/null
"${as_pg[@]}" "$pg_bin/createdb" -h "$pg_dir" -U smi smi_test
# Every test again, workers, gunicorn and the chaos run included: they get the URL from the app.
SMI_TEST_DATABASE_URL="postgresql://smi@/smi_test?host=$pg_dir" \
  "$bin/pytest" -p no:cacheprovider "$@"
