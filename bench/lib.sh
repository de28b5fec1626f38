# Shared by the bench scripts (sourced from the repository's root): Switchboard's settings for
# a run, waiting until a freshly started server listens, the side-by-side scripts' setup, and
# the load generator in the background.

# load_sb_env: SB_ENV holds bench/switchboard.env's settings (blank and comment lines left out).
load_sb_env() {
    SB_ENV=()
    local line
    while IFS= read -r line; do
        [[ -z "$line" || "$line" == \#* ]] && continue
        SB_ENV+=("$line")
    done < bench/switchboard.env
}

# await_listening NAME LOG [TENTHS]: waits until the server started as SERVER_PID has logged
# `listening on` and 127.0.0.1:$PORT takes a connection; at most TENTHS tenths of a second
# (100). Fails, with the server's log, if it exits first or never listens.
await_listening() {
    local name=$1 log=$2 tenths=${3:-100}
    for _ in $(seq "$tenths"); do
        if grep -q "listening on" "$log" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; return 1; }
        sleep 0.1
    done
    echo "$name did not start" >&2
    cat "$log" >&2
    return 1
}

# side_by_side_run NAME: what a side-by-side script (issue20.sh, compression.sh) starts with:
# RAW, LOGS, RESULTS (bench/results/raw/NAME.jsonl, emptied), TARGET, BENCH and SB (release
# builds, built now), the peers installed, SB_ENV loaded with presence events off, STARTED and
# `say` (a progress line with the seconds since).
side_by_side_run() {
    RAW=bench/results/raw
    LOGS=$RAW/logs-$1
    RESULTS=$RAW/$1.jsonl
    mkdir -p "$LOGS"
    : > "$RESULTS"
    TARGET=${CARGO_TARGET_DIR:-$PWD/target}
    BENCH=$TARGET/release/switchboard-bench
    SB=$TARGET/release/switchboard
    STARTED=$(date +%s)
    say() { echo "== [$(( $(date +%s) - STARTED ))s] $*" >&2; }
    cargo build --release -p switchboard-server -p switchboard-bench >&2
    bench/peers/setup.sh >&2
    load_sb_env
    SB_ENV+=(SWITCHBOARD_PRESENCE__EVENTS=false)
}

# bench LOG SCENARIO OPTIONS...: the load generator on CPU 1 against the server SERVER_PID on
# 127.0.0.1:$PORT, from the next block of source addresses (IP_BASE), in the background; its
# JSON in LOG.json, its progress in LOG.log. Sets BENCH_PID and adds it to PIDS.
bench() {
    local log=$1; shift
    IP_BASE=$((IP_BASE + 1))
    local scenario=$1; shift
    timeout 300 taskset -c 1 "$BENCH" "$scenario" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
        --ip-base "$IP_BASE" --max-secs 240 "$@" > "$log.json" 2> "$log.log" &
    BENCH_PID=$!
    PIDS+=("$BENCH_PID")
}

# wait_for FILE PATTERN SECS: until PATTERN appears in FILE, at most SECS seconds.
wait_for() {
    for _ in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; return 1
}
