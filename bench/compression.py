#!/usr/bin/env python3
"""Prints issue 17's tables (Markdown) from bench/compression.sh's JSON lines.

usage: compression.py bench/results/raw/compression.jsonl

Cases: sb-z (Switchboard, the members offer permessage-deflate), sb (no offer), ws-z (the ws
peer with PER_MESSAGE_DEFLATE=1, the members offer it), ws (perMessageDeflate off, no offer).
"""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
runs = {(r.get("tag"), r.get("case")): r for r in rows}
CASES = [c for c in ["sb-z", "sb", "ws-z", "ws"] if any(k[1] == c for k in runs)]
NAMES = {"sb-z": "Switchboard, deflate", "sb": "Switchboard, plain",
         "ws-z": "ws, perMessageDeflate", "ws": "ws, plain"}


def run(tag, case):
    r = runs.get((tag, case))
    return None if not r or r.get("failed") else r


def f(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"


def ratio(a, b, d=2):
    return f"{a / b:.{d}f}x" if a and b else "-"


def neg(r):
    return f"{r.get('deflate_negotiated', 0)}" if r else "-"


out = []
# --- bytes on the wire ---------------------------------------------------------------------
for kind in ["chat", "padding"]:
    tag = f"bytes-{kind}"
    if not any(run(tag, c) for c in CASES):
        continue
    out.append(f"\n**Bytes on the wire per delivered message** (`--payload-kind {kind} --payload 1024`, "
               "1,000 members, 20 msg/s for 5 s)\n")
    out.append("| server | deflate negotiated (conns) | deliveries | bytes read by members | bytes per delivery | vs same server plain | load avg |")
    out.append("|---|---|---|---|---|---|---|")
    per = {}
    for c in CASES:
        r = run(tag, c)
        b = r and r.get("best") or (r and r["steps"][0] if r and r.get("steps") else None)
        per[c] = b and b.get("wire_bytes_per_delivery")
    for c in CASES:
        r = run(tag, c)
        b = r and (r.get("best") or (r["steps"][0] if r.get("steps") else None))
        plain = per.get(c.removesuffix("-z"))
        out.append(f"| {NAMES[c]} | {neg(r)} | {f(b and b.get('received'))} | {f(b and b.get('member_bytes_read'))} "
                   f"| {f(per[c], 1)} | {ratio(per[c], plain) if c.endswith('-z') else '1.00x'} | {r and r.get('load_avg') or '-'} |")
    if per.get("sb-z") and per.get("ws-z"):
        out.append(f"\nSwitchboard / ws, both compressing: {ratio(per['sb-z'], per['ws-z'], 3)} the bytes.")

# --- fan-out per server CPU-second ---------------------------------------------------------
for m in [1000, 10000]:
    tag = f"sweep-m{m}"
    if not any(run(tag, c) for c in CASES):
        continue
    out.append(f"\n**Fan-out, {m:,} members, chat payload (~1 KiB)**: deliveries per server CPU-second "
               "(server CPU us per delivery) at each offered rate; `*` = the step failed (loss, a closed "
               "member or p99 >= 1 s; the sweep stops there)\n")
    rates = sorted({s["rate"] for c in CASES if run(tag, c) for s in run(tag, c)["steps"] if "rate" in s})
    out.append("| offered deliveries/s | " + " | ".join(NAMES[c] for c in CASES) + " | SB deflate / ws deflate |")
    out.append("|---|" + "---|" * (len(CASES) + 1))
    for rate in rates:
        cells, per = [], {}
        for c in CASES:
            r = run(tag, c)
            s = next((s for s in (r["steps"] if r else []) if s.get("rate") == rate), None)
            if not s:
                cells.append("-")
                continue
            per[c] = s.get("deliveries_per_server_cpu_s")
            mark = "" if s.get("pass") else "*"
            cells.append(f"{f(per[c])} ({f(s.get('server_cpu_us_per_delivery'), 2)} us){mark}")
        out.append(f"| {f(rate * m)} | " + " | ".join(cells) + f" | {ratio(per.get('sb-z'), per.get('ws-z'))} |")
    cells = []
    for c in CASES:
        r = run(tag, c)
        if r and r.get("rss_kib_end") and r.get("rss_kib_before"):
            cells.append(f"{(r['rss_kib_end'] - r['rss_kib_before']) / m:,.1f}")
        else:
            cells.append("-")
    out.append("| server RSS growth per member over the run, KiB | " + " | ".join(cells) + " | |")
    out.append("| wire bytes per delivery (first step) | " + " | ".join(
        f(run(tag, c) and run(tag, c)["steps"] and run(tag, c)["steps"][0].get("wire_bytes_per_delivery"), 1)
        for c in CASES) + " | |")
    out.append("| load average at start | " + " | ".join((run(tag, c) or {}).get("load_avg", "-") for c in CASES) + " | |")

# --- idle memory ---------------------------------------------------------------------------
tags = [t for t in ["n10000", "n19000"] if any(run(t, c) for c in CASES)]
if tags:
    out.append("\n**Idle memory per connection** (server RSS growth / connections: connected, and after a 5 s hold)\n")
    out.append("| connections | " + " | ".join(NAMES[c] for c in CASES) + " |")
    out.append("|---|" + "---|" * len(CASES))
    for t in tags:
        cells = []
        for c in CASES:
            r = run(t, c)
            if not r:
                cells.append("-")
                continue
            cells.append(f"{f(r.get('rss_kib_per_conn'), 2)} / {f(r.get('rss_kib_per_conn_end'), 2)} KiB "
                         f"({f(r['connect'].get('ok'))} open, {neg(r)} deflate; load {r.get('load_avg')})")
        out.append(f"| {t[1:]} | " + " | ".join(cells) + " |")
print("\n".join(out))
