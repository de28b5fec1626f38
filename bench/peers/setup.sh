#!/usr/bin/env bash
# Installs what the peers need: the `ws` package and Bun (the npm package `@oven/bun-linux-x64`,
# the bun binary; both npm ci from the committed lock files) and a Python venv with FastAPI +
# uvicorn (pip, pinned versions from PyPI). Idempotent.
# Needs: node + npm (Node 20 tested), python3 with venv.
set -euo pipefail
cd "$(dirname "$0")"
if [[ ! -d ws/node_modules/ws ]]; then
    (cd ws && npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ ! -x bun/node_modules/@oven/bun-linux-x64/bin/bun ]]; then
    (cd bun && npm ci --no-audit --no-fund --loglevel=error)
fi
if [[ ! -x fastapi/.venv/bin/uvicorn ]]; then
    python3 -m venv fastapi/.venv
    fastapi/.venv/bin/pip install --quiet --disable-pip-version-check -r fastapi/requirements.txt
fi
echo "peers ready: node $(node --version), ws $(node -p "require('./ws/node_modules/ws/package.json').version"), bun $(bun/node_modules/@oven/bun-linux-x64/bin/bun --version), $(fastapi/.venv/bin/python --version), uvicorn $(fastapi/.venv/bin/python -c 'import uvicorn; print(uvicorn.__version__)'), fastapi $(fastapi/.venv/bin/python -c 'import fastapi; print(fastapi.__version__)')"
