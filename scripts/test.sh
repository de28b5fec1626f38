#!/usr/bin/env bash
# Every test of the project: unit, integration (real server, real WebSocket clients), doc tests,
# the examples' build, and the quick Autobahn conformance run (it installs its Python package
# into .venv-autobahn from PyPI). Each part installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
./scripts/autobahn.sh --quick
