#!/usr/bin/env bash
# A/B of two Switchboard binaries on the same machine, alternating, minutes apart: the way to
# tell a change's cost from a slow day. Each case starts a fresh server pinned to CPU 0 (with
# bench/switchboard.env, join events off), the load generator on CPU 1.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [CASE...]
#   CASE: idle19k (connects/s, KiB/conn) | churn (cycles/s) | fanout1k | fanout10k (deliveries/s)
#         | lobbies10k (protocol v2: 10k connections each joining 10 of 1,000 lobbies; joins/s,
#           server CPU per join, bytes per membership)
#
# e.g. build the old commit in a worktree (`git worktree add ../base COMMIT`, copy target/release
# there to reuse dependencies, `cargo build --release -p switchboard-server`), then
#   bench/ab.sh ../base/target/release/switchboard target/release/switchboard 4 idle19k churn
# Prints one line per run: which, case, figure(s).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
CASES=("${@:-idle19k churn fanout1k}")
read -r -a CASES <<<"${CASES[*]}"
BENCH=target/release/switchboard-bench
[[ -x $BENCH ]] || cargo build --release -p switchboard-bench >&2
mapfile -t ENVV < <(grep -v '^#' bench/switchboard.env | grep -v '^$')
PORT=18700; IP=180

run() { # label binary case
    local label=$1 sb=$2 case=$3 args log=/tmp/switchboard-ab-$1.log
    case $case in
        idle19k) args=(idle --conns 19000 --lobbies 190 --hold 3 --settle 2 --concurrency 100) ;;
        churn) args=(churn --cycles 100000 --secs 90 --warmup 2000 --workers 32) ;;
        fanout1k) args=(fanout --members 1000 --sweep --rate-start 10 --rate-factor 2 --refine 2 --max-steps 14 --step-secs 4 --drain-secs 3 --payload 100 --concurrency 100) ;;
        fanout10k) args=(fanout --members 10000 --sweep --rate-start 1 --rate-factor 2 --refine 2 --max-steps 14 --step-secs 4 --drain-secs 3 --payload 100 --concurrency 100) ;;
        lobbies10k) args=(lobbies --conns 10000 --lobbies 1000 --per-conn 10 --settle 2 --concurrency 100) ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    PORT=$((PORT + 1)); IP=$((IP + 1))
    env "${ENVV[@]}" SWITCHBOARD_PRESENCE__EVENTS=false SWITCHBOARD_BIND=127.0.0.1:$PORT \
        taskset -c 0 "$sb" > "$log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    local line
    line=$(taskset -c 1 "$BENCH" "${args[0]}" --addr "127.0.0.1:$PORT" --server-pid "$pid" \
        --label "$label" --ip-base "$IP" --max-secs 300 "${args[@]:1}" 2>/dev/null)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    python3 - "$label" "$case" "$line" <<'PY'
import json, sys
label, case, line = sys.argv[1:4]
d = json.loads(line)
if case == "idle19k":
    print(label, case, "connects/s", d["connect"]["per_sec"], "KiB/conn", d["rss_kib_per_conn"])
elif case == "churn":
    print(label, case, "cycles/s", d["cycles_per_sec"])
elif case == "lobbies10k":
    print(label, case, "joins/s", d["joins"]["per_sec"], "server-us/join",
          d["joins"]["server_cpu_us_per_join"], "B/membership", d["bytes_per_membership"],
          "KiB/conn", d["rss_kib_per_conn"])
else:
    print(label, case, "deliveries/s", d["best"]["deliveries_per_sec"])
PY
    sleep 1
}

for _ in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        run old "$OLD" "$case"
        run new "$NEW" "$case"
    done
done
