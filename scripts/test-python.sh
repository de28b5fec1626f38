#!/usr/bin/env bash
# The Python package's checks and tests (clients/python): creates clients/python/.venv if
# missing (installing python3-venv via apt on a fresh Debian machine when `python3 -m venv`
# needs it), installs the package with its pinned test dependencies, builds the server binary
# if missing, then runs `ruff check`, `mypy --strict` and pytest. Every suite starts the real
# server (target/debug/switchboard, or $SWITCHBOARD_BIN) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
pkg="$repo/clients/python"
venv="$pkg/.venv"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

if ! command -v python3 >/dev/null; then apt_install python3; fi
if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 ships without ensurepip: `python3 -m venv` then fails until
  # python3-venv (for this Python version) is installed.
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    version=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${version}-venv" || apt_install python3-venv
    python3 -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$pkg[test]"

if [ -z "${SWITCHBOARD_BIN:-}" ] && [ ! -x "$repo/target/debug/switchboard" ]; then
  cargo build -p switchboard-server
fi

cd "$pkg"
"$venv/bin/ruff" check src tests examples bench
"$venv/bin/ruff" format --check src tests examples bench
"$venv/bin/mypy" --strict src tests examples bench
# Every await in the tests is bounded; the outer timeout only guards against a hung process.
timeout 600 "$venv/bin/pytest" -q
