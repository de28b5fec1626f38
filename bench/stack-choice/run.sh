#!/usr/bin/env bash
# Builds the benchmark and runs every measurement; prints a table (also logs/table.md).
# Server pinned to CPU 0, client to CPU 1. Every run is bounded: server --max-secs,
# client has per-phase timeouts, and the whole client is wrapped in `timeout`.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release -q

STACKS=${STACKS:-"axum-default axum-tuned axum-wbuf8k axum-rbuf1k fastwebsockets tungstenite-raw"}
# "C N" pairs: idle memory + fanout at C=1,000 N=200 and C=10,000 N=20
CASES=${CASES:-"1000:200 10000:20"}
REPS=${REPS:-10}
PORT=${PORT:-19100}
IPBASE=${IPBASE:-20}     # source addresses 127.<IPBASE+run>.0.x: fresh per run, so no TIME_WAIT reuse
mkdir -p logs
rm -f logs/*.log
{ echo "start: $(date -Is) load: $(cat /proc/loadavg)"; } > logs/load.log

run=0
for st in $STACKS; do
  for cs in $CASES; do
    c=${cs%%:*}; n=${cs##*:}
    port=$((PORT + run)); ipb=$((IPBASE + run)); run=$((run + 1))
    slog=logs/$st-c$c.server.log; clog=logs/$st-c$c.client.log
    taskset -c 0 ./target/release/server --stack "$st" --port "$port" --max-secs 300 >"$slog" 2>&1 &
    sp=$!
    for _ in $(seq 50); do grep -q LISTENING "$slog" && break; sleep 0.1; done
    echo ">> $st C=$c N=$n (server pid $sp)" >&2
    timeout 280 taskset -c 1 ./target/release/client --addr "127.0.0.1:$port" --pid "$sp" \
      --conns "$c" --n "$n" --size 100 --reps "$REPS" --ip-base "$ipb" --timeout 60 \
      >"$clog" 2>&1 || echo "client failed: see $clog" >&2
    grep '^rep\|^connected' "$clog" >&2 || true
    kill "$sp" 2>/dev/null || true
    wait "$sp" 2>/dev/null || true
    sleep 1
  done
done

echo "end:   $(date -Is) load: $(cat /proc/loadavg)" >> logs/load.log
cat logs/load.log >&2

python3 - "$STACKS" <<'PY' | tee logs/table.md
import re, statistics, sys, os
stacks = sys.argv[1].split()
def kv(path, prefix):
    out = []
    if not os.path.exists(path): return out
    for line in open(path):
        if line.startswith(prefix):
            out.append(dict(re.findall(r'(\w+)=(\S+)', line)))
    return out
def fan(st, c):
    r = kv(f'logs/{st}-c{c}.client.log', 'RESULT')
    e = kv(f'logs/{st}-c{c}.server.log', 'ENQUEUE')
    if not r: return None
    r = r[0]
    reps = sorted(int(k[1:].split('_')[0]) for k in r if re.match(r'r\d+_wall_s', k))
    got = sum(int(r[f'r{i}_got']) for i in reps)
    exp = sum(int(r[f'r{i}_expected']) for i in reps)
    cpu = sum(float(r[f'r{i}_server_cpu_s']) for i in reps)
    dps = statistics.median(float(r[f'r{i}_dps']) for i in reps) if reps else float('nan')
    enq = statistics.median(int(x['per_recipient_ns']) for x in e) if e else float('nan')
    drops = sum(int(x['drops']) for x in e)
    return dict(idle=float(r['kib_per_conn_idle']), after=float(r['kib_per_conn_after_fanout']),
                dps=dps, dpc=got / cpu if cpu > 0 else float('nan'), enq=enq, got=got, exp=exp,
                drops=drops, conn=f"{r['connected']}/{r['conns']}")
def f(x, fmt): return 'n/a' if x is None else fmt.format(x)
print('| stack | KiB/conn idle @1k | KiB/conn idle @10k | KiB/conn after fanout @1k / @10k | '
      'deliv/s @1k×200 | deliv/server-CPU-s @1k×200 | enqueue/recipient @1k×200 (N=200 sends) | '
      'deliv/s @10k×20 | deliv/server-CPU-s @10k×20 | enqueue/recipient @10k×20 (N=20 sends) | delivered/expected, drops |')
print('|' + '---|' * 11)
for st in stacks:
    a, b = fan(st, 1000), fan(st, 10000)
    g = lambda d, k, fmt: f(d[k] if d else None, fmt)
    comp = '; '.join(f"{d['got']}/{d['exp']}, {d['drops']}" for d in (a, b) if d)
    print(f"| {st} | {g(a,'idle','{:.1f}')} | {g(b,'idle','{:.1f}')} | {g(a,'after','{:.1f}')} / {g(b,'after','{:.1f}')} | "
          f"{g(a,'dps','{:,.0f}')} | {g(a,'dpc','{:,.0f}')} | {g(a,'enq','{:,.0f} ns')} | "
          f"{g(b,'dps','{:,.0f}')} | {g(b,'dpc','{:,.0f}')} | {g(b,'enq','{:,.0f} ns')} | {comp} |")
PY
