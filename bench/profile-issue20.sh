#!/usr/bin/env bash
# Issue 20's profiles (bench/results/profile-issue20.md): where a server's cycles go in fan-out
# and in a connect storm, Switchboard against the Bun peer, and callgrind instruction counts for
# Switchboard's per-delivery and per-connect paths. Server on CPU 0, load generator on CPU 1;
# every load bounded in count and time. Needs perf and valgrind (apt-get install linux-perf
# valgrind); the release profile keeps line tables (debug = 1).
#
#   bench/profile-issue20.sh [stat] [perf] [callgrind]       (all by default)
#   bench/profile-issue20.sh connect cgconnect                (connects only: perf stat of
#                                                             the 10k storm, callgrind window)
#
# SB=path/to/switchboard runs another build (e.g. main's, for a before/after in one run),
# PROFILE_OUT=dir writes elsewhere, CONNECT_SERVERS="switchboard" leaves Bun out of `connect`,
# PROFILE_PORT / PROFILE_IP_BASE (18500 / 110) choose the ports and 127.x source addresses.
#
# Writes bench/results/raw/profile-issue20/: perf-*.data and perf-*.txt (perf report, flat and
# by caller), callgrind.out.* and callgrind-*.txt (callgrind_annotate), summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHAT=${*:-stat perf callgrind}
OUT=${PROFILE_OUT:-bench/results/raw/profile-issue20}
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$TARGET/release/switchboard-bench
SB=${SB:-$TARGET/release/switchboard}
# Back-to-back runs on the same ports and source addresses meet the last run's TIME_WAIT
# sockets (connects stall for a SYN retry): PROFILE_PORT / PROFILE_IP_BASE move them.
PORT=${PROFILE_PORT:-18500}
IP_BASE=${PROFILE_IP_BASE:-110}
# shellcheck source=bench/lib.sh
source bench/lib.sh
load_sb_env
SB_ENV+=(SWITCHBOARD_PRESENCE__EVENTS=false)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT
say() { echo "== $(date +%T) load $(cut -d' ' -f1 /proc/loadavg): $*" | tee -a "$OUT/summary.txt" >&2; }

# start NAME LOG [prefix command...]: a server on a fresh port, pinned to CPU 0; sets SERVER_PID.
start() {
    local name=$1 log=$2; shift 2
    PORT=$((PORT + 1))
    if [[ $name == switchboard ]]; then
        env "${SB_ENV[@]}" SWITCHBOARD_BIND=127.0.0.1:$PORT taskset -c 0 "$@" "$SB" > "$log" 2>&1 &
    else
        taskset -c 0 bench/peers/start.sh "$name" "$PORT" > "$log" 2>&1 &
    fi
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    # up to a minute: a server under valgrind starts slowly
    await_listening "$name" "$log" 600
}

STAT_EVENTS=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_futex,syscalls:sys_enter_accept4,syscalls:sys_enter_setsockopt,syscalls:sys_enter_getsockopt,syscalls:sys_enter_close

report() { # report NAME: flat (self) and caller-inclusive tables of perf-NAME.data
    perf report -i "$OUT/perf-$1.data" --no-children --sort dso,sym --percent-limit 0.7 --stdio \
        2>/dev/null | grep -v '^$' | head -120 > "$OUT/perf-$1-self.txt" || true
    perf report -i "$OUT/perf-$1.data" --children --sort sym --percent-limit 3 --stdio -g none \
        2>/dev/null | grep -v '^$' | head -120 > "$OUT/perf-$1-children.txt" || true
    perf script -i "$OUT/perf-$1.data" -F comm,tid,period,ip,sym,dso 2>/dev/null \
        | python3 bench/perf_buckets.py > "$OUT/buckets-$1.md" || true
}

# perf NAME SERVER: fan-out to 10k members at 10 msg/s (100k deliveries/s, each connection woken
# about once per broadcast), 6 s recorded after the members connected; then a connect storm of
# 10k connections, recorded from the first connect to the last welcome.
perf_pair() {
    local s=$1 cg=(--call-graph dwarf,32768)
    # Bun's npm binary has no .eh_frame (and only its exported symbols): frame pointers.
    [[ $s == bun ]] && cg=(--call-graph fp)
    start "$s" "$OUT/$s-fanout.server.log"
    bench "$OUT/$s-fanout" fanout --members 10000 --rate 10 --duration 14 --drain-secs 2 --payload 100 --concurrency 100
    wait_for "$OUT/$s-fanout.log" "done=10000/10000" 60
    sleep 2.5
    say "perf $s fan-out 10k members x 10 msg/s (server pid $SERVER_PID)"
    taskset -c 1 perf record -F 999 "${cg[@]}" -p "$SERVER_PID" -o "$OUT/perf-$s-fanout.data" -- sleep 6 2> /dev/null
    wait "$BENCH_PID" || true
    cleanup
    report "$s-fanout"

    start "$s" "$OUT/$s-connect.server.log"
    taskset -c 1 perf record -F 999 "${cg[@]}" -p "$SERVER_PID" -o "$OUT/perf-$s-connect.data" 2> /dev/null &
    local perf_pid=$!
    sleep 0.5
    say "perf $s connect storm 10k (server pid $SERVER_PID)"
    bench "$OUT/$s-connect" idle --conns 10000 --lobbies 100 --hold 1 --settle 0 --concurrency 100
    wait_for "$OUT/$s-connect.log" "step=connected" 60
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    wait "$BENCH_PID" || true
    cleanup
    report "$s-connect"
}

# stat NAME SERVER: syscalls, context switches and CPU (perf stat, no sampling) over the whole
# publishing of a fan-out (10k members at 10 msg/s, and 1k members at 76 msg/s: 76k
# deliveries/s), and over a connect storm of 10k; divided by the deliveries / connects.
stat_one() {
    local s=$1 tag=$2; shift 2
    start "$s" "$OUT/$s-stat-$tag.server.log"
    bench "$OUT/$s-stat-$tag" "$@"
    local scenario=$1
    if [[ $scenario == fanout ]]; then
        wait_for "$OUT/$s-stat-$tag.log" "done=$3/$3 " 60
        sleep 0.3
    fi
    taskset -c 1 perf stat -x, -e "$STAT_EVENTS" -p "$SERVER_PID" -o "$OUT/stat-$s-$tag.csv" 2> /dev/null &
    local stat_pid=$!
    # stop at the step's result (fan-out) or the last welcome (connects): not the teardown
    if [[ $scenario == fanout ]]; then
        wait_for "$OUT/$s-stat-$tag.log" "step=fixed" 120
    else
        wait_for "$OUT/$s-stat-$tag.log" "step=connected" 60
    fi
    kill -INT "$stat_pid"; wait "$stat_pid" || true
    wait "$BENCH_PID" || true
    say "perf stat $s $tag (server pid $SERVER_PID)"
    cleanup
}

if [[ " $WHAT " == *" stat "* ]]; then
    for s in switchboard bun; do
        stat_one "$s" fanout10k fanout --members 10000 --rate 10 --duration 8 --drain-secs 2 --payload 100 --concurrency 100
        stat_one "$s" fanout1k fanout --members 1000 --rate 76 --duration 8 --drain-secs 2 --payload 100 --concurrency 100
        # 50 ms between broadcasts, a fan-out takes under 10 ms: every delivery its own write
        stat_one "$s" sparse1k fanout --members 1000 --rate 20 --duration 8 --drain-secs 2 --payload 100 --concurrency 100
        stat_one "$s" connect idle --conns 10000 --lobbies 100 --hold 1 --settle 0 --concurrency 100
    done
    python3 bench/perf_stat_table.py "$OUT" > "$OUT/stat-${STAT_TAG:-latest}.md"
fi

if [[ " $WHAT " == *" connect "* ]]; then
    for s in ${CONNECT_SERVERS:-switchboard bun}; do
        stat_one "$s" connect idle --conns 10000 --lobbies 100 --hold 1 --settle 0 --concurrency 100
    done
    python3 bench/perf_stat_table.py "$OUT" > "$OUT/stat-${STAT_TAG:-latest}.md"
fi

if [[ " $WHAT " == *" perf "* ]]; then
    perf_pair switchboard
    perf_pair bun
fi

# callgrind: Switchboard only (Bun's JIT does not run usefully under valgrind). The window is
# zeroed with callgrind_control once the members are in and dumped at the end, so it holds
# the deliveries (and the publisher's reads), not the connects.
VG=(valgrind --tool=callgrind --dump-instr=no --collect-jumps=no --callgrind-out-file="$OUT/callgrind.out.%p")
if [[ " $WHAT " == *" callgrind "* || " $WHAT " == *" cgconnect "* ]]; then
    rm -f "$OUT"/callgrind.out.*
fi
if [[ " $WHAT " == *" callgrind "* ]]; then
    # per delivery: 30 broadcasts to 1,000 members at 3/s, each delivery its own wakeup and write
    start switchboard "$OUT/cg-fanout.server.log" "${VG[@]}"
    bench "$OUT/cg-fanout" fanout --members 1000 --rate 3 --duration 10 --drain-secs 3 --payload 100 --concurrency 20 --connect-timeout 60
    wait_for "$OUT/cg-fanout.log" "done=1000/1000" 120
    callgrind_control -z "$SERVER_PID" > /dev/null
    say "callgrind fan-out: zeroed after the connects (server pid $SERVER_PID)"
    wait "$BENCH_PID" || true
    callgrind_control -d fanout "$SERVER_PID" > /dev/null
    cleanup
fi
if [[ " $WHAT " == *" callgrind "* || " $WHAT " == *" cgconnect "* ]]; then
    # per connect: 2,000 connections (upgrade, admission, welcome)
    start switchboard "$OUT/cg-connect.server.log" "${VG[@]}"
    callgrind_control -z "$SERVER_PID" > /dev/null
    say "callgrind connects: zeroed before 2,000 connects (server pid $SERVER_PID)"
    bench "$OUT/cg-connect" idle --conns 2000 --lobbies 20 --hold 1 --settle 0 --concurrency 20 --connect-timeout 60
    wait_for "$OUT/cg-connect.log" "step=connected" 120
    callgrind_control -d connect "$SERVER_PID" > /dev/null
    wait "$BENCH_PID" || true
    cleanup
    # keep the measured windows (callgrind.out.PID.1); the dumps at exit hold the teardown
    for f in "$OUT"/callgrind.out.*; do
        [[ $f =~ callgrind\.out\.[0-9]+$ ]] && rm -f "$f"
    done
    for f in "$OUT"/callgrind.out.*.[0-9]; do
        callgrind_annotate --threshold=100 "$f" 2>/dev/null | head -80 > "$f.self.txt" || true
        callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null | head -150 > "$f.incl.txt" || true
    done
fi
say "done"
