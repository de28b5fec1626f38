"""Throughput of the Python package beside the TypeScript client in Node, on one machine:

- receive: messages per second one client receives (a protocol-v2 `Client` in one lobby; the
  messages come from a separate blaster process broadcasting as fast as it can over a raw
  WebSocket), and the same for the TypeScript client (`receive.mjs`, Node + `ws`);
- publish: API calls per second a backend makes (`POST /api/lobbies/{lobby}/broadcast`):
  `SwitchboardAPI` one call after the other, `AsyncSwitchboardAPI` 32 at a time, and Node's
  `fetch` the same two ways (`publish.mjs`).

    python bench/bench.py [--messages 50000] [--calls 5000]

The server is $SWITCHBOARD_BIN or target/release/switchboard (build it with `cargo build
--release -p switchboard-server`). Prints one JSON line per figure, then a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import connect

from switchboard_client import AsyncSwitchboardAPI, Client, Message, SwitchboardAPI

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
KEY = "bench-key"
PAYLOAD = {"text": "x" * 80}  # about 100 bytes of frame data, as in BENCHMARKS.md's fan-out


def start_server() -> tuple[subprocess.Popen[bytes], int]:
    binary = os.environ.get("SWITCHBOARD_BIN") or str(REPO / "target/release/switchboard")
    env = {
        # SWITCHBOARD_* is the server's configuration (SWITCHBOARD_BIN would be refused).
        **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")},
        "SWITCHBOARD_BIND": "127.0.0.1:0",
        "SWITCHBOARD_API__KEY": KEY,
        # The blaster sends far beyond a client's default budget, and the receiver may lag
        # behind it for a while: neither is what is measured here.
        "SWITCHBOARD_RATE__MESSAGES_PER_SEC": "10000000",
        "SWITCHBOARD_RATE__BURST": "10000000",
        "SWITCHBOARD_QUEUE__CAPACITY": "1000000",
        "SWITCHBOARD_LOG__LEVEL": "warn",
    }
    proc = subprocess.Popen([binary, "--dev"], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return proc, int(line.strip().rsplit(":", 1)[1])


async def blast(url: str, lobby: str, n: int) -> None:
    """Sends `n` broadcasts to `lobby` as fast as the socket takes them (v1, fire and forget)."""
    frame = json.dumps({"type": "broadcast", "data": PAYLOAD, "exclude_self": True})
    async with connect(f"{url}/ws/{lobby}?token=blaster", compression=None) as ws:
        await ws.recv()  # welcome
        for _ in range(n):
            await ws.send(frame)
        await ws.recv()  # held open until the bench ends it


def blaster(url: str, lobby: str, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--blast", url, lobby, str(n)])


async def receive_python(url: str, n: int) -> float:
    """Messages per second one Python `Client` receives."""
    done = asyncio.Event()
    count = 0
    first = last = 0.0

    def on_message(_: Message) -> None:
        nonlocal count, first, last
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == n:
            last = time.perf_counter()
            done.set()

    async with Client(url, token="py-receiver") as client:
        client.on(Message, on_message)
        await client.join("bench-py")
        proc = blaster(url, "bench-py", n)
        await asyncio.wait_for(done.wait(), 300)
        proc.kill()
        proc.wait()
    return (n - 1) / (last - first)


def receive_node(url: str, n: int) -> float:
    """Messages per second one TypeScript client (in Node) receives."""
    node = subprocess.Popen(
        ["node", str(HERE / "receive.mjs"), url, "bench-node", str(n)],
        stdout=subprocess.PIPE,
    )
    assert node.stdout is not None
    assert json.loads(node.stdout.readline()) == {"ready": True}
    proc = blaster(url, "bench-node", n)
    result = json.loads(node.stdout.readline())
    node.wait(60)
    proc.kill()
    proc.wait()
    return float(result["per_second"])


def publish_sync(http: str, calls: int) -> float:
    with SwitchboardAPI(http, KEY) as api:
        api.broadcast("bench-pub", PAYLOAD)  # the connection is open before the clock starts
        start = time.perf_counter()
        for _ in range(calls):
            api.broadcast("bench-pub", PAYLOAD)
        return calls / (time.perf_counter() - start)


async def publish_async(http: str, calls: int, concurrency: int = 32) -> float:
    async with AsyncSwitchboardAPI(http, KEY) as api:
        await api.broadcast("bench-pub", PAYLOAD)
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await api.broadcast("bench-pub", PAYLOAD)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return calls / (time.perf_counter() - start)


def publish_node(http: str, calls: int) -> dict[str, float]:
    out = subprocess.run(
        ["node", str(HERE / "publish.mjs"), http, KEY, str(calls)],
        capture_output=True,
        check=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--blast":
        asyncio.run(blast(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args()
    server, port = start_server()
    url, http = f"ws://127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    try:
        figures = {
            "receive_python": asyncio.run(receive_python(url, args.messages)),
            "receive_node": receive_node(url, args.messages),
            "publish_python_sync": publish_sync(http, args.calls),
            "publish_python_async_32": asyncio.run(publish_async(http, args.calls)),
        }
        node = publish_node(http, args.calls)
        figures["publish_node_sequential"] = node["sequential"]
        figures["publish_node_32"] = node["concurrent_32"]
    finally:
        server.terminate()
        server.wait()
    for name, value in figures.items():
        print(json.dumps({name: round(value)}))
    print()
    print("| | Python | TypeScript (Node) |")
    print("| --- | ---: | ---: |")
    print(
        f"| messages received per second, one client | {figures['receive_python']:,.0f} "
        f"| {figures['receive_node']:,.0f} |"
    )
    sync, seq = figures["publish_python_sync"], figures["publish_node_sequential"]
    print(f"| API publishes per second, one after the other | {sync:,.0f} (sync) | {seq:,.0f} |")
    print(
        f"| API publishes per second, 32 at a time | "
        f"{figures['publish_python_async_32']:,.0f} (async) | {figures['publish_node_32']:,.0f} |"
    )


if __name__ == "__main__":
    main()
