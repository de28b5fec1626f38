#!/usr/bin/env python3
"""History memory under a flood: RSS of a switchboard process before and after N backend
broadcasts of SIZE bytes spread over L empty lobbies (their histories keep the last
history.size each), compared with the bound L x history.size x SIZE.

usage: bench/history_flood.py [N] [L] [SIZE] [HISTORY_SIZE]   (defaults 50000 20 1024 100)
Starts target/release/switchboard itself on 127.0.0.1:0 in dev mode; stops it at the end.
"""
import http.client
import json
import os
import subprocess
import sys


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    n, lobbies, size, history = (int(a) for a in (sys.argv[1:] + ["50000", "20", "1024", "100"][len(sys.argv) - 1:])[:4])
    env = dict(os.environ, SWITCHBOARD_BIND="127.0.0.1:0", SWITCHBOARD_DEV_MODE="true", SWITCHBOARD_LOG__LEVEL="warn",
               SWITCHBOARD_HISTORY__SIZE=str(history))
    server = subprocess.Popen(["target/release/switchboard"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        addr = server.stdout.readline().strip().removeprefix("listening on ")
        host, port = addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        payload = json.dumps({"data": "x" * size})
        before = rss_kib(server.pid)
        for i in range(n):
            conn.request("POST", f"/api/lobbies/flood{i % lobbies}/broadcast", body=payload,
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
        after = rss_kib(server.pid)
        bound_kib = lobbies * history * (size + 100) // 1024
        print(json.dumps({"broadcasts": n, "lobbies": lobbies, "payload_bytes": size,
                          "history_size": history, "rss_before_kib": before, "rss_after_kib": after,
                          "growth_kib": after - before, "history_bound_kib": bound_kib}))
    finally:
        server.terminate()
        server.wait(timeout=15)


if __name__ == "__main__":
    main()
