#!/usr/bin/env python3
"""Issue 20's figures over several runs of bench/issue20.sh, one cell per figure holding every
run's value ("run 1 / run 2 / ..."), with each run's Switchboard / Bun ratio.

usage: issue20_runs.py RUN1.jsonl RUN2.jsonl ...
"""
import json
import math
import sys

runs = []
for path in sys.argv[1:]:
    d = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            d[(r.get("tag"), r.get("server"))] = r
    runs.append(d)


def g(d, tag, server, *path):
    v = d.get((tag, server))
    if not v or v.get("failed"):
        return None
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return v


def cell(vals, fmt):
    return " / ".join("-" if v is None else fmt(v) for v in vals)


def ratio(a, b):
    return [None if x is None or y is None or y == 0 else x / y for x, y in zip(a, b)]


def row(name, sb, bun, fmt, ws=None, invert=False):
    r = ratio(sb, bun)
    print(f"| {name} | {cell(sb, fmt)} | {cell(bun, fmt)} | {cell(r, lambda x: f'{x:.2f}x')} |"
          + (f" {cell(ws, fmt)} |" if ws is not None else " |"))


k = lambda x: f"{x:,.0f}"
print("| figure (runs 1 / 2 / 3) | Switchboard | Bun | Switchboard / Bun | ws |")
print("|---|---|---|---|---|")
load = [g(d, "n10000", "switchboard", "load_avg") for d in runs]
for tag, label in (("n10000", "10k"), ("n19000", "19k")):
    f = lambda s: [g(d, tag, s, "rss_kib_per_conn") for d in runs]
    row(f"RSS KiB per idle connection, {label}, health on", f("switchboard"), f("bun"), lambda x: f"{x:.2f}", f("ws"))
for tags, label in ((("n10000", "n10000b"), "10k (each run: the idle case, then a second 10k case)"), (("n19000",), "19k")):
    f = lambda s: [g(d, t, s, "connect", "per_sec") for d in runs for t in tags]
    row(f"connects/s, {label}", f("switchboard"), f("bun"), k, f("ws") if len(tags) == 1 else None)
for m in (1000, 10000):
    f = lambda s: [g(d, f"m{m}", s, "best", "deliveries_per_sec") for d in runs]
    row(f"fan-out {m:,} members: highest sustained deliveries/s", f("switchboard"), f("bun"), k, f("ws"))
    gms = []
    for d in runs:
        a = {round(st["rate"], 3): st for st in (g(d, f"m{m}", "switchboard", "steps") or [])}
        b = {round(st["rate"], 3): st for st in (g(d, f"m{m}", "bun", "steps") or [])}
        xs = [a[r]["deliveries_per_server_cpu_s"] / b[r]["deliveries_per_server_cpu_s"] for r in sorted(set(a) & set(b))
              if a[r].get("deliveries_per_server_cpu_s") and b[r].get("deliveries_per_server_cpu_s")]
        gms.append(math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None)
    print(f"| fan-out {m:,}: deliveries per server CPU-s at the same offered rates (0.1-1.7 M/s, geometric mean) | | | {cell(gms, lambda x: f'{x:.2f}x')} | |")
for m in (1000, 10000):
    f = lambda s: [(lambda u: None if u is None else u * 76000 / 1e4)(g(d, f"r76k-m{m}", s, "best", "server_cpu_us_per_delivery")) for d in runs]
    row(f"server CPU at 76k deliveries/s, {m:,} members (% of a core)", f("switchboard"), f("bun"), lambda x: f"{x:.0f} %", f("ws"))
f = lambda s: [g(d, "c100000", s, "cycles_per_sec") for d in runs]
row("connect/close cycles/s", f("switchboard"), f("bun"), k, f("ws"))
f = lambda s: [g(d, "c100000", s, "server_cpu_us_per_cycle") for d in runs]
row("server µs per connect/close cycle", f("switchboard"), f("bun"), lambda x: f"{x:.1f}", f("ws"))
print()
print("load average at each run's first case: " + " / ".join("-" if x is None else f"{x:.2f}" for x in load))
