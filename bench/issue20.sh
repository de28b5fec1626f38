#!/usr/bin/env bash
# Issue 20's figures, side by side in one run: Switchboard (release build, bench/switchboard.env
# with presence events off, as in run.sh's idle and fan-out cases) against the Bun peer
# (uWebSockets) and, where it is cheap, the ws peer. Server on CPU 0, load generator on CPU 1,
# a fresh server per case.
#
#   bench/issue20.sh                              the whole set (about 12 minutes)
#   bench/issue20.sh --servers "switchboard bun"  a subset
#   bench/issue20.sh --out NAME                   bench/results/raw/NAME.jsonl (default issue20)
#   bench/issue20.sh --cases "sweep fixed"        a subset of idle, sweep, fixed (76k deliveries/s), churn
#   bench/issue20.sh --sb-env "K=V ..."           more settings for Switchboard (e.g.
#                                                 SWITCHBOARD_QUEUE__WRITE_DELAY_MS=5)
#
# Cases: idle 10k (twice) and 19k with health checks on (RSS per connection, connects/s); fan-out
# sweeps at 1k and 10k members from 100k deliveries/s up in steps of 1.5x (no bisection, so
# every server is measured at the same offered rates; deliveries per server CPU-second per
# step); 76k deliveries/s fixed (76 msg/s to 1k members, 7.6 msg/s to 10k) for server CPU; and
# 100k connect/close cycles. bench/issue20.py prints the table from the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVERS="switchboard bun ws"
NAME=issue20
CASES="idle sweep fixed churn"
EXTRA_ENV=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --servers) SERVERS=$2; shift ;;
        --out) NAME=$2; shift ;;
        --cases) CASES=$2; shift ;;
        --sb-env) EXTRA_ENV=$2; shift ;;
        *) echo "usage: bench/issue20.sh [--servers \"switchboard bun ws\"] [--out NAME] [--cases \"idle sweep fixed churn\"] [--sb-env \"K=V ...\"]" >&2; exit 2 ;;
    esac
    shift
done
wants() { [[ " $CASES " == *" $1 "* ]]; }
PORT=18300
IP_BASE=60
# shellcheck source=bench/lib.sh
source bench/lib.sh
side_by_side_run "$NAME"
# shellcheck disable=SC2206
SB_ENV+=($EXTRA_ENV)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), nproc $(nproc)"
    echo "switchboard: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + uncommitted changes')"
    echo "bun: $(bench/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun --version), node $(node --version)"
    echo "servers: $SERVERS"
    echo "cases: $CASES"
    echo "switchboard settings beyond bench/switchboard.env: SWITCHBOARD_PRESENCE__EVENTS=false $EXTRA_ENV"
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
    if [[ $name == switchboard ]]; then
        env "${SB_ENV[@]}" SWITCHBOARD_BIND=127.0.0.1:$PORT taskset -c 0 "$SB" > "$log" 2>&1 &
    else
        taskset -c 0 bench/peers/start.sh "$name" "$PORT" > "$log" 2>&1 &
    fi
    SERVER_PID=$!
    await_listening "$name" "$log"
}

# run_case SERVER SCENARIO TAG -- BENCH OPTIONS: one case on a fresh server; the JSON summary
# gets the tag and the load average at its start.
run_case() {
    local server=$1 scenario=$2 tag=$3; shift 4
    local log="$LOGS/$server-$scenario-$tag" load line
    start_server "$server" "$log.server.log"
    IP_BASE=$((IP_BASE + 1))
    load=$(cut -d' ' -f1 /proc/loadavg)
    say "$server $scenario $tag (pid $SERVER_PID, load $load)"
    if line=$(timeout 600 taskset -c 1 "$BENCH" "$scenario" --addr "127.0.0.1:$PORT" \
        --server-pid "$SERVER_PID" --label "$server" --ip-base "$IP_BASE" --max-secs 500 "$@" \
        2> "$log.bench.log"); then
        echo "$line" | sed "s/^{/{\"tag\":\"$tag\",\"load_avg\":$load,/" >> "$RESULTS"
    else
        say "FAILED: $server $scenario $tag"
        echo "{\"tag\":\"$tag\",\"scenario\":\"$scenario\",\"server\":\"$server\",\"failed\":true}" >> "$RESULTS"
    fi
    cleanup
    sleep 1
}

for s in $SERVERS; do
    wants idle || break
    run_case "$s" idle n10000 -- --conns 10000 --lobbies 100 --hold 20 --settle 3 --concurrency 100
done
for s in $SERVERS; do
    wants idle || break
    [[ $s == ws ]] && continue
    run_case "$s" idle n10000b -- --conns 10000 --lobbies 100 --hold 2 --settle 3 --concurrency 100
done
for s in $SERVERS; do
    wants idle || break
    run_case "$s" idle n19000 -- --conns 19000 --lobbies 190 --hold 20 --settle 3 --concurrency 100
done
for m in 1000 10000; do
    wants sweep || break
    for s in $SERVERS; do
        run_case "$s" fanout "m$m" -- --members "$m" --sweep --rate-start $((100000 / m)) \
            --rate-factor 1.5 --refine 0 --max-steps 11 --step-secs 4 --drain-secs 3 \
            --payload 100 --concurrency 100
    done
done
for m in 1000 10000; do
    wants fixed || break
    rate=$(python3 -c "print(76000 / $m)")
    for s in $SERVERS; do
        run_case "$s" fanout "r76k-m$m" -- --members "$m" --rate "$rate" --duration 10 \
            --drain-secs 3 --payload 100 --concurrency 100
    done
done
for s in $SERVERS; do
    wants churn || break
    run_case "$s" churn c100000 -- --cycles 100000 --secs 60 --warmup 2000 --workers 32
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RAW/$NAME-machine.txt"
echo "duration: $(( $(date +%s) - STARTED ))s" >> "$RAW/$NAME-machine.txt"
python3 bench/issue20.py "$RESULTS"
