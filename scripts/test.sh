#!/usr/bin/env bash
# Every test of the project: unit, integration (real server, real WebSocket clients), doc tests,
# the examples' build, the quick Autobahn conformance run (it installs its Python package
# into .venv-autobahn from PyPI), the TypeScript client's tests and the Python package's.
# Each part installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# The cluster tests start their own redis-server processes (redis-cli comes with it); the
# rediss:// test makes its certificates with the openssl CLI; the example backend
# (examples/backend/receiver.mjs) runs on Node; tests/grafana.rs checks the Prometheus rules
# with promtool (Debian package prometheus).
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v node >/dev/null || missing+=(nodejs)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
cargo test --workspace --all-targets
cargo test --workspace --doc
./scripts/autobahn.sh --quick
./scripts/test-client.sh
./scripts/test-python.sh
