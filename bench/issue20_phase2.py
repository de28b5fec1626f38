#!/usr/bin/env python3
"""bench/profile-issue20-phase2.sh's outputs as tables: callgrind instructions per delivery and
perf stat writes / CPU per delivery, main ("base") against the branch ("new").
usage: issue20_phase2.py DIR"""
import glob
import json
import os
import re
import sys

d = sys.argv[1]


def received(path):
    return json.load(open(path))["steps"][-1]["received"]


print("| callgrind, 30 broadcasts to 1,000 members | base instr./delivery | new | new / base |")
print("|---|---|---|---|")
for k in (1, 5):
    per = {}
    for name in ("base", "new"):
        files = glob.glob(os.path.join(d, f"callgrind.out.{name}-k{k}.*.1"))
        if not files:
            continue
        total = next(int(l.split()[1]) for l in open(files[0]) if l.startswith("summary:"))
        per[name] = total / received(os.path.join(d, f"cg-{name}-k{k}.json"))
    if len(per) == 2:
        print(f"| {k} per publisher write | {per['base']:,.0f} | {per['new']:,.0f} | {per['new'] / per['base']:.3f} |")

print()
print("| perf stat, 1,000 members, 20 publisher writes/s | run | base sendto/delivery | new | new / base | base CPU µs/delivery | new | new / base |")
print("|---|---|---|---|---|---|---|---|")
for csv in sorted(glob.glob(os.path.join(d, "stat-base-*.csv"))):
    m = re.match(r"stat-base-k(\d+)(.*)\.csv", os.path.basename(csv))
    k, tag = m.group(1), m.group(2)
    row = {}
    for name in ("base", "new"):
        ev = {}
        path = os.path.join(d, f"stat-{name}-k{k}{tag}.csv")
        if not os.path.exists(path):
            continue
        for line in open(path):
            parts = line.strip().split(",")
            if len(parts) > 3 and not line.startswith("#"):
                try:
                    ev[parts[2]] = float(parts[0])
                except ValueError:
                    pass
        n = received(os.path.join(d, f"stat-{name}-k{k}{tag}.json"))
        row[name] = (ev.get("syscalls:sys_enter_sendto", 0) / n, ev.get("task-clock", 0) * 1000 / n)
    if len(row) == 2:
        (bw, bc), (nw, nc) = row["base"], row["new"]
        print(f"| {k} per write | {tag.lstrip('-') or 'r1'} | {bw:.3f} | {nw:.3f} | {nw / bw:.3f} | {bc:.2f} | {nc:.2f} | {nc / bc:.3f} |")
