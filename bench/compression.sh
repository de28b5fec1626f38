#!/usr/bin/env bash
# Issue 17's figures (permessage-deflate), side by side in one run: Switchboard (release build,
# bench/switchboard.env with presence events off, compression at its defaults: on, 256-byte
# threshold) with and without the load generator's `--deflate` offer, against the `ws` peer
# with its perMessageDeflate on (PER_MESSAGE_DEFLATE=1: threshold 256, no context takeover both
# ways, zlib level 3, as Switchboard) and off. Server on CPU 0, load generator on CPU 1, a fresh
# server per case; every case records the load average at its start.
#
#   bench/compression.sh                         the whole set (about 6 minutes)
#   bench/compression.sh --only "bytes fanout"   a subset of bytes, fanout, idle
#   bench/compression.sh --out NAME              bench/results/raw/NAME.jsonl (default compression)
#
# Cases (servers: sb = Switchboard, sb-z = Switchboard with --deflate offered, ws, ws-z = ws with
# PER_MESSAGE_DEFLATE=1 and --deflate offered):
#   bytes   1,000 members, 20 chat messages/s (`--payload-kind chat --payload 1024`: a chat
#           message object of ~1 KiB, its text different in every message) for 5 s: the bytes
#           the members read from their sockets per delivered message; and the same with
#           `--payload-kind padding` (compresses unrealistically well) for reference.
#   fanout  `fanout --sweep` with the chat payload at 1k and 10k members, the same offered
#           rates for every server (20k deliveries/s doubling up to 320k, no bisection, the
#           sweep ends at the first failing step): deliveries per server CPU-second per step.
#   idle    10k and 19k idle connections (`idle`, with `--deflate` for sb-z and ws-z): the
#           server's RSS per connection with the extension negotiated.
# bench/compression.py prints the tables from the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY="bytes fanout idle"
NAME=compression
SERVERS="sb-z sb ws-z ws"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --only) ONLY=$2; shift ;;
        --out) NAME=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        *) echo "usage: bench/compression.sh [--only \"bytes fanout idle\"] [--servers \"sb-z sb ws-z ws\"] [--out NAME]" >&2; exit 2 ;;
    esac
    shift
done
PORT=18500
IP_BASE=100
# shellcheck source=bench/lib.sh
source bench/lib.sh
side_by_side_run "$NAME"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), nproc $(nproc)"
    echo "switchboard: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + uncommitted changes')"
    echo "node: $(node --version), ws $(node -p "require('./bench/peers/ws/node_modules/ws/package.json').version")"
    echo "servers: $SERVERS; cases: $ONLY"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RAW/$NAME-machine.txt"

SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_server() {
    local name=$1 log=$2
    PORT=$((PORT + 1))
    case $name in
        sb|sb-z)
            env "${SB_ENV[@]}" SWITCHBOARD_BIND=127.0.0.1:$PORT taskset -c 0 "$SB" > "$log" 2>&1 & ;;
        ws)
            taskset -c 0 bench/peers/start.sh ws "$PORT" > "$log" 2>&1 & ;;
        ws-z)
            PER_MESSAGE_DEFLATE=1 taskset -c 0 bench/peers/start.sh ws "$PORT" > "$log" 2>&1 & ;;
    esac
    SERVER_PID=$!
    await_listening "$name" "$log"
}

# run_case SERVER SCENARIO TAG -- BENCH OPTIONS: one case on a fresh server; `--deflate` is
# added for sb-z and ws-z; the JSON summary gets the tag, the server's name and the load
# average at its start.
run_case() {
    local server=$1 scenario=$2 tag=$3; shift 4
    local log="$LOGS/$server-$scenario-$tag" load line z=()
    [[ $server == *-z ]] && z=(--deflate)
    start_server "$server" "$log.server.log"
    IP_BASE=$((IP_BASE + 1))
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    say "$server $scenario $tag (pid $SERVER_PID, load $load)"
    if line=$(timeout 400 taskset -c 1 "$BENCH" "$scenario" --addr "127.0.0.1:$PORT" \
        --server-pid "$SERVER_PID" --label "${server%-z}" --ip-base "$IP_BASE" --max-secs 300 \
        "${z[@]}" "$@" 2> "$log.bench.log"); then
        echo "$line" | sed "s/^{/{\"tag\":\"$tag\",\"case\":\"$server\",\"load_avg\":\"$load\",/" >> "$RESULTS"
    else
        say "FAILED: $server $scenario $tag"
        echo "{\"tag\":\"$tag\",\"case\":\"$server\",\"scenario\":\"$scenario\",\"load_avg\":\"$load\",\"failed\":true}" >> "$RESULTS"
    fi
    cleanup
    sleep 1
}

CHAT=(--payload-kind chat --payload 1024)
if [[ " $ONLY " == *" bytes "* ]]; then
    for kind in chat padding; do
        for s in $SERVERS; do
            run_case "$s" fanout "bytes-$kind" -- --members 1000 --rate 20 --duration 5 \
                --drain-secs 3 --payload-kind "$kind" --payload 1024 --concurrency 100
        done
    done
fi
if [[ " $ONLY " == *" fanout "* ]]; then
    for m in 1000 10000; do
        for s in $SERVERS; do
            run_case "$s" fanout "sweep-m$m" -- --members "$m" --sweep \
                --rate-start $((20000 / m)) --rate-factor 2 --refine 0 --max-steps 5 \
                --step-secs 4 --drain-secs 3 "${CHAT[@]}" --concurrency 100
        done
    done
fi
if [[ " $ONLY " == *" idle "* ]]; then
    for n in 10000 19000; do
        for s in $SERVERS; do
            run_case "$s" idle "n$n" -- --conns "$n" --lobbies $((n / 100)) --hold 5 --settle 3 \
                --concurrency 100
        done
    done
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RAW/$NAME-machine.txt"
echo "duration: $(( $(date +%s) - STARTED ))s" >> "$RAW/$NAME-machine.txt"
python3 bench/compression.py "$RESULTS"
