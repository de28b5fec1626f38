#!/usr/bin/env bash
# The TypeScript client's tests (clients/typescript): unit tests (node --test) and end-to-end
# tests in real headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and in
# Node, against the real server binary. Installs what it needs on a fresh Debian machine
# (chromium and Node via apt, npm packages via `npm ci`), and fails if the committed browser
# bundle (crates/switchboard-server/assets/switchboard.js) differs from a fresh build.
# Screenshots and server logs land in clients/typescript/test-output/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm; fi

cd "$repo/clients/typescript"
npm ci --no-audit --no-fund
# The committed bundle must be exactly what the sources build to (so the Rust build never
# needs Node, and the two never drift).
npm run --silent check-bundle
npm run --silent build

(cd "$repo" && cargo build --bin switchboard)

rm -rf test-output
npm run --silent test:unit
npm run --silent test:e2e
