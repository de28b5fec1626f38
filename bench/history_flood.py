#!/usr/bin/env python3
"""History memory under a flood: RSS of a switchboard process before and after N backend
broadcasts of SIZE bytes spread over L empty lobbies (their histories keep the last
history.size each), compared with the bound: L x history.size x SIZE, and at most
history.max_bytes for the whole server.

usage: bench/history_flood.py [N] [L] [SIZE] [HISTORY_SIZE] [--hop] [--max-bytes B]
       (defaults 50000 20 1024 100)

  --hop          fill the lobbies one after the other (N / L broadcasts each, a client
                 hopping over fresh lobbies) instead of round-robin
  --max-bytes B  history.max_bytes for the server (its default otherwise: 64 MiB)

Starts target/release/switchboard itself on 127.0.0.1:0 in dev mode; stops it at the end.
Prints one JSON line: RSS before and after, peak RSS (VmHWM), the server's accounted
history bytes (/api/stats history_bytes, sampled during the flood: its maximum) and the bound.
"""
import argparse
import http.client
import json
import os
import subprocess

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# What the server counts per kept broadcast besides the frame (history::ENTRY_OVERHEAD).
ENTRY_OVERHEAD = 128


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("n", nargs="?", type=int, default=50000)
    p.add_argument("lobbies", nargs="?", type=int, default=20)
    p.add_argument("size", nargs="?", type=int, default=1024)
    p.add_argument("history", nargs="?", type=int, default=100)
    p.add_argument("--hop", action="store_true")
    p.add_argument("--max-bytes", type=int, default=None)
    a = p.parse_args()
    env = dict(os.environ, SWITCHBOARD_BIND="127.0.0.1:0", SWITCHBOARD_DEV_MODE="true", SWITCHBOARD_LOG__LEVEL="warn",
               SWITCHBOARD_HISTORY__SIZE=str(a.history), SWITCHBOARD_RATE__MESSAGES_PER_SEC="0")
    if a.max_bytes is not None:
        env["SWITCHBOARD_HISTORY__MAX_BYTES"] = str(a.max_bytes)
    max_bytes = DEFAULT_MAX_BYTES if a.max_bytes is None else a.max_bytes
    server = subprocess.Popen(["target/release/switchboard"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        addr = server.stdout.readline().strip().removeprefix("listening on ")
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)

        def history_bytes():
            conn.request("GET", "/api/stats")
            resp = conn.getresponse()
            return json.loads(resp.read()).get("history_bytes")

        payload = json.dumps({"data": "x" * a.size})
        per_lobby = max(1, a.n // a.lobbies)
        before = status_kib(server.pid, "VmRSS")
        peak_history = 0
        for i in range(a.n):
            lobby = i // per_lobby if a.hop else i % a.lobbies
            conn.request("POST", f"/api/lobbies/flood{lobby}/broadcast", body=payload,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            if i % 1000 == 999:
                peak_history = max(peak_history, history_bytes() or 0)
        after = status_kib(server.pid, "VmRSS")
        peak = status_kib(server.pid, "VmHWM")
        final_history = history_bytes()
        peak_history = max(peak_history, final_history or 0)
        lobbies_used = min(a.lobbies, -(-a.n // per_lobby)) if a.hop else min(a.lobbies, a.n)
        frame = a.size + 100
        rings_kib = lobbies_used * min(a.history, a.n // max(1, lobbies_used)) * (frame + ENTRY_OVERHEAD) // 1024
        print(json.dumps({"broadcasts": a.n, "lobbies": lobbies_used, "hop": a.hop, "payload_bytes": a.size,
                          "history_size": a.history, "history_max_bytes": max_bytes,
                          "offered_kib": a.n * frame // 1024,
                          "rss_before_kib": before, "rss_after_kib": after, "growth_kib": after - before,
                          "peak_rss_kib": peak, "peak_growth_kib": peak - before,
                          "history_bytes_max_seen": peak_history, "history_bytes_end": final_history,
                          "history_bound_kib": min(rings_kib, max_bytes // 1024)}))
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
