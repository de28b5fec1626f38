#!/usr/bin/env bash
# Starts one peer in the foreground on 127.0.0.1:PORT (exec: the PID is the server's, so
# `taskset -c 0 bench/peers/start.sh ws 8081 &` pins it and `$!` measures it).
#   start.sh ws PORT        Node + ws          (PING_INTERVAL_MS, default 20000;
#                           PER_MESSAGE_DEFLATE=1: permessage-deflate on, threshold 256 bytes,
#                           no context takeover both ways, zlib level 3, as Switchboard)
#   start.sh bun PORT       Bun.serve, uWebSockets inside (PING_INTERVAL_MS, default 20000)
#   start.sh fastapi PORT   FastAPI + uvicorn  (the seed's manager; uvicorn's ws keepalive
#                           pings at their defaults: WS_PING_INTERVAL / WS_PING_TIMEOUT, 20 s)
# Run setup.sh first.
set -euo pipefail
cd "$(dirname "$0")"
peer=${1:?usage: start.sh ws|bun|fastapi PORT}
port=${2:?usage: start.sh ws|bun|fastapi PORT}
case "$peer" in
    ws)
        PORT=$port exec node ws/server.js
        ;;
    bun)
        PORT=$port exec bun/node_modules/@oven/bun-linux-x64/bin/bun bun/server.ts
        ;;
    fastapi)
        cd fastapi
        echo "listening on 127.0.0.1:$port"
        exec .venv/bin/uvicorn app:app --host 127.0.0.1 --port "$port" \
            --log-level warning --no-access-log --backlog 2048 \
            --ws auto --ws-max-size 65536 \
            --ws-ping-interval "${WS_PING_INTERVAL:-20}" --ws-ping-timeout "${WS_PING_TIMEOUT:-20}"
        ;;
    *)
        echo "unknown peer $peer (ws, bun or fastapi)" >&2
        exit 2
        ;;
esac
