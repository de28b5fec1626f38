#!/usr/bin/env bash
# Every test of the project: unit, integration (real server, real WebSocket clients), doc tests,
# and the examples' build. Installs nothing yet: the Rust toolchain is all it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
