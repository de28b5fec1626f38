#!/usr/bin/env bash
# RFC 6455 conformance: runs the Autobahn|Testsuite cases (via the PyPI package `kosoku`, which
# runs Autobahn's own 517 cases on Python 3) against `examples/autobahn_echo.rs`, an echo server
# on exactly Switchboard's WebSocket stack.
#
#   scripts/autobahn.sh           all 517 cases (9.* sends up to 16 MiB messages, 12.*/13.*
#                                 1000 compressed messages each of up to 128 KiB; a few minutes)
#   scripts/autobahn.sh --quick   all but 9.* (the performance cases), and of the compression
#                                 cases a sample (12.1, 13.1, 13.3 with a 9-bit window, 13.7
#                                 with several offers: messages of 16 B to 4 KiB, and 8 KiB
#                                 fragmented at 256 B), in seconds
#
# Prints one summary line (OK / NON-STRICT / INFORMATIONAL / UNIMPLEMENTED / FAILED counts) and
# exits non-zero if any case FAILED (or could not run). The Autobahn-format report (index.json,
# index.html) is left in target/autobahn/. The venv is .venv-autobahn/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
esac

venv=.venv-autobahn
kosoku_version=0.1.0
if [ ! -x "$venv/bin/kosoku" ]; then
  echo "autobahn: installing kosoku $kosoku_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kosoku==$kosoku_version"
fi

cargo build --quiet --release -p switchboard --example autobahn_echo
echo_bin="${CARGO_TARGET_DIR:-target}/release/examples/autobahn_echo"
outdir=target/autobahn
rm -rf "$outdir"
mkdir -p "$outdir"

# Port 0: the echo server picks a free port and prints `listening on ADDR` first.
server_log="$outdir/echo-server.log"
"$echo_bin" 127.0.0.1:0 >"$server_log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT

addr=""
for _ in $(seq 1 100); do # at most 10 s
  addr=$(sed -n 's/^listening on //p' "$server_log" | head -n 1)
  [ -n "$addr" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$server_log" >&2; exit 1; }
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "autobahn: the echo server did not start" >&2
  exit 1
fi

args=(--outdir "$outdir")
if [ "$quick" = 1 ]; then
  for group in 1 2 3 4 5 6 7 10; do
    args+=(--include "$group.*")
  done
  for group in 12.1 13.1 13.3 13.7; do
    for n in 1 2 3 4 5 11; do
      args+=(--include "$group.$n")
    done
  done
fi
start=$(date +%s.%N)
# kosoku exits 1 when a case fails; the summary below decides, from the report.
# Bounded: the full run takes well under a minute; 10 minutes means it hung.
set +e
timeout 600 "$venv/bin/kosoku" "${args[@]}" "$addr" >"$outdir/kosoku.log" 2>&1
kosoku_rc=$?
set -e
elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")

if [ ! -f "$outdir/index.json" ]; then
  echo "autobahn: kosoku wrote no report (exit $kosoku_rc):" >&2
  tail -n 20 "$outdir/kosoku.log" >&2
  exit 1
fi

python3 - "$outdir/index.json" "$elapsed" "$quick" <<'EOF'
import json, sys
from collections import Counter, defaultdict

path, elapsed, quick = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
index = json.load(open(path))
order = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
counts = Counter()
by_behavior = defaultdict(list)
def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))
for agent, cases in index.items():
    for case_id in sorted(cases, key=case_key):
        r = cases[case_id]
        behavior = r["behavior"]
        # A failed closing handshake fails the case too, as in Autobahn's own report.
        if behavior in ("OK", "NON-STRICT", "INFORMATIONAL") and r["behaviorClose"] in (
            "FAILED", "FAILED_BY_CLIENT", "UNCLEAN", "WRONG_CODE",
        ):
            behavior = "FAILED"
        if behavior not in order:  # ERROR: the case could not run
            behavior = "FAILED"
        counts[behavior] += 1
        by_behavior[behavior].append(case_id)
total = sum(counts.values())
for behavior in ["NON-STRICT", "INFORMATIONAL", "FAILED"]:
    if by_behavior[behavior]:
        print(f"  {behavior}: {' '.join(by_behavior[behavior])}")
unimpl = by_behavior["UNIMPLEMENTED"]
if unimpl:
    groups = sorted({".".join(c.split(".")[:1]) + ".*" for c in unimpl}, key=lambda g: int(g[:-2]))
    print(f"  UNIMPLEMENTED: {len(unimpl)} cases in {' '.join(groups)}")
summary = ", ".join(f"{counts[b]} {b}" for b in order)
label = "quick (all but 9.*, a sample of 12.*/13.*)" if quick else "full"
print(f"autobahn {label}: {total} cases: {summary} ({elapsed} s)")
sys.exit(1 if counts["FAILED"] else 0)
EOF
