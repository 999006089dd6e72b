#!/usr/bin/env bash
# The everyday lane: the static checks, then pytest without browsers, PostgreSQL or slow tests
# (real worker processes, several seconds each). `make test` runs everything.
# Extra arguments go to pytest, e.g. `scripts/test-fast.sh tests/test_checkout.py -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/lint.sh
echo "== pytest (fast lane: not browser, not slow, not postgres)"
# On every core when pytest-xdist is installed: each test process has its own Redis socket,
# SQLite files (or PostgreSQL database, with SMI_TEST_DATABASE_URL) and kernel-chosen ports.
parallel=()
if .venv/bin/python -c "import xdist" 2>/dev/null; then
  parallel=(-n auto)
fi
.venv/bin/pytest "${parallel[@]}" -m "not browser and not slow and not postgres" "$@"
