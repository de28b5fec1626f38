"""Webhook verification against real signed posts from the server, and the example FastAPI
backend (examples/fastapi_backend.py) under uvicorn: admitted by its session cookie through
the connect proxy, joins decided, webhooks verified (valid, tampered, old timestamp, rotated
secret) and answered by publishing through the API."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from switchboard_client import (
    Backoff,
    Client,
    ConnectEvent,
    ConnectionClosedError,
    Disconnected,
    DisconnectEvent,
    Message,
    MessageEvent,
    RequestError,
    WebhookVerificationError,
    sign,
    verify_asgi_webhook,
    verify_webhook,
)
from switchboard_client.asgi import read_webhook

from .conftest import (
    API_KEY,
    PACKAGE,
    WAIT,
    CutProxy,
    Server,
    ServerFactory,
    read_line,
    within,
)

OLD, NEW = "old-secret", "new-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ExampleBackend:
    """examples/fastapi_backend.py in its own process, and the JSON lines it prints."""

    def __init__(self, port: int, server_url: str, secrets: str) -> None:
        env = {
            **os.environ,
            "PORT": str(port),
            "SERVER_URL": server_url,
            "API_KEY": API_KEY,
            "SECRETS": secrets,
        }
        script = PACKAGE / "examples" / "fastapi_backend.py"
        self.proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE)
        first = json.loads(read_line(self.proc.stdout, time.monotonic() + WAIT))
        self.url = f"http://127.0.0.1:{first['listening']}"

    async def heard(self, key: str, where: dict[str, Any] | None = None) -> dict[str, Any]:
        """The next line printed that has `key`, and the `where` fields (in the value when it
        is an object, else in the line)."""
        while True:
            line = await asyncio.to_thread(read_line, self.proc.stdout, time.monotonic() + WAIT)
            heard: dict[str, Any] = json.loads(line)
            value = heard.get(key)
            if value is None:
                continue
            target = value if isinstance(value, dict) else heard
            if where and not all(target.get(k) == v for k, v in where.items()):
                continue
            return heard

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Setup:
    server: Server
    backend: ExampleBackend


@pytest.fixture(scope="module")
def setup(start_server: ServerFactory) -> Iterator[Setup]:
    """The server signs with the new and the old secret (a rotation in progress); the example
    backend knows only the old one."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/switchboard"
    server = start_server(
        {
            "SWITCHBOARD_API__KEY": API_KEY,
            "SWITCHBOARD_WEBHOOK__URL": f"{base}/webhook",
            "SWITCHBOARD_WEBHOOK__SECRET": f"{NEW},{OLD}",
            "SWITCHBOARD_AUTH__CONNECT_URL": f"{base}/connect",
            "SWITCHBOARD_AUTH__JOIN_URL": f"{base}/join",
            "SWITCHBOARD_WEBHOOK__RPC_URL": f"{base}/rpc",
        },
        dev=False,
    )
    backend = ExampleBackend(port, server.http_url, OLD)
    yield Setup(server, backend)
    backend.stop()


async def login(setup: Setup, user: str, vip: bool = False) -> str:
    async with httpx.AsyncClient(base_url=setup.backend.url) as http:
        response = await within(http.post("/login", json={"user": user, "vip": vip}))
        response.raise_for_status()
        return response.cookies["session"]


async def test_admitted_by_cookie_heard_by_webhook_answered_through_the_api(
    setup: Setup,
) -> None:
    cookie = await login(setup, "alice")
    client = Client(setup.server.ws_url, headers={"Cookie": f"session={cookie}"}, reconnect=False)
    welcome = await within(client.connect())
    assert welcome.user_id == "alice" and welcome.token_expires_at is not None
    await setup.backend.heard("connect", {"admitted": True})
    connected = await setup.backend.heard("event", {"type": "connect"})
    assert connected["event"]["user_id"] == "alice"
    assert connected["event"]["connection_id"] == welcome.connection_id

    room = await within(client.join("lobby-1"))
    events = client.events()
    # An application message: acked by the server, posted to the backend, which publishes
    # its answer to the lobby through the HTTP API.
    await within(client.request({"type": "chat", "lobby": "lobby-1", "text": "hello"}))
    heard = await setup.backend.heard("event", {"type": "message"})
    assert heard["event"]["message"]["text"] == "hello"
    answer = await within(events.next(Message))
    assert (answer.lobby, answer.sender, answer.data) == (
        "lobby-1",
        None,
        {"from": "alice", "text": "hello"},
    )
    assert answer.offset == room.offset == 1
    await client.close()
    gone = await setup.backend.heard("event", {"type": "disconnect"})
    assert gone["event"]["connection_id"] == welcome.connection_id


async def test_no_session_is_refused_for_good(setup: Setup) -> None:
    client = Client(setup.server.ws_url, headers={"Cookie": "session=forged"})
    with pytest.raises(ConnectionClosedError) as caught:
        await within(client.connect())
    assert caught.value.close_code == 4001
    await setup.backend.heard("connect", {"admitted": False})


async def test_the_join_proxy_decides(setup: Setup) -> None:
    plain, vip = await login(setup, "bob"), await login(setup, "vera", vip=True)
    async with (
        Client(setup.server.ws_url, headers={"Cookie": f"session={plain}"}) as bob,
        Client(setup.server.ws_url, headers={"Cookie": f"session={vip}"}) as vera,
    ):
        with pytest.raises(RequestError) as caught:
            await within(bob.join("vip-lounge"))
        assert caught.value.code == "not_allowed"
        await within(vera.join("vip-lounge"))
        await within(bob.join("public"))


async def test_rpc_is_answered_by_the_example_backend(setup: Setup) -> None:
    cookie = await login(setup, "rita")
    async with Client(setup.server.ws_url, headers={"Cookie": f"session={cookie}"}) as rita:
        assert await within(rita.rpc("add", {"a": 2, "b": 40})) == {"sum": 42}
        assert rita.welcome is not None
        assert await within(rita.rpc("whoami")) == {
            "user_id": "rita",
            "connection_id": rita.welcome.connection_id,
        }
        await setup.backend.heard("rpc", {"rpc": "whoami", "user_id": "rita"})
        with pytest.raises(RequestError) as caught:
            await within(rita.rpc("nope", [1, 2]))
        assert caught.value.code == "rpc_failed" and "no method nope" in caught.value.message
        # Calls overlap; each answer finds its caller.
        sums = await within(asyncio.gather(*(rita.rpc("add", {"a": n, "b": n}) for n in range(6))))
        assert sums == [{"sum": 2 * n} for n in range(6)]


class Capture:
    """A bare HTTP/1.1 receiver that records the server's webhook posts as they are (headers
    and raw body) and answers 200: the real signed posts, to verify and to replay."""

    def __init__(self) -> None:
        self.posts: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Capture:
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
                await self.posts.put((headers, body))
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            # The server hung up, or the module is over (the receiver is closing).
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture(scope="module")
async def captured(start_server: ServerFactory) -> AsyncIterator[tuple[dict[str, str], bytes]]:
    """One real batch (a connect event), signed by a server with the new and old secrets."""
    capture = await Capture().start()
    server = start_server(
        {
            "SWITCHBOARD_WEBHOOK__URL": f"http://127.0.0.1:{capture.port}/hook",
            "SWITCHBOARD_WEBHOOK__SECRET": f"{NEW},{OLD}",
        }
    )
    async with Client(server.ws_url, token="carl") as client:
        await within(client.join("signed"))
        yield await within(capture.posts.get())
    await capture.close()


async def test_real_posts_verify_with_either_rotated_secret(
    captured: tuple[dict[str, str], bytes],
) -> None:
    headers, body = captured
    assert headers["switchboard-signature"].count("v1=") == 2
    for secrets in ([OLD], [NEW], ["unrelated", OLD]):
        events = verify_webhook(secrets, headers, body)
        assert isinstance(events[0], ConnectEvent)
        assert events[0].user_id == "carl" and events[0].protocol == 2
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(["unrelated"], headers, body)
    assert caught.value.code == "bad_signature"


async def test_tampered_and_old_posts_are_refused(captured: tuple[dict[str, str], bytes]) -> None:
    headers, body = captured
    tampered = body.replace(b'"carl"', b'"mallory"')
    assert tampered != body
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook([OLD], headers, tampered)
    assert caught.value.code == "bad_signature"
    stamp = int(headers["switchboard-signature"].split(",")[0][2:])
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook([OLD], headers, body, now=stamp + 301)
    assert caught.value.code == "timestamp_out_of_range"
    assert verify_webhook([OLD], headers, body, now=stamp + 299)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook([OLD], {}, body)
    assert caught.value.code == "missing_signature"
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook([OLD], {"Switchboard-Signature": "v1=abc"}, body)
    assert caught.value.code == "malformed_signature"


async def test_the_example_backend_accepts_real_posts_and_refuses_the_rest(
    setup: Setup, captured: tuple[dict[str, str], bytes]
) -> None:
    headers, body = captured
    signature = headers["switchboard-signature"]
    stamp = int(signature.split(",")[0][2:])
    url = "/switchboard/webhook"
    post_headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=setup.backend.url) as http:
        valid = await within(
            http.post(
                url, content=body, headers={**post_headers, "switchboard-signature": signature}
            )
        )
        assert valid.status_code == 204
        heard = await setup.backend.heard("event", {"user_id": "carl"})
        assert heard["event"]["type"] == "connect"
        tampered = await within(
            http.post(
                url,
                content=body.replace(b'"carl"', b'"mallory"'),
                headers={**post_headers, "switchboard-signature": signature},
            )
        )
        assert (tampered.status_code, tampered.json()["detail"]) == (401, "bad_signature")
        old = sign(OLD, body, t=stamp - 600)  # a correct signature, ten minutes old
        replayed = await within(
            http.post(url, content=body, headers={**post_headers, "switchboard-signature": old})
        )
        assert (replayed.status_code, replayed.json()["detail"]) == (401, "timestamp_out_of_range")
        only_new = sign(NEW, body)  # the backend has not learned the new secret yet
        refused = await within(
            http.post(
                url, content=body, headers={**post_headers, "switchboard-signature": only_new}
            )
        )
        assert refused.status_code == 401
        unsigned = await within(http.post(url, content=body, headers=post_headers))
        assert (unsigned.status_code, unsigned.json()["detail"]) == (401, "missing_signature")


async def test_the_plain_starlette_helper(captured: tuple[dict[str, str], bytes]) -> None:
    headers, body = captured

    async def hook(request: Request) -> Response:
        try:
            events = await read_webhook(request, [OLD])
        except WebhookVerificationError as error:
            return JSONResponse({"refused": error.code}, status_code=401)
        return JSONResponse({"types": [event.type for event in events]})

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        ok = await within(http.post("/hook", content=body, headers=headers))
        assert ok.json()["types"][0] == "connect"
        bad = await within(http.post("/hook", content=body + b" ", headers=headers))
        assert bad.json() == {"refused": "bad_signature"}


def test_parse_every_event_type() -> None:
    batch = {
        "events": [
            {"id": "n-1", "type": "connect", "time": 1, "node": "n", "connection_id": "n-4",
             "user_id": "a", "ip": "203.0.113.7", "protocol": 2, "lobbies": ["room"]},
            {"id": "n-2", "type": "join", "lobby": "side"},
            {"id": "n-3", "type": "message", "message_type": "game_move",
             "message": {"type": "game_move", "x": 1, "id": 7}},
            {"id": "n-4", "type": "leave", "lobby": "side"},
            {"id": "n-5", "type": "member_joined", "lobby": "room", "user_id": "a"},
            {"id": "n-6", "type": "member_left", "lobby": "room", "user_id": "a"},
            {"id": "n-7", "type": "disconnect", "reason": "node_lost", "code": None,
             "lost_node": "n2"},
            {"id": "n-8", "type": "from_the_future"},
        ]
    }  # fmt: skip
    body = json.dumps(batch).encode()
    events = verify_webhook(["k"], {"Switchboard-Signature": sign("k", body)}, body)
    assert [event.type for event in events] == [
        "connect",
        "join",
        "message",
        "leave",
        "member_joined",
        "member_left",
        "disconnect",
        "from_the_future",
    ]
    message = events[2]
    assert isinstance(message, MessageEvent) and message.message["x"] == 1
    lost = events[6]
    assert isinstance(lost, DisconnectEvent)
    assert (lost.reason, lost.code, lost.lost_node) == ("node_lost", None, "n2")


async def test_requests_made_while_away_wait_for_the_rejoins_the_backend_decides(
    setup: Setup,
) -> None:
    """With a join proxy the server decides a rejoin asynchronously: a broadcast queued while
    the connection was down must go out only after its lobby's rejoin is answered (else the
    server would refuse it as `not_allowed`)."""
    cookie = await login(setup, "walt")
    proxy = await CutProxy(setup.server.port).start()
    client = Client(
        proxy.ws_url,
        headers={"Cookie": f"session={cookie}"},
        backoff=Backoff(initial_s=0.05, max_s=0.2),
    )
    events = client.events()
    await within(client.connect())
    for lobby in ("away-1", "away-2"):
        await within(client.join(lobby))
    proxy.cut()
    await within(events.next(Disconnected))
    offsets = await within(
        asyncio.gather(
            client.broadcast("away-1", {"n": 1}),
            client.broadcast("away-2", {"n": 2}),
        )
    )
    assert list(offsets) == [1, 1]
    assert proxy.connections == 2
    await client.close()
    await proxy.close()


async def test_the_plain_asgi_helper(captured: tuple[dict[str, str], bytes]) -> None:
    """No framework: scope and receive, the body arriving in two chunks."""
    headers, body = captured
    scope = {"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    chunks = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    events = await within(verify_asgi_webhook(scope, receive, [NEW]))
    assert events[0].type == "connect"
    chunks.append({"type": "http.request", "body": body + b"x", "more_body": False})
    with pytest.raises(WebhookVerificationError) as caught:
        await within(verify_asgi_webhook(scope, receive, [NEW]))
    assert caught.value.code == "bad_signature"
