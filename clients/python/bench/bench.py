"""Throughput of the Python package beside the TypeScript client in Node, on one machine:

- receive: messages per second one client receives (a protocol-v2 `Client` in one lobby),
  and the same for the TypeScript client (`receive.mjs`, Node + `ws`). A blaster process
  broadcasts the messages over a raw WebSocket while a proxy in front of the receiver holds
  them, then releases them at once: the rate is the receiver's, not the blaster's;
- publish: API calls per second a backend makes (`POST /api/lobbies/{lobby}/broadcast`):
  `SwitchboardAPI` one call after the other, `AsyncSwitchboardAPI` 4 and 32 at a time, and
  Node's `fetch` the same ways (`publish.mjs`).

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
from websockets.typing import Subprotocol

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
    """Sends `n` broadcasts to `lobby` as fast as the socket takes them, the last one with an
    id, and returns once the server acknowledged it (so every one was fanned out)."""
    frame = json.dumps({"type": "broadcast", "data": PAYLOAD, "exclude_self": True})
    last = json.dumps({"type": "broadcast", "data": PAYLOAD, "exclude_self": True, "id": "last"})
    async with connect(
        f"{url}/ws/{lobby}?token=blaster",
        compression=None,
        subprotocols=[Subprotocol("switchboard.v2")],
    ) as ws:
        for _ in range(n - 1):
            await ws.send(frame)
        await ws.send(last)
        while json.loads(await ws.recv()).get("id") != "last":
            pass


def run_blaster(url: str, lobby: str, n: int) -> None:
    """The blaster in its own process (it must not share the receiver's CPU time)."""
    subprocess.run([sys.executable, __file__, "--blast", url, lobby, str(n)], check=True)


class HoldProxy:
    """A TCP proxy (its own process, `--hold-proxy`) between the server and the receiver that
    can hold the server's bytes: the messages are fanned out while it holds them, then
    released at once, so the receiver's rate is its own, not the blaster's (one Python
    process sends about 60,000 frames per second, slower than a Node receiver reads)."""

    def __init__(self, upstream_port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--hold-proxy", str(upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = f"ws://127.0.0.1:{json.loads(self.proc.stdout.readline())['port']}"

    def command(self, word: str) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        answer: dict[str, int] = json.loads(self.proc.stdout.readline())
        return answer

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def hold_proxy(upstream_port: int) -> None:
    held = False
    waiting: list[tuple[asyncio.StreamWriter, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold: bool) -> None:
            while data := await src.read(1 << 16):
                if hold and held:
                    waiting.append((dst, data))
                else:
                    dst.write(data)
                    await dst.drain()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "hold":
            held = True
            print(json.dumps({"holding": 1}), flush=True)
        elif line.strip() == "release":
            held = False
            size = sum(len(data) for _, data in waiting)
            for dst, data in waiting:
                dst.write(data)
            waiting.clear()
            print(json.dumps({"released_bytes": size}), flush=True)


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

    proxy = HoldProxy(int(url.rsplit(":", 1)[1]))
    try:
        async with Client(proxy.url, token="py-receiver") as client:
            client.on(Message, on_message)
            await client.join("bench-py")
            proxy.command("hold")
            await asyncio.to_thread(run_blaster, url, "bench-py", n)
            proxy.command("release")
            await asyncio.wait_for(done.wait(), 300)
    finally:
        proxy.stop()
    return (n - 1) / (last - first)


def receive_node(url: str, n: int) -> float:
    """Messages per second one TypeScript client (in Node) receives."""
    proxy = HoldProxy(int(url.rsplit(":", 1)[1]))
    try:
        node = subprocess.Popen(
            ["node", str(HERE / "receive.mjs"), proxy.url, "bench-node", str(n)],
            stdout=subprocess.PIPE,
        )
        assert node.stdout is not None
        assert json.loads(node.stdout.readline()) == {"ready": True}
        proxy.command("hold")
        run_blaster(url, "bench-node", n)
        proxy.command("release")
        result = json.loads(node.stdout.readline())
        node.wait(60)
    finally:
        proxy.stop()
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
    if len(sys.argv) > 1 and sys.argv[1] == "--hold-proxy":
        asyncio.run(hold_proxy(int(sys.argv[2])))
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
            "publish_python_async_4": asyncio.run(publish_async(http, args.calls, 4)),
            "publish_python_async_32": asyncio.run(publish_async(http, args.calls, 32)),
        }
        node = publish_node(http, args.calls)
        figures["publish_node_sequential"] = node["sequential"]
        figures["publish_node_4"] = node["concurrent_4"]
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
    for n in (4, 32):
        py, js = figures[f"publish_python_async_{n}"], figures[f"publish_node_{n}"]
        print(f"| API publishes per second, {n} at a time | {py:,.0f} (async) | {js:,.0f} |")


if __name__ == "__main__":
    main()
