#!/usr/bin/env bash
# The static checks both test lanes start with: ruff, ruff format, mypy, and the import contracts.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin

echo "== ruff"
"$bin/ruff" check .
"$bin/ruff" format --check .
echo "== mypy"
"$bin/mypy" storefront worker
echo "== import contracts"
if grep -q '^\[tool\.importlinter\]' pyproject.toml; then
  "$bin/lint-imports" --no-logo
else
  echo "skipped: pyproject.toml has no [tool.importlinter] section"
fi
