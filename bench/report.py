#!/usr/bin/env python3
"""Writes bench/results/REPORT.md and its SVG charts from the JSON lines bench/run.sh collected.

Plain Python, no plotting library: the charts are SVG written by hand.
usage: report.py --results FILE.jsonl --machine FILE.txt --env FILE --out DIR [--suffix S] [--command C]
       report.py --overload bench/results/raw/overload.jsonl --out DIR   (the overload curve's chart)
"""

import argparse
import json
import math
import os

SERVERS = ["switchboard", "switchboard-events", "ws", "bun", "fastapi"]
COLORS = {"switchboard-cluster": "#9467bd", "switchboard": "#d62728", "switchboard-events": "#ff9896", "ws": "#1f77b4", "bun": "#ff7f0e", "fastapi": "#2ca02c"}
NAMES = {"switchboard-cluster": "Switchboard, 2 nodes + Redis", "switchboard": "Switchboard", "switchboard-events": "Switchboard, join events on",
         "ws": "ws (Node)", "bun": "Bun (uWebSockets)", "fastapi": "FastAPI (seed)"}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if digits == 0:
            return f"{v:,.0f}"
        return f"{v:,.{digits}f}"
    return str(v)


def ratio(a, b, invert=False):
    """a/b (or b/a), as '3.2x'."""
    if a is None or b is None or a == 0 or b == 0:
        return "n/a"
    r = (b / a) if invert else (a / b)
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def by(rows, scenario):
    out = {}
    for r in rows:
        if r.get("scenario") == scenario:
            out.setdefault(r.get("tag"), {})[r.get("server")] = r
    return out


def table(headers, body):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- SVG helpers


class Chart:
    """One panel: axes (linear or log), series of points, a legend."""

    def __init__(self, x0, y0, w, h, xlog, ylog, xr, yr, xlabel, ylabel, title):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.xlog, self.ylog = xlog, ylog
        self.xr, self.yr = xr, yr
        self.parts = []
        self.xlabel, self.ylabel, self.title = xlabel, ylabel, title

    def _t(self, v, r, log):
        lo, hi = r
        if log:
            v, lo, hi = math.log10(max(v, 1e-9)), math.log10(lo), math.log10(hi)
        return (v - lo) / (hi - lo) if hi > lo else 0.5

    def px(self, x, y):
        return (self.x0 + self._t(x, self.xr, self.xlog) * self.w,
                self.y0 + self.h - self._t(y, self.yr, self.ylog) * self.h)

    def ticks(self, r, log):
        lo, hi = r
        if log:
            return [10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                    if lo <= 10 ** e <= hi]
        step = 10 ** math.floor(math.log10((hi - lo) / 4 or 1))
        for m in (1, 2, 5, 10):
            if (hi - lo) / (step * m) <= 6:
                step *= m
                break
        start = math.ceil(lo / step) * step
        return [start + i * step for i in range(int((hi - start) / step) + 1)]

    def axes(self):
        p = self.parts
        p.append(f'<rect x="{self.x0}" y="{self.y0}" width="{self.w}" height="{self.h}" fill="none" stroke="#888"/>')
        for t in self.ticks(self.xr, self.xlog):
            x, _ = self.px(t, self.yr[0])
            p.append(f'<line x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y0 + self.h}" stroke="#eee"/>')
            p.append(f'<text x="{x:.1f}" y="{self.y0 + self.h + 16}" font-size="11" text-anchor="middle">{short(t)}</text>')
        for t in self.ticks(self.yr, self.ylog):
            _, y = self.px(self.xr[0], t)
            p.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + self.w}" y2="{y:.1f}" stroke="#eee"/>')
            p.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{short(t)}</text>')
        p.append(f'<text x="{self.x0 + self.w / 2}" y="{self.y0 + self.h + 34}" font-size="12" text-anchor="middle">{self.xlabel}</text>')
        p.append(f'<text transform="translate({self.x0 - 48},{self.y0 + self.h / 2}) rotate(-90)" font-size="12" text-anchor="middle">{self.ylabel}</text>')
        p.append(f'<text x="{self.x0 + self.w / 2}" y="{self.y0 - 10}" font-size="13" font-weight="bold" text-anchor="middle">{self.title}</text>')

    def line(self, pts, color):
        if len(pts) > 1:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in (self.px(a, b) for a, b, _ in pts))
            self.parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        for a, b, ok in pts:
            x, y = self.px(a, b)
            fill = color if ok else "white"
            self.parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" stroke="{color}" stroke-width="2"/>')

    def hline(self, v, label):
        _, y = self.px(self.xr[0], v)
        self.parts.append(f'<line x1="{self.x0}" y1="{y:.1f}" x2="{self.x0 + self.w}" y2="{y:.1f}" stroke="#999" stroke-dasharray="4,3"/>')
        self.parts.append(f'<text x="{self.x0 + self.w - 4}" y="{y - 4:.1f}" font-size="10" text-anchor="end" fill="#666">{label}</text>')


def short(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    if v >= 1 or v == 0:
        return f"{v:g}"
    return f"{v:g}"


def svg(width, height, parts, legend, note=""):
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    out += parts
    x = 70
    for name in legend:
        out.append(f'<rect x="{x}" y="{height - 22}" width="14" height="4" fill="{COLORS[name]}"/>')
        out.append(f'<text x="{x + 20}" y="{height - 16}" font-size="12">{NAMES[name]}</text>')
        x += 150
    if note:
        out.append(f'<text x="{x + 10}" y="{height - 16}" font-size="11" fill="#666">{note.replace("<", "&lt;")}</text>')
    out.append("</svg>")
    return "\n".join(out)


def fanout_chart(members, runs, path):
    series = {}
    for s, r in runs.items():
        pts = []
        for st in r.get("steps", []):
            offered = st["rate"] * st["members"]
            pts.append((offered, max(st["deliveries_per_sec"], 1), max(st["latency"]["p99_ms"], 0.01), st["pass"]))
        if pts:
            series[s] = sorted(pts)
    if not series:
        return False
    xs = [p[0] for v in series.values() for p in v]
    ys = [p[1] for v in series.values() for p in v]
    ls = [p[2] for v in series.values() for p in v]
    xr = (10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs))))
    yr = (10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(max(ys), xr[1]))))
    lr = (10 ** math.floor(math.log10(min(ls))), 10 ** math.ceil(math.log10(max(max(ls), 1000) * 1.01)))
    a = Chart(80, 40, 360, 280, True, True, xr, yr, "offered deliveries/s (rate x members)", "delivered/s", f"Fan-out to {members:,} members: delivered")
    b = Chart(560, 40, 360, 280, True, True, xr, lr, "offered deliveries/s (rate x members)", "p99 latency (ms)", f"Fan-out to {members:,} members: p99 latency")
    a.axes()
    b.axes()
    a.line([(xr[0], xr[0], True), (xr[1], xr[1], True)], "#ccc")
    b.hline(1000, "p99 limit 1 s")
    for s in SERVERS:
        if s in series:
            a.line([(x, y, ok) for x, y, _, ok in series[s]], COLORS[s])
            b.line([(x, l, ok) for x, _, l, ok in series[s]], COLORS[s])
    with open(path, "w") as f:
        f.write(svg(960, 400, a.parts + b.parts, [s for s in SERVERS if s in series], "filled: nothing lost and p99 < 1 s; hollow: failed"))
    return True


def overload_chart(rows, path):
    """`fanout --past-saturation` runs (bench/overload.sh): delivered, p99 and the server's RSS
    against the offered rate, one series per server."""
    series = {}
    for r in rows:
        if not r.get("past_saturation"):
            continue
        pts = []
        for st in r.get("steps", []):
            if "error" in st:
                continue
            pts.append((st["rate"], max(st["deliveries_per_sec"], 1), max(st["latency"]["p99_ms"], 0.01),
                        max((st.get("server_rss_kib_max") or 1) / 1024, 1), st["pass"]))
        if pts:
            series[r["server"]] = sorted(pts)
    if not series:
        return False
    xs = [p[0] for v in series.values() for p in v]
    xr = (10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs))))
    def rng(i, floor=None):
        v = [p[i] for s in series.values() for p in s] + ([floor] if floor else [])
        return (10 ** math.floor(math.log10(min(v))), 10 ** math.ceil(math.log10(max(v) * 1.01)))
    members = next(r["members"] for r in rows if r.get("past_saturation"))
    x = "offered msg/s"
    a = Chart(80, 40, 300, 260, True, True, xr, rng(1), x, "delivered/s", f"Past saturation, {members:,} members")
    b = Chart(470, 40, 300, 260, True, True, xr, rng(2, 1000), x, "p99 latency (ms)", "p99 of what was delivered")
    c = Chart(860, 40, 300, 260, True, True, xr, rng(3), x, "server RSS (MiB)", "server memory (max in step)")
    for ch in (a, b, c):
        ch.axes()
    b.hline(1000, "1 s")
    for s in ["switchboard", "switchboard-cluster", "ws"]:
        if s in series:
            a.line([(x, y, ok) for x, y, _, _, ok in series[s]], COLORS[s])
            b.line([(x, l, ok) for x, _, l, _, ok in series[s]], COLORS[s])
            c.line([(x, m, ok) for x, _, _, m, ok in series[s]], COLORS[s])
    with open(path, "w") as f:
        f.write(svg(1200, 380, a.parts + b.parts + c.parts, [s for s in ["switchboard", "switchboard-cluster", "ws"] if s in series],
                    "filled: everything offered delivered, p99 < 1 s; hollow: not"))
    return True


def rss_chart(idle, path):
    series = {}
    for tag, runs in idle.items():
        for s, r in runs.items():
            if r.get("rss_kib_per_conn") is not None:
                series.setdefault(s, []).append((r["conns"], r["rss_kib_per_conn"], True))
    if not series:
        return False
    xs = [p[0] for v in series.values() for p in v]
    ys = [p[1] for v in series.values() for p in v]
    a = Chart(80, 40, 560, 300, False, False, (0, max(xs) * 1.05), (0, max(ys) * 1.15), "idle connections", "server RSS per connection (KiB)", "Server memory per idle connection (health checks on)")
    a.axes()
    a.hline(2, "target: 2 KiB")
    for s in SERVERS:
        if s in series:
            a.line(sorted(series[s]), COLORS[s])
    with open(path, "w") as f:
        f.write(svg(700, 420, a.parts, [s for s in SERVERS if s in series]))
    return True


# ---------------------------------------------------------------------------- the report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--overload", help="only draw OUT/overload.svg from bench/overload.sh's JSON lines")
    ap.add_argument("--results", required=False)
    ap.add_argument("--machine", required=False)
    ap.add_argument("--env", required=False)
    ap.add_argument("--out", required=True)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--command", default="bench/run.sh")
    a = ap.parse_args()
    if a.overload:
        os.makedirs(a.out, exist_ok=True)
        drawn = overload_chart(load(a.overload), os.path.join(a.out, "overload.svg"))
        print(os.path.join(a.out, "overload.svg") if drawn else "no --past-saturation run found")
        return
    if not (a.results and a.machine and a.env):
        ap.error("--results, --machine and --env are required (without --overload)")
    rows = load(a.results)
    sfx = a.suffix
    os.makedirs(a.out, exist_ok=True)
    md = [f"# Switchboard benchmark report{' (quick run)' if sfx else ''}", ""]
    md += ["Generated by `bench/report.py` from `" + os.path.relpath(a.results, a.out) + "`.", ""]
    md += ["## Command", "", "```sh", a.command, "```", ""]
    md += ["## Machine", "", "```", open(a.machine).read().strip(), "```", ""]
    md += ["Switchboard's effective settings (bench/switchboard.env; the idle and fan-out cases add "
           "`SWITCHBOARD_PRESENCE__EVENTS=false`, because the peers send no join/leave events, except "
           "the idle rows \"join events on\"; the stale cases set the ping interval):", "", "```",
           open(a.env).read().strip(), "```", ""]
    md += ["Each case starts a fresh server pinned to CPU 0 (`taskset -c 0`); the load generator "
           "(`target/release/switchboard-bench`, one thread) runs on CPU 1. Ratios compare "
           "Switchboard with each peer in the same run (higher is better for Switchboard).", ""]

    failed = [r for r in rows if r.get("failed")]
    if failed:
        md += ["**Failed cases:** " + ", ".join(f"{r['server']} {r['scenario']} {r['tag']}" for r in failed), ""]

    # idle
    idle = by(rows, "idle")
    md += ["## Idle connections", "",
           "N connections, 100 per lobby, answering pings; RSS per connection = (RSS after connecting "
           "- RSS before) / N, 3 s after the last connect. Idle CPU is measured over one 20 s ping "
           "interval and extrapolated to 100,000 connections.", ""]
    body = []
    for tag in sorted(idle, key=lambda t: int(t[1:])):
        runs = idle[tag]
        sb = runs.get("switchboard", {})
        for s in SERVERS:
            r = runs.get(s)
            if not r or r.get("failed"):
                continue
            c = r["connect"]
            body.append([f"{r['conns']:,}", NAMES[s], fmt(c["ok"]), fmt(c["errors"]), fmt(c["per_sec"]),
                         fmt(c["handshake"]["p99_ms"], 1), fmt(r["rss_kib_per_conn"], 2), fmt(r["rss_kib_per_conn_end"], 2),
                         fmt(r["server_cores_per_100k_idle"], 3), fmt(r["server_pings_in_hold"]),
                         "" if s.startswith("switchboard") else ratio(sb.get("rss_kib_per_conn"), r.get("rss_kib_per_conn"), invert=True),
                         "" if s.startswith("switchboard") else ratio(sb.get("connect", {}).get("per_sec"), c["per_sec"])])
    md += [table(["conns", "server", "connected", "errors", "connects/s", "handshake p99 ms", "KiB/conn",
                  "KiB/conn after hold", "cores per 100k idle", "protocol pings seen", "memory: peer/SB",
                  "connects/s: SB/peer"], body), ""]
    if rss_chart(idle, os.path.join(a.out, f"rss{sfx}.svg")):
        md += [f"![RSS per connection](rss{sfx}.svg)", ""]

    # fanout
    fan = by(rows, "fanout")
    md += ["## Fan-out", "",
           "M members in one lobby, one publisher sending 100-byte `broadcast` frames (`exclude_self`), "
           "the rate doubled step by step, then bisected twice; a step passes when every member "
           "received every message and p99 < 1 s. `best` is the highest passing step. CPU is the "
           "server's utime+stime over the step (10 ms ticks).", ""]
    for tag in sorted(fan, key=lambda t: int(t[1:])):
        runs = fan[tag]
        members = next(iter(runs.values())).get("members")
        sb_best = (runs.get("switchboard") or {}).get("best") or {}
        body = []
        for s in SERVERS:
            r = runs.get(s)
            if not r or r.get("failed"):
                continue
            b = r.get("best") or {}
            body.append([NAMES[s], fmt(b.get("rate"), 1), fmt(b.get("deliveries_per_sec")),
                         fmt((b.get("latency") or {}).get("p50_ms"), 1), fmt((b.get("latency") or {}).get("p99_ms"), 1),
                         fmt((b.get("latency") or {}).get("p999_ms"), 1), fmt((b.get("latency") or {}).get("max_ms"), 1),
                         fmt(b.get("deliveries_per_server_cpu_s")), fmt(b.get("server_cpu_us_per_delivery"), 2),
                         fmt(b.get("client_cpu_s"), 2) + " / " + fmt(b.get("server_cpu_s"), 2),
                         "" if s == "switchboard" else ratio(sb_best.get("deliveries_per_sec"), b.get("deliveries_per_sec")),
                         "" if s == "switchboard" else ratio(sb_best.get("deliveries_per_server_cpu_s"), b.get("deliveries_per_server_cpu_s"))])
        md += [f"### {members:,} members", "",
               table(["server", "best rate msg/s", "deliveries/s", "p50 ms", "p99 ms", "p999 ms", "max ms",
                      "deliveries per server CPU-s", "server µs/delivery", "CPU s client / server",
                      "deliveries/s: SB/peer", "per CPU-s: SB/peer"], body), ""]
        if fanout_chart(members, {s: r for s, r in runs.items() if not r.get("failed")}, os.path.join(a.out, f"fanout-{members}{sfx}.svg")):
            md += [f"![fan-out {members}](fanout-{members}{sfx}.svg)", ""]
        md += ["<details><summary>every step</summary>", ""]
        steps = []
        for s in SERVERS:
            r = runs.get(s)
            for st in (r or {}).get("steps", []):
                steps.append([NAMES[s], fmt(st["rate"], 2), fmt(st["sent"]), fmt(st["received"]), fmt(st["lost"]),
                              fmt(st["members_closed"]), fmt(st["deliveries_per_sec"]), fmt(st["latency"]["p99_ms"], 1),
                              fmt(st["deliveries_per_server_cpu_s"]), fmt(st["pass"])])
        md += [table(["server", "rate", "sent", "received", "lost", "members closed", "deliveries/s", "p99 ms",
                      "per server CPU-s", "pass"], steps), "", "</details>", ""]

    # churn
    churn = by(rows, "churn")
    md += ["## Churn", "",
           "32 workers each loop: connect, wait for `welcome`, close 1000, wait for the server's close. "
           "RSS and open files after a warm-up, then after the cycles and 3 s of quiet.", ""]
    body = []
    for tag, runs in churn.items():
        sb = runs.get("switchboard", {})
        for s in SERVERS:
            r = runs.get(s)
            if not r or r.get("failed"):
                continue
            body.append([NAMES[s], fmt(r["cycles_ok"]), fmt(r["errors"]), fmt(r["secs"], 1), fmt(r["cycles_per_sec"]),
                         fmt(r["cycle_latency"]["p50_ms"], 1), fmt(r["cycle_latency"]["p99_ms"], 1),
                         fmt(r["server_cpu_us_per_cycle"], 1), fmt(r["rss_kib_after_warmup"]), fmt(r["rss_kib_end"]),
                         fmt(r["rss_end_over_warmup"], 3), f"{fmt(r['fds_after_warmup'])} -> {fmt(r['fds_end'])}",
                         "" if s == "switchboard" else ratio(sb.get("cycles_per_sec"), r["cycles_per_sec"])])
    md += [table(["server", "cycles", "errors", "secs", "cycles/s", "cycle p50 ms", "cycle p99 ms", "server µs/cycle",
                  "RSS KiB after warm-up", "RSS KiB end", "end / warm-up", "open files", "cycles/s: SB/peer"], body), ""]

    # stale
    stale = by(rows, "stale")
    md += ["## Stale (frozen) clients", "",
           "K frozen clients (they stop reading after `welcome` and never send FIN) among H healthy "
           "members while a publisher floods the lobby with 1,000-byte messages at 50/s. Removal is "
           "observed through the server's open files (/proc/PID/fd): the server has no stats API yet "
           "(issue 3; `--stats-url` is ready for it). Times count from the moment the frozen clients "
           "finished connecting (their last traffic).", ""]
    body = []
    for tag, runs in stale.items():
        for s in SERVERS:
            r = runs.get(s)
            if not r or r.get("failed"):
                continue
            body.append([NAMES[s], f"{r['frozen']} / {r['healthy']}", f"{fmt(r['frozen_removed'])}",
                         fmt(r["first_removed_secs"], 1), fmt(r["all_removed_secs"], 1), fmt(r["expect_within_secs"]),
                         fmt(r["healthy_dropped"]), fmt(r["healthy_lost"]), fmt(r["publisher_blocked"]),
                         fmt(r["healthy_latency"]["p99_ms"], 1), f"{fmt(r['rss_kib_before_flood'])} / {fmt(r['rss_kib_max'])} / {fmt(r['rss_kib_end'])}"])
    md += [table(["server", "frozen / healthy", "frozen removed", "first removed s", "all removed s",
                  "Switchboard's bound s", "healthy dropped", "healthy messages lost", "publisher blocked",
                  "healthy p99 ms", "RSS KiB before / max / end"], body), ""]
    path = os.path.join(a.out, f"REPORT{sfx}.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    print(path)


if __name__ == "__main__":
    main()
