#!/usr/bin/env bash
# The whole test suite: lint, types, pytest on SQLite, then the schema tests on a throwaway PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

echo "== ruff"
"$bin/ruff" check .
"$bin/ruff" format --check .
echo "== mypy"
"$bin/mypy" storefront worker
echo "== pytest (SQLite)"
"$bin/pytest" "$@"

echo "== pytest (PostgreSQL: schema and money path)"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
if [ -z "$pg_bin" ]; then
  echo "PostgreSQL is not installed (scripts/setup.sh test installs it)" >&2
  exit 1
fi
pg_dir="$(mktemp -d /tmp/smi-pg.XXXXXX)"
pg_port="$("$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
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
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w \
  -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U smi smi_test
SMI_TEST_DATABASE_URL="postgresql://smi@127.0.0.1:$pg_port/smi_test" \
  "$bin/pytest" -p no:cacheprovider tests/test_schema.py tests/test_foundation.py \
  tests/test_checkout.py tests/test_webhooks.py tests/test_orders.py \
  tests/test_admin_jobs.py tests/test_admin_dashboard.py tests/test_maintenance.py
