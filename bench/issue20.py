#!/usr/bin/env python3
"""Prints issue 20's side-by-side table (Markdown) from bench/issue20.sh's JSON lines.

usage: issue20.py bench/results/raw/issue20.jsonl
"""

import json
import math
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
runs = {}
for r in rows:
    runs[(r.get("tag"), r.get("server"))] = r
servers = [s for s in ["switchboard", "bun", "ws"] if any(k[1] == s for k in runs)]
ref = "bun" if "bun" in servers else None


def get(tag, server, *path):
    v = runs.get((tag, server))
    if not v or v.get("failed"):
        return None
    for p in path:
        if v is None:
            return None
        v = v.get(p) if isinstance(v, dict) else None
    return v


def f(v, d=0, unit=""):
    if v is None:
        return "-"
    return f"{v:,.{d}f}{unit}"


def load(tag, server):
    return get(tag, server, "load_avg")


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


lines = ["| figure | " + " | ".join(servers) + (" | SB / Bun |" if ref else " |"),
         "|---|" + "---|" * (len(servers) + (1 if ref else 0))]


def row(name, vals, r=None):
    cells = [name] + vals + ([r or "-"] if ref else [])
    lines.append("| " + " | ".join(cells) + " |")


for tag, label in [("n10000", "10k"), ("n19000", "19k")]:
    vals = [f(get(tag, s, "rss_kib_per_conn"), 2) + " / " + f(get(tag, s, "rss_kib_per_conn_end"), 2) for s in servers]
    row(f"RSS KiB per idle conn, {label}, health on (connected / after 20 s hold)", vals,
        ratio(get(tag, "switchboard", "rss_kib_per_conn"), get(tag, "bun", "rss_kib_per_conn")))
    vals = [f(get(tag, s, "server_cores_per_100k_idle"), 3) for s in servers]
    row(f"cores per 100k idle, {label}", vals)
for tags, label in [(("n10000", "n10000b"), "10k"), (("n19000",), "19k")]:
    vals, firsts = [], {}
    for s in servers:
        xs = [get(t, s, "connect", "per_sec") for t in tags]
        xs = [x for x in xs if x is not None]
        firsts[s] = sum(xs) / len(xs) if xs else None
        vals.append(", ".join(f(x) for x in xs) + f" (load {', '.join(f(load(t, s), 2) for t in tags)})")
    row(f"connects/s, {label}", vals, ratio(firsts.get("switchboard"), firsts.get("bun")))
for m in (1000, 10000):
    tag = f"m{m}"
    vals = [f(get(tag, s, "best", "deliveries_per_sec")) + f" (load {f(load(tag, s), 2)})" for s in servers]
    row(f"fan-out {m:,} members: highest sustained deliveries/s", vals,
        ratio(get(tag, "switchboard", "best", "deliveries_per_sec"), get(tag, "bun", "best", "deliveries_per_sec")))
    # deliveries per server CPU-second at the same offered rates (steps both ran)
    steps = {s: {round(st["rate"], 3): st for st in (get(tag, s, "steps") or [])} for s in servers}
    if ref:
        common = sorted(set(steps["switchboard"]) & set(steps["bun"]))
        rs = []
        for rate in common:
            a = steps["switchboard"][rate].get("deliveries_per_server_cpu_s")
            b = steps["bun"][rate].get("deliveries_per_server_cpu_s")
            if a and b:
                rs.append((rate * m, a / b, a, b))
        if rs:
            gm = math.exp(sum(math.log(x[1]) for x in rs) / len(rs))
            detail = "; ".join(f"{x[0] / 1e6:.2f}M: {x[1]:.2f}" for x in rs)
            row(f"fan-out {m:,}: deliveries per server CPU-s, SB / Bun at the same offered rates (geo mean of {len(rs)})",
                [f"{gm:.2f}x" if s == "switchboard" else "" for s in servers], f"{gm:.2f}x ({detail})")
for m in (1000, 10000):
    tag = f"r76k-m{m}"
    cpu = {s: get(tag, s, "best", "server_cpu_us_per_delivery") for s in servers}
    vals = []
    for s in servers:
        us = cpu[s]
        lost = get(tag, s, "best", "lost")
        vals.append("-" if us is None else f"{us * 76000 / 1e4:.0f} % ({us:.2f} µs/delivery, lost {lost}, load {f(load(tag, s), 2)})")
    row(f"server CPU at 76k deliveries/s, {m:,} members", vals, ratio(cpu.get("switchboard"), cpu.get("bun")))
vals = [f(get("c100000", s, "cycles_per_sec")) + f" ({f(get('c100000', s, 'server_cpu_us_per_cycle'), 1)} µs/cycle, load {f(load('c100000', s), 2)})" for s in servers]
row("connect/close cycles/s (server µs per cycle)", vals,
    ratio(get("c100000", "switchboard", "cycles_per_sec"), get("c100000", "bun", "cycles_per_sec")))
print("\n".join(lines))

print()
for m in (1000, 10000):
    tag = f"m{m}"
    print(f"fan-out {m:,} members, every step: rate msg/s -> deliveries/s, per server CPU-s, p99 ms, pass")
    for s in servers:
        pts = [f"{st['rate']:g}: {st['deliveries_per_sec']:,.0f}, {st.get('deliveries_per_server_cpu_s') or 0:,.0f}, "
               f"{st['latency']['p99_ms']:.0f}, {'ok' if st['pass'] else 'FAIL'}" for st in (get(tag, s, "steps") or [])]
        print(f"  {s}: " + " | ".join(pts))
