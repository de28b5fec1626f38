#!/usr/bin/env bash
# The overload curve (issue 19): `switchboard-bench fanout --sweep --past-saturation` against
# one Switchboard node, two Switchboard nodes on one redis-server (members on one node, the
# publisher on the other), and the `ws` peer; then the sustained figure (`--sweep`, nothing
# lost, p99 < 1 s) for one node and for the cluster, with Redis's CPU per publication.
# Servers (and Redis) pinned with `taskset -c 0`, the load generator with `taskset -c 1`.
#
#   bench/overload.sh [CASE...]     CASE: switchboard | cluster | ws | sustained1 | sustained2
#                                   (default: all five)
# Env: BIN_DIR (release binaries, default target/release), MEMBERS (1000), STUCK (5),
#      CLUSTER_WARMUP (12 s between the cluster's start and the load),
#      RATE_START (100), STEPS (8), STEP_SECS (6), OUT (bench/results/raw/overload.jsonl).
# Appends one JSON summary per case to OUT; logs (with each run's table) in
# bench/results/raw/logs-overload/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_DIR=${BIN_DIR:-target/release}
BENCH=$BIN_DIR/switchboard-bench
SB=$BIN_DIR/switchboard
MEMBERS=${MEMBERS:-1000}
STUCK=${STUCK:-5}
RATE_START=${RATE_START:-100}
STEPS=${STEPS:-8}
STEP_SECS=${STEP_SECS:-6}
OUT=${OUT:-bench/results/raw/overload.jsonl}
LOGS=bench/results/raw/logs-overload
mkdir -p "$LOGS" "$(dirname "$OUT")"
CASES=("${@:-switchboard cluster ws sustained1 sustained2}")
read -r -a CASES <<<"${CASES[*]}"
mapfile -t ENVV < <(grep -v '^#' bench/switchboard.env | grep -v '^$')
PORT=18900; IP=190
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port log
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; cat "$2" >&2; return 1
}

node() { # port log [env...]: a Switchboard node on core 0; sets NODE_PID
    local port=$1 log=$2; shift 2
    env "${ENVV[@]}" SWITCHBOARD_PRESENCE__EVENTS=false SWITCHBOARD_BIND=127.0.0.1:$port "$@" \
        taskset -c 0 "$SB" > "$log" 2>&1 &
    NODE_PID=$!; PIDS+=("$NODE_PID")
    wait_port "$port" "$log"
}

bench() { # case label server-pid addr [fanout options...]
    local case=$1 label=$2 pid=$3 addr=$4; shift 4
    IP=$((IP + 1))
    echo "== $case: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    local line
    line=$(timeout 600 taskset -c 1 "$BENCH" fanout --addr "$addr" --server-pid "$pid" \
        --label "$label" --ip-base "$IP" --max-secs 500 --members "$MEMBERS" --payload 100 \
        --concurrency 100 --drain-secs 3 "$@" 2> >(tee "$LOGS/$case.bench.log" >&2))
    echo "{\"case\":\"$case\",\"loadavg\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"commit\":\"$(git rev-parse --short HEAD)\",${line#\{}" >> "$OUT"
}

PAST=(--sweep --past-saturation --rate-start "$RATE_START" --rate-factor 2 --max-steps "$STEPS"
      --step-secs "$STEP_SECS" --stuck "$STUCK")
SUSTAINED=(--sweep --rate-start "$RATE_START" --rate-factor 2 --refine 2 --max-steps 14
           --step-secs "$STEP_SECS")

cluster() { # sets A (members' node) B (publisher's node) RP (Redis port)
    RP=$((PORT + 1)); A=$((PORT + 2)); B=$((PORT + 3)); PORT=$((PORT + 3))
    taskset -c 0 redis-server --port "$RP" --bind 127.0.0.1 --save '' --appendonly no \
        > "$LOGS/redis.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$RP" "$LOGS/redis.log"
    node "$A" "$LOGS/$1.node-a.log" SWITCHBOARD_REDIS__URL=redis://127.0.0.1:$RP SWITCHBOARD_REDIS__NODE_ID=a
    A_PID=$NODE_PID
    node "$B" "$LOGS/$1.node-b.log" SWITCHBOARD_REDIS__URL=redis://127.0.0.1:$RP SWITCHBOARD_REDIS__NODE_ID=b
    # A node's first seconds: before eab0f71 its first pub/sub intake probe could be lost, and
    # until it gave up on it (10 s) the node took itself for behind and shed every publish to
    # a lobby it received broadcasts for (BENCHMARKS.md, "Overload"). Measure past that.
    sleep "${CLUSTER_WARMUP:-12}"
}

for case in "${CASES[@]}"; do
    case $case in
        switchboard|sustained1)
            PORT=$((PORT + 1))
            node "$PORT" "$LOGS/$case.server.log"
            opts=("${PAST[@]}"); [[ $case == sustained1 ]] && opts=("${SUSTAINED[@]}")
            bench "$case" switchboard "$NODE_PID" "127.0.0.1:$PORT" "${opts[@]}" \
                --stats-url "http://127.0.0.1:$PORT/api/stats"
            ;;
        cluster|sustained2)
            cluster "$case"
            opts=("${PAST[@]}"); [[ $case == sustained2 ]] && opts=("${SUSTAINED[@]}")
            bench "$case" switchboard-cluster "$A_PID" "127.0.0.1:$A" "${opts[@]}" \
                --publish-addr "127.0.0.1:$B" --redis "127.0.0.1:$RP" \
                --stats-url "http://127.0.0.1:$A/api/stats" --stats-url "http://127.0.0.1:$B/api/stats"
            ;;
        ws)
            PORT=$((PORT + 1))
            taskset -c 0 bench/peers/start.sh ws "$PORT" > "$LOGS/ws.server.log" 2>&1 &
            PIDS+=("$!")
            wait_port "$PORT" "$LOGS/ws.server.log"
            bench ws ws "${PIDS[-1]}" "127.0.0.1:$PORT" "${PAST[@]}" --max-server-rss-mib 3072
            ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    cleanup
    sleep 1
done
