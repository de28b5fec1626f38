#!/usr/bin/env python3
"""bench/profile-issue20.sh's `perf stat` runs as one table: per delivery (fan-out) or per
connect (connect storm), Switchboard against Bun. usage: perf_stat_table.py DIR"""
import json
import os
import sys

d = sys.argv[1]
rows = {}
for tag, unit in (("fanout10k", "delivery"), ("fanout1k", "delivery"), ("sparse1k", "delivery"), ("connect", "connect")):
    for s in ("switchboard", "bun"):
        path = os.path.join(d, f"stat-{s}-{tag}.csv")
        if not os.path.exists(path):
            continue
        ev = {}
        for line in open(path):
            parts = line.strip().split(",")
            if len(parts) > 3 and not line.startswith("#"):
                try:
                    ev[parts[2]] = float(parts[0])
                except ValueError:
                    pass
        res = json.load(open(os.path.join(d, f"{s}-stat-{tag}.json")))
        n = res["steps"][-1]["received"] if unit == "delivery" else res["connect"]["ok"]
        rows[(tag, s)] = (n, ev, unit)
names = [("task-clock", "server CPU µs", 1000.0), ("raw_syscalls:sys_enter", "syscalls", 1),
         ("syscalls:sys_enter_sendto", "sendto", 1), ("syscalls:sys_enter_writev", "writev", 1),
         ("syscalls:sys_enter_recvfrom", "recvfrom", 1), ("syscalls:sys_enter_epoll_wait", "epoll_wait", 1),
         ("syscalls:sys_enter_epoll_ctl", "epoll_ctl", 1), ("syscalls:sys_enter_futex", "futex", 1),
         ("syscalls:sys_enter_accept4", "accept4", 1), ("syscalls:sys_enter_setsockopt", "setsockopt", 1),
         ("context-switches", "context switches", 1)]
print("| case | server | count | " + " | ".join(f"{n} per unit" for _, n, _ in names) + " | CPU µs per write |")
print("|---|---|---|" + "---|" * (len(names) + 1))
for (tag, s), (n, ev, unit) in rows.items():
    cells = []
    for key, _, scale in names:
        v = ev.get(key)
        cells.append("-" if v is None else f"{v * scale / n:.3f}")
    writes = ev.get("syscalls:sys_enter_sendto", 0) + ev.get("syscalls:sys_enter_writev", 0)
    per_write = f"{ev.get('task-clock', 0) * 1000.0 / writes:.2f}" if writes and unit == "delivery" else ""
    print(f"| {tag} | {s} | {n:,} {unit}s | " + " | ".join(cells) + f" | {per_write} |")
