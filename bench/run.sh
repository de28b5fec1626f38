#!/usr/bin/env bash
# The whole comparison, side by side: Switchboard (release build, bench/switchboard.env), the
# `ws` peer, the Bun peer (uWebSockets) and the FastAPI peer (bench/peers/). Each server is pinned with `taskset -c 0`,
# the load generator with `taskset -c 1`; every case starts a fresh server.
#
#   bench/run.sh                 the full run (about 20-25 minutes)
#   bench/run.sh --quick         small counts, short steps (a few minutes)
#   bench/run.sh --servers "switchboard bun"  a subset
# The build goes to $CARGO_TARGET_DIR when it is set (default: target/).
#
# Writes bench/results/raw/results[-quick].jsonl (one JSON summary per case), logs, and
# bench/results/REPORT[-quick].md with SVG charts (bench/report.py).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
SERVERS="switchboard ws bun fastapi"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --servers) SERVERS=$2; shift ;;
        *) echo "usage: bench/run.sh [--quick] [--servers \"switchboard ws bun fastapi\"]" >&2; exit 2 ;;
    esac
    shift
done

OUT=bench/results
RAW=$OUT/raw
SUFFIX=$([[ $QUICK == 1 ]] && echo "-quick" || true)
RESULTS=$RAW/results$SUFFIX.jsonl
LOGS=$RAW/logs$SUFFIX
mkdir -p "$RAW" "$LOGS"
: > "$RESULTS"
PORT=18100
IP_BASE=$([[ $QUICK == 1 ]] && echo 150 || echo 10)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET/release/switchboard-bench
SB=$TARGET/release/switchboard
STARTED=$(date +%s)

say() { echo "== [$(( $(date +%s) - STARTED ))s] $*" >&2; }

# --- sizes -------------------------------------------------------------------------------
if [[ $QUICK == 1 ]]; then
    IDLE_SIZES="200 1000"; IDLE_HOLD=4
    FANOUT_SIZES="200 1000"; STEP_SECS=1.5; MAX_STEPS=8
    CHURN_CYCLES=2000; CHURN_SECS=10; CHURN_WARMUP=200
    STALE_HEALTHY=50; STALE_FROZEN=5; STALE_WINDOW=12; PING_S=2; PONG_S=1
else
    IDLE_SIZES="1000 10000 19000"; IDLE_HOLD=20
    FANOUT_SIZES="1000 10000"; STEP_SECS=4; MAX_STEPS=14
    CHURN_CYCLES=100000; CHURN_SECS=90; CHURN_WARMUP=2000
    STALE_HEALTHY=200; STALE_FROZEN=20; STALE_WINDOW=45; PING_S=20; PONG_S=10
fi

# --- build and install -------------------------------------------------------------------
say "building (release)"
cargo build --release -p switchboard-server -p switchboard-bench >&2
bench/peers/setup.sh >&2

# --- Switchboard's environment: bench/switchboard.env, minus settings this build refuses ----
# shellcheck source=bench/lib.sh
source bench/lib.sh
load_sb_env
for _ in 1 2 3 4 5 6; do
    err=$(env "${SB_ENV[@]}" SWITCHBOARD_BIND=127.0.0.1:0 timeout 1 "$SB" 2>&1 >/dev/null || true)
    bad=$(grep -o 'not supported by this version[^(]*(from SWITCHBOARD_[A-Z0-9_]*' <<<"$err" | grep -o 'SWITCHBOARD_[A-Z0-9_]*' | head -1 || true)
    [[ -z "$bad" ]] && break
    say "WARNING: this build refuses $bad; running without it"
    echo "$bad" >> "$LOGS/dropped-settings.txt"
    SB_ENV=("${SB_ENV[@]/#$bad=*/}")
    mapfile -t SB_ENV < <(printf '%s\n' "${SB_ENV[@]}" | grep -v '^$')
done

# --- the machine ---------------------------------------------------------------------------
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "mode: $([[ $QUICK == 1 ]] && echo quick || echo full)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "kernel: $(uname -sr)"
    echo "memory: $(grep MemTotal /proc/meminfo | awk '{printf "%.1f GiB", $2/1048576}')"
    echo "open files per process: $(ulimit -n) (hard $(ulimit -Hn))"
    echo "rustc: $(rustc --version)"
    echo "node: $(node --version), ws $(node -p "require('./bench/peers/ws/node_modules/ws/package.json').version")"
    echo "bun: $(bench/peers/bun/node_modules/@oven/bun-linux-x64/bin/bun --version)"
    echo "python: $(bench/peers/fastapi/.venv/bin/python --version | cut -d' ' -f2), fastapi $(bench/peers/fastapi/.venv/bin/python -c 'import fastapi; print(fastapi.__version__)'), uvicorn $(bench/peers/fastapi/.venv/bin/python -c 'import uvicorn; print(uvicorn.__version__)')"
    echo "switchboard: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes')"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RAW/machine$SUFFIX.txt"
cp bench/switchboard.env "$RAW/switchboard$SUFFIX.env"
printf '%s\n' "${SB_ENV[@]}" > "$LOGS/switchboard-effective.env"

# --- servers -------------------------------------------------------------------------------
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server NAME LOG [VAR=VALUE ...]: a fresh server on 127.0.0.1:$PORT, pinned to CPU 0.
start_server() {
    local name=$1 log=$2; shift 2
    PORT=$((PORT + 1))
    case "$name" in
        switchboard|switchboard-events)
            env "${SB_ENV[@]}" "$@" SWITCHBOARD_BIND=127.0.0.1:$PORT taskset -c 0 "$SB" > "$log" 2>&1 &
            ;;
        ws|bun|fastapi)
            env "$@" taskset -c 0 bench/peers/start.sh "$name" "$PORT" > "$log" 2>&1 &
            ;;
    esac
    SERVER_PID=$!
    await_listening "$name" "$log"
}

stop_server() {
    cleanup
    SERVER_PID=""
}

# run_case SERVER SCENARIO TAG [server env ...] -- [bench options ...]
run_case() {
    local server=$1 scenario=$2 tag=$3; shift 3
    local senv=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do senv+=("$1"); shift; done
    [[ "${1:-}" == "--" ]] && shift
    local log="$LOGS/$server-$scenario-$tag"
    start_server "$server" "$log.server.log" "${senv[@]}"
    IP_BASE=$((IP_BASE + 1))
    say "$server $scenario $tag (server pid $SERVER_PID, port $PORT, source 127.$IP_BASE.x.y)"
    local line
    if line=$(timeout 900 taskset -c 1 "$BENCH" "$scenario" --addr "127.0.0.1:$PORT" \
        --server-pid "$SERVER_PID" --label "$server" --ip-base "$IP_BASE" --max-secs 800 "$@" \
        2> >(tee "$log.bench.log" >&2)); then
        echo "$line" | sed "s/^{/{\"tag\":\"$tag\",/" >> "$RESULTS"
    else
        say "FAILED: $server $scenario $tag (see $log.*)"
        echo "{\"tag\":\"$tag\",\"scenario\":\"$scenario\",\"server\":\"$server\",\"failed\":true}" >> "$RESULTS"
    fi
    stop_server
    sleep 1
}

# --- scenarios -----------------------------------------------------------------------------
# Idle: Switchboard does the peers' work (they send no join/leave events), then the same with
# its join/leave events on ("switchboard-events"), to show what they cost.
for n in $IDLE_SIZES; do
    lobbies=$(( n / 100 > 0 ? n / 100 : 1 ))
    for s in $SERVERS; do
        senv=()
        [[ $s == switchboard ]] && senv=(SWITCHBOARD_PRESENCE__EVENTS=false)
        run_case "$s" idle "n$n" "${senv[@]}" -- --conns "$n" --lobbies "$lobbies" \
            --hold "$IDLE_HOLD" --settle 3 --concurrency 100
        if [[ $s == switchboard ]]; then
            run_case switchboard-events idle "n$n" -- --conns "$n" --lobbies "$lobbies" \
                --hold "$IDLE_HOLD" --settle 3 --concurrency 100
        fi
    done
done

for m in $FANOUT_SIZES; do
    start_rate=$(( m >= 10000 ? 1 : 10 ))
    for s in $SERVERS; do
        # Presence events off for Switchboard: the peers send no join events, and a join storm
        # of 1,000 members is not what this scenario measures (BENCHMARKS.md, findings).
        run_case "$s" fanout "m$m" SWITCHBOARD_PRESENCE__EVENTS=false -- --members "$m" \
            --sweep --rate-start "$start_rate" --rate-factor 2 --refine 2 \
            --max-steps "$MAX_STEPS" --step-secs "$STEP_SECS" --drain-secs 3 --payload 100 \
            --concurrency 100
    done
done

for s in $SERVERS; do
    run_case "$s" churn "c$CHURN_CYCLES" -- --cycles "$CHURN_CYCLES" --secs "$CHURN_SECS" \
        --warmup "$CHURN_WARMUP" --workers 32
done

for s in $SERVERS; do
    run_case "$s" stale "k$STALE_FROZEN" \
        SWITCHBOARD_HEALTH__PING_INTERVAL_MS=$((PING_S * 1000)) \
        SWITCHBOARD_HEALTH__PONG_TIMEOUT_MS=$((PONG_S * 1000)) \
        PING_INTERVAL_MS=$((PING_S * 1000)) WS_PING_INTERVAL=$PING_S WS_PING_TIMEOUT=$PING_S -- \
        --healthy "$STALE_HEALTHY" --frozen "$STALE_FROZEN" --rate 50 --payload 1000 \
        --window "$STALE_WINDOW" --expect-within $((PING_S + PONG_S + 1)) --concurrency 100
done

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RAW/machine$SUFFIX.txt"
echo "duration: $(( $(date +%s) - STARTED ))s" >> "$RAW/machine$SUFFIX.txt"
say "writing the report"
python3 bench/report.py --results "$RESULTS" --machine "$RAW/machine$SUFFIX.txt" \
    --env "$LOGS/switchboard-effective.env" --out "$OUT" --suffix="$SUFFIX" \
    --command "bench/run.sh $([[ $QUICK == 1 ]] && echo --quick)"
say "done: $OUT/REPORT$SUFFIX.md"
