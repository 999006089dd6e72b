#!/usr/bin/env bash
# Install what is missing on a Debian machine: system packages and the project's virtualenv.
# Usage: scripts/setup.sh run|test   (test also installs PostgreSQL, Chromium and nginx for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"

packages=(redis-server)
if [ "$mode" = test ]; then
  packages+=(postgresql chromium nginx)
  # npm installs axe-core for the accessibility audit (package.json); Debian's npm brings node.
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "Installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  # Debian starts these as system services; the shop runs its own on other ports.
  for service in redis-server postgresql nginx; do
    if command -v systemctl >/dev/null 2>&1; then
      "${sudo_cmd[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "Creating the virtualenv in .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.installed-from
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "Installing the project into .venv"
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[dev]'
  cp pyproject.toml "$stamp"
fi
if [ "$mode" = test ] && { [ ! -f node_modules/.package-lock.json ] \
    || [ package-lock.json -nt node_modules/.package-lock.json ]; }; then
  echo "Installing the browser test tools (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi
