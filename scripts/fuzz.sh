#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (default 60 s).
#
#   scripts/fuzz.sh [SECONDS]
#
# Targets: client_frame (the inbound client-frame parser), ids (lobby code / user id
# parsers) and ws_frames (the WebSocket frame decoder, whole against split). Each starts from
# the seed corpus kept in the repo (fuzz/corpus/TARGET, read only) plus what earlier runs found (fuzz/target/corpus/TARGET, gitignored, where new inputs go).
# A crash stops the run with the input saved under fuzz/artifacts/TARGET/ and a non-zero exit;
# reproduce it with `cargo fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/crash-...`.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and no
# sanitizer is used (the code under test is safe Rust: #![forbid(unsafe_code)]); libFuzzer's
# coverage guidance and the targets' assertions do the work.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi

export RUSTC_BOOTSTRAP=1
cd fuzz
targets=$(cargo fuzz list)
for target in $targets; do
  work="target/corpus/$target"
  mkdir -p "$work" "artifacts/$target"
  dict=()
  if [ -f "$target.dict" ]; then
    dict=("-dict=$target.dict")
  fi
  echo "fuzz: $target for ${seconds}s" >&2
  log="target/fuzz-$target.log"
  set +e
  # -max_total_time bounds libFuzzer; timeout is the backstop (build time included).
  timeout $((seconds + 600)) cargo fuzz run --release --sanitizer none "$target" \
    "$work" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    "${dict[@]}" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
  corpus=$(find "$work" -type f | wc -l)
  seeds=$(find "corpus/$target" -type f | wc -l)
  if [ "$rc" != 0 ]; then
    tail -n 40 "$log" >&2
    echo "fuzz: $target FAILED (exit $rc); inputs in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "fuzz $target: ${seconds} s, ${runs:-?} executions, coverage ${cov:-?}," \
    "corpus ${corpus} found + ${seeds} seeds, 0 crashes"
done
