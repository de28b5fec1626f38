"""Fixtures: the real server binary on free ports, a TCP proxy that can cut connections, JWTs.

Every await in the tests is bounded (`within`, `asyncio.wait_for`), so a regression fails a
test instead of hanging the run; the server processes are killed when their module ends.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[3]
PACKAGE = Path(__file__).resolve().parents[1]
API_KEY = "test-api-key"
JWT_SECRET = "a-jwt-secret-of-at-least-32-bytes-long"
LOGS = PACKAGE / "test-output"
"""The servers' logs (stderr) of the last run, one file each (gitignored)."""
WAIT = 10.0
"""The deadline of any single wait in a test, seconds."""

T = TypeVar("T")


async def within(awaitable: Awaitable[T], seconds: float = WAIT) -> T:
    """`awaitable`, or TimeoutError after `seconds`."""
    return await asyncio.wait_for(awaitable, seconds)


def server_binary() -> Path:
    """$SWITCHBOARD_BIN, or the workspace's debug build (scripts/test-python.sh builds it)."""
    env = os.environ.get("SWITCHBOARD_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "switchboard"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build -p switchboard-server`")
    return path


def read_line(stream: Any, deadline: float) -> str:
    """One line of a child's stdout, waiting at most until `deadline` (monotonic)."""
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no full line in time (got {data!r})")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                raise RuntimeError(f"the process ended before a full line (got {data!r})")
            data += chunk
    return data.decode().rstrip("\n")


class Server:
    """A real `switchboard` process on 127.0.0.1 (port 0 unless restarted on its own port);
    stderr (its logs) goes to a file, shown when a test fails to start it."""

    def __init__(self, env: Mapping[str, str], dev: bool = True) -> None:
        self.env = dict(env)
        self.dev = dev
        self.port = 0
        self.admin_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        LOGS.mkdir(exist_ok=True)
        self.log = Path(tempfile.mkstemp(prefix="server-", suffix=".log", dir=LOGS)[1])
        self.start()

    def start(self) -> None:
        # Only this test's settings: a SWITCHBOARD_* variable of the caller's (SWITCHBOARD_BIN
        # included) would be read as configuration, and an unknown name stops the server.
        ambient = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        env = {**ambient, **self.env, "SWITCHBOARD_BIND": f"127.0.0.1:{self.port}"}
        args = [str(server_binary())] + (["--dev"] if self.dev else [])
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=log)
        deadline = time.monotonic() + WAIT
        try:
            line = read_line(self.proc.stdout, deadline)
        except (TimeoutError, RuntimeError) as error:
            raise RuntimeError(f"the server did not start: {error}\n{self.logs()}") from None
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])
        if "SWITCHBOARD_ADMIN_BIND" in self.env:
            admin = read_line(self.proc.stdout, deadline)
            assert admin.startswith("admin listening on "), admin
            self.admin_port = int(admin.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port or self.port}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no goodbye, no close frames; the clients see their sockets end."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(WAIT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self) -> None:
        """Kills the process and starts a new one on the same port (its history is gone: the
        lobbies get new epochs)."""
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.start()


ServerFactory = Callable[..., Server]


@pytest.fixture(scope="session", autouse=True)
def fresh_logs() -> None:
    """Only this run's server logs stay in test-output/."""
    for old in LOGS.glob("server-*.log"):
        old.unlink()


@pytest.fixture(scope="module")
def start_server() -> Iterator[ServerFactory]:
    """`start_server(env={...}, dev=True)`: a server for this module, stopped at its end."""
    servers: list[Server] = []

    def start(env: Mapping[str, str] | None = None, dev: bool = True) -> Server:
        server = Server(env or {}, dev)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(start_server: ServerFactory) -> Server:
    """A dev-mode server with an API key."""
    return start_server({"SWITCHBOARD_API__KEY": API_KEY})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(sub: str, exp_in_s: float | None = 3600, secret: str = JWT_SECRET, **claims: Any) -> str:
    """An HS256 JWT for the server's `auth.jwt_secret`."""
    payload: dict[str, Any] = {"sub": sub, **claims}
    if exp_in_s is not None:
        payload["exp"] = int(time.time() + exp_in_s)
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(payload).encode())
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


class CutProxy:
    """A TCP proxy in front of the server whose `cut()` aborts every connection through it
    at once (a reset, no close frame): the socket dies mid-stream as in a network failure."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.WriteTransport] = []
        self._frozen: set[asyncio.StreamWriter] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def start(self) -> CutProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._transports += [writer.transport, up_writer.transport]

        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if dst in self._frozen:
                        continue  # a pulled cable: bytes vanish, nothing is closed
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def freeze(self) -> None:
        """Every connection through the proxy so far goes silent both ways, without a close
        (new connections are not affected)."""
        self._frozen.update(self._writers)

    def cut(self) -> None:
        for transport in self._transports:
            transport.abort()
        self._transports.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class HeldBackend:
    """A bare HTTP/1.1 backend that records each signed call (headers, raw body) and answers
    only when the test releases it with a body: calls can be held open on purpose."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[tuple[dict[str, str], bytes, asyncio.Future[bytes]]] = (
            asyncio.Queue()
        )
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> HeldBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")[1:]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                await self.calls.put((headers, body, answer))
                data = await answer
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(data)}\r\n\r\n".encode()
                    + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
