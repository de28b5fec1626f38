#!/usr/bin/env bash
# Issue 20, phase 2 (F1, F2): the same measurements for two Switchboard builds, one after the
# other in the same run, so that their ratio is what counts. Server on CPU 0, load generator
# on CPU 1, every load bounded in count and time; presence events off (as in phase 1).
#
#   bench/profile-issue20-phase2.sh BASE_BIN NEW_BIN BENCH_BIN [callgrind] [stat]
#
# callgrind: user-space instructions per delivery, 30 broadcasts to 1,000 members at 3/s
#   (phase 1's window: zeroed after the connects), once with a broadcast per publisher
#   write and once with 5 per write (--per-write 5).
# stat: perf stat writes (sendto) and CPU per delivery, 1,000 members, 20 writes/s of the
#   publisher with 1 and with 4 broadcasts each.
# WORKERS=N: the server's tokio workers (TOKIO_WORKER_THREADS; by default one per CPU it may
# use, so one on CPU 0, where one worker runs a publisher's whole read before any member).
# SERVER_CPUS=0,1: the CPUs the server may use (default 0; the load generator stays on 1).
# TAG=name: a suffix for this run's stat files.
# Writes bench/results/raw/profile-issue20-phase2/.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$1 NEW=$2 BENCH=$3; shift 3
WHAT=${*:-callgrind stat}
OUT=bench/results/raw/profile-issue20-phase2
mkdir -p "$OUT"
PORT=18700
IP_BASE=150
# shellcheck source=bench/lib.sh
source bench/lib.sh
load_sb_env
SB_ENV+=(SWITCHBOARD_PRESENCE__EVENTS=false)
[[ -n ${WORKERS:-} ]] && SB_ENV+=(TOKIO_WORKER_THREADS="$WORKERS")
TAG=${TAG:-}
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
say() { echo "== $(date +%T) load $(cut -d' ' -f1 /proc/loadavg): $*" | tee -a "$OUT/summary.txt" >&2; }

start() { # start BIN LOG [prefix command...]
    local bin=$1 log=$2; shift 2
    PORT=$((PORT + 1))
    env "${SB_ENV[@]}" SWITCHBOARD_BIND=127.0.0.1:$PORT taskset -c "${SERVER_CPUS:-0}" "$@" "$bin" > "$log" 2>&1 &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # up to a minute: a server under valgrind starts slowly
    await_listening server "$log" 600
}

if [[ " $WHAT " == *" callgrind "* ]]; then
    rm -f "$OUT"/callgrind.out.*
    for k in 1 5; do
        for name in base new; do
            bin=$BASE; [[ $name == new ]] && bin=$NEW
            VG=(valgrind --tool=callgrind --dump-instr=no --collect-jumps=no --callgrind-out-file="$OUT/callgrind.out.$name-k$k.%p")
            start "$bin" "$OUT/cg-$name-k$k.server.log" "${VG[@]}"
            bench "$OUT/cg-$name-k$k" fanout --members 1000 --rate 3 --duration 10 --drain-secs 3 --payload 100 \
                --concurrency 20 --connect-timeout 60 --per-write "$k"
            wait_for "$OUT/cg-$name-k$k.log" "done=1000/1000" 120
            callgrind_control -z "$SERVER_PID" > /dev/null
            say "callgrind $name per-write $k: zeroed after the connects (server pid $SERVER_PID)"
            wait "$BENCH_PID" || true
            callgrind_control -d fanout "$SERVER_PID" > /dev/null
            cleanup
        done
    done
    for f in "$OUT"/callgrind.out.*; do
        [[ $f =~ callgrind\.out\.[a-z]+-k[0-9]+\.[0-9]+$ ]] && rm -f "$f"
    done
    for f in "$OUT"/callgrind.out.*.[0-9]; do
        callgrind_annotate --threshold=100 "$f" 2>/dev/null | head -60 > "$f.self.txt" || true
        callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null | head -100 > "$f.incl.txt" || true
    done
fi

STAT_EVENTS=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex
if [[ " $WHAT " == *" stat "* ]]; then
    for k in 1 4; do
        for name in base new; do
            bin=$BASE; [[ $name == new ]] && bin=$NEW
            tag=$name-k$k$TAG
            start "$bin" "$OUT/stat-$tag.server.log"
            bench "$OUT/stat-$tag" fanout --members 1000 --rate $((20 * k)) --per-write "$k" --duration 6 \
                --drain-secs 2 --payload 100 --concurrency 100
            wait_for "$OUT/stat-$tag.log" "done=1000/1000 " 60
            sleep 0.3
            taskset -c 1 perf stat -x, -e "$STAT_EVENTS" -p "$SERVER_PID" -o "$OUT/stat-$tag.csv" 2> /dev/null &
            stat_pid=$!
            wait_for "$OUT/stat-$tag.log" "step=fixed" 120
            kill -INT "$stat_pid"; wait "$stat_pid" || true
            wait "$BENCH_PID" || true
            say "perf stat $tag (server pid $SERVER_PID)"
            cleanup
        done
    done
fi
say done
