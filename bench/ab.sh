#!/usr/bin/env bash
# A/B of two Switchboard binaries on the same machine, alternating, minutes apart: the way to
# tell a change's cost from a slow day. Each case starts a fresh server pinned to CPU 0 (with
# bench/switchboard.env, join events off), the load generator on CPU 1.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [CASE...]
#   CASE: idle19k (connects/s, KiB/conn) | churn (cycles/s) | fanout1k | fanout10k (deliveries/s)
#         | lobbies10k (protocol v2: 10k connections each joining 10 of 1,000 lobbies; joins/s,
#           server CPU per join, bytes per membership)
#         | webhook (1,000 clients sending app messages at each rate of HOOK_RATES, default
#           1000,5000,20000/s, for 5 s; each posted as a `message` webhook to the load
#           generator's receiver: events/s, server CPU per event, missing, p99; one line per rate)
#         | webhook_b1 (the same with webhook.batch_max 1: what batching saves)
#         | fanout1k_hooks (fanout1k with webhooks on, all events, posted to a receiver in the
#           load generator that answers 200: compare with fanout1k in the same run)
#
# e.g. build the old commit in a worktree (`git worktree add ../base COMMIT`, copy target/release
# there to reuse dependencies, `cargo build --release -p switchboard-server`), then
#   bench/ab.sh ../base/target/release/switchboard target/release/switchboard 4 idle19k churn
# Prints one line per run: which, case, figure(s). AB_JSONL=FILE also appends each run's JSON
# summary (every fan-out step's server CPU per delivery, say) to FILE.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-3}; shift $(( $# < 3 ? $# : 3 ))
CASES=("${@:-idle19k churn fanout1k}")
read -r -a CASES <<<"${CASES[*]}"
BENCH=target/release/switchboard-bench
[[ -x $BENCH ]] || cargo build --release -p switchboard-bench >&2
mapfile -t ENVV < <(grep -v '^#' bench/switchboard.env | grep -v '^$')
PORT=18700; IP=180
HOOK_RATES=${HOOK_RATES:-1000,5000,20000}

run() { # label binary case
    local label=$1 sb=$2 case=$3 args log=/tmp/switchboard-ab-$1.log senv=()
    PORT=$((PORT + 1)); IP=$((IP + 1))
    # Webhooks go to the load generator's receiver (bound before its clients connect).
    local hook=127.0.0.1:$((PORT + 1000))
    local hooked=(SWITCHBOARD_WEBHOOK__URL=http://$hook/hook SWITCHBOARD_WEBHOOK__SECRET=s)
    case $case in
        idle19k) args=(idle --conns 19000 --lobbies 190 --hold 3 --settle 2 --concurrency 100) ;;
        churn) args=(churn --cycles 100000 --secs 90 --warmup 2000 --workers 32) ;;
        fanout1k) args=(fanout --members 1000 --sweep --rate-start 10 --rate-factor 2 --refine 2 --max-steps 14 --step-secs 4 --drain-secs 3 --payload 100 --concurrency 100) ;;
        fanout10k) args=(fanout --members 10000 --sweep --rate-start 1 --rate-factor 2 --refine 2 --max-steps 14 --step-secs 4 --drain-secs 3 --payload 100 --concurrency 100) ;;
        lobbies10k) args=(lobbies --conns 10000 --lobbies 1000 --per-conn 10 --settle 2 --concurrency 100) ;;
        webhook|webhook_b1)
            senv=("${hooked[@]}" SWITCHBOARD_WEBHOOK__EVENTS=message)
            [[ $case == webhook_b1 ]] && senv+=(SWITCHBOARD_WEBHOOK__BATCH_MAX=1)
            args=(webhook --clients 1000 --rates "$HOOK_RATES" --secs 5 --drain-secs 5 --receiver "$hook" --secret s --concurrency 100) ;;
        fanout1k_hooks)
            senv=("${hooked[@]}")
            args=(fanout --members 1000 --sweep --rate-start 10 --rate-factor 2 --refine 2 --max-steps 14 --step-secs 4 --drain-secs 3 --payload 100 --concurrency 100 --receiver "$hook" --secret s) ;;
        *) echo "unknown case $case" >&2; exit 2 ;;
    esac
    env "${ENVV[@]}" SWITCHBOARD_PRESENCE__EVENTS=false SWITCHBOARD_BIND=127.0.0.1:$PORT "${senv[@]}" \
        taskset -c 0 "$sb" > "$log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    local line
    line=$(taskset -c 1 "$BENCH" "${args[0]}" --addr "127.0.0.1:$PORT" --server-pid "$pid" \
        --label "$label" --ip-base "$IP" --max-secs 300 "${args[@]:1}" 2>/dev/null)
    kill "$pid" 2>/dev/null || echo "$label $case: the server had already exited ($log)" >&2
    wait "$pid" 2>/dev/null || true
    [[ -n ${AB_JSONL:-} ]] && echo "{\"ab\":\"$label\",\"case\":\"$case\",${line#\{}" >> "$AB_JSONL"
    python3 - "$label" "$case" "$line" <<'PY'
import json, sys
label, case, line = sys.argv[1:4]
d = json.loads(line)
if case == "idle19k":
    print(label, case, "connects/s", d["connect"]["per_sec"], "KiB/conn", d["rss_kib_per_conn"])
elif case == "churn":
    print(label, case, "cycles/s", d["cycles_per_sec"])
elif case.startswith("webhook"):
    for s in d["steps"]:
        print(label, case, "rate", s["rate"], "events/s", s["events_per_sec"], "server-us/event",
              s["server_cpu_us_per_event"], "missing", s["missing"], "dup", s["duplicates"],
              "bad-sig", s["bad_signatures"], "per-batch", s["events_per_batch"],
              "p99_ms", s["latency"]["p99_ms"])
elif case == "fanout1k_hooks":
    print(label, case, "deliveries/s", d["best"]["deliveries_per_sec"], "server-us/delivery",
          d["best"]["server_cpu_us_per_delivery"], "hook-events", d["webhooks"]["events"],
          "bad-sig", d["webhooks"]["bad_signatures"])
elif case == "lobbies10k":
    print(label, case, "joins/s", d["joins"]["per_sec"], "server-us/join",
          d["joins"]["server_cpu_us_per_join"], "B/membership", d["bytes_per_membership"],
          "KiB/conn", d["rss_kib_per_conn"])
else:
    print(label, case, "deliveries/s", d["best"]["deliveries_per_sec"], "server-us/delivery",
          d["best"]["server_cpu_us_per_delivery"])
PY
    sleep 1
}

for _ in $(seq "$ROUNDS"); do
    for case in "${CASES[@]}"; do
        run old "$OLD" "$case"
        run new "$NEW" "$case"
    done
done
