"""A backend for the standalone Switchboard server, in FastAPI under uvicorn.

- It logs users in with its own session cookie (`POST /login`), and admits WebSocket clients
  by that cookie through the server's connect proxy (`auth.connect_url`): the browser never
  handles a token.
- It decides protocol-v2 joins (`auth.join_url`): `vip-*` lobbies are for VIPs only.
- It receives the server's signed webhook batches, de-duplicated by event id (delivery is at
  least once), and answers a client's `chat` message by publishing through the HTTP API.
- It answers RPC calls (`webhook.rpc_url`): `add` and `whoami`.

Every call from the server is verified (signature and timestamp) by one dependency each.

Run it (secrets: every secret this backend accepts, comma-separated; during a rotation the
server signs with the old and the new, so either one verifies; the names do not start with
SWITCHBOARD_, which is the server's configuration):

    SERVER_URL=http://127.0.0.1:8080 API_KEY=api-key \\
    SECRETS=change-me PORT=9000 python examples/fastapi_backend.py

and the server with

    SWITCHBOARD_API__KEY=api-key SWITCHBOARD_WEBHOOK__SECRET=change-me \\
    SWITCHBOARD_WEBHOOK__URL=http://127.0.0.1:9000/switchboard/webhook \\
    SWITCHBOARD_AUTH__CONNECT_URL=http://127.0.0.1:9000/switchboard/connect \\
    SWITCHBOARD_AUTH__JOIN_URL=http://127.0.0.1:9000/switchboard/join \\
    SWITCHBOARD_WEBHOOK__RPC_URL=http://127.0.0.1:9000/switchboard/rpc \\
    cargo run --release -p switchboard-server

It prints one JSON line per thing it hears on stdout (`{"listening": PORT}` first), so a test
(tests/test_webhooks.py) can follow it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from switchboard_client import (
    AnyEvent,
    AsyncSwitchboardAPI,
    ConnectAttempt,
    JoinRequest,
    MessageEvent,
    RpcRequest,
)
from switchboard_client.asgi import (
    SwitchboardConnect,
    SwitchboardJoin,
    SwitchboardRpc,
    SwitchboardWebhook,
)

SERVER = os.environ.get("SERVER_URL", "http://127.0.0.1:8080")
API_KEY = os.environ.get("API_KEY")
SECRETS = [s for s in os.environ.get("SECRETS", "change-me").split(",") if s]
SESSION_TTL_S = 3600


@dataclass
class Session:
    user_id: str
    vip: bool
    expires_at: int


sessions: dict[str, Session] = {}
"""Cookie value -> session (a real app keeps these in its database)."""
seen: OrderedDict[str, None] = OrderedDict()
"""Webhook event ids already handled (bounded: the last 10,000)."""


def say(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One keep-alive pool for the whole process, not one per request.
    async with AsyncSwitchboardAPI(SERVER, API_KEY) as api:
        app.state.api = api
        yield


app = FastAPI(lifespan=lifespan)
verified_webhook = SwitchboardWebhook(SECRETS)
verified_connect = SwitchboardConnect(SECRETS)
verified_join = SwitchboardJoin(SECRETS)
verified_rpc = SwitchboardRpc(SECRETS)


class Login(BaseModel):
    user: str
    vip: bool = False


@app.post("/login")
async def login(body: Login, response: Response) -> dict[str, str]:
    """Logs a user in (no password: it is an example) and sets the session cookie."""
    cookie = secrets.token_urlsafe(16)
    sessions[cookie] = Session(body.user, body.vip, int(time.time()) + SESSION_TTL_S)
    response.set_cookie("session", cookie, httponly=True, samesite="strict")
    return {"user_id": body.user}


@app.post("/switchboard/connect")
async def connect(attempt: Annotated[ConnectAttempt, Depends(verified_connect)]) -> dict[str, Any]:
    """The connect proxy: admit by our own session cookie, or refuse (the client gets 4001
    and does not retry)."""
    session = sessions.get(attempt.cookie("session") or "")
    say({"connect": attempt.transport, "admitted": session is not None})
    if session is None or session.expires_at < time.time():
        raise HTTPException(401, "no session")
    return {"user_id": session.user_id, "expires_at": session.expires_at}


@app.post("/switchboard/join")
async def join(request: Annotated[JoinRequest, Depends(verified_join)]) -> Response:
    """The join proxy: 204 allows, 403 refuses (the client's join gets `not_allowed`)."""
    vip = any(s.vip for s in sessions.values() if s.user_id == request.user_id)
    allowed = not request.lobby.startswith("vip-") or vip
    say({"join": request.lobby, "user_id": request.user_id, "allowed": allowed})
    return Response(status_code=204 if allowed else 403)


@app.post("/switchboard/webhook")
async def webhook(events: Annotated[list[AnyEvent], Depends(verified_webhook)]) -> Response:
    """Events, oldest first. A `chat` message is answered by publishing to its lobby through
    the API; everything else is only recorded."""
    api: AsyncSwitchboardAPI = app.state.api
    for event in events:
        if event.id in seen:
            continue  # delivered again after a retry: handled already
        seen[event.id] = None
        if len(seen) > 10_000:
            seen.popitem(last=False)
        say({"event": event.raw})
        if isinstance(event, MessageEvent) and event.message_type == "chat":
            lobby = event.message.get("lobby")
            text = event.message.get("text")
            if isinstance(lobby, str):
                await api.broadcast(lobby, {"from": event.user_id, "text": text})
    return Response(status_code=204)


@app.post("/switchboard/rpc", response_model=None)
async def rpc(call: Annotated[RpcRequest, Depends(verified_rpc)]) -> Any:
    """RPC: the JSON answered is the client's result; an error status fails the call with
    `rpc_failed` and this message."""
    say({"rpc": call.method, "user_id": call.user_id})
    if call.method == "add" and isinstance(call.data, dict):
        return {"sum": call.data.get("a", 0) + call.data.get("b", 0)}
    if call.method == "whoami":
        return {"user_id": call.user_id, "connection_id": call.connection_id}
    return JSONResponse({"error": {"message": f"no method {call.method}"}}, status_code=404)


async def main() -> None:
    config = uvicorn.Config(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "9000")),
        log_level="warning",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving  # it failed to start: raise why
            return
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    say({"listening": port})
    await serving


if __name__ == "__main__":
    asyncio.run(main())
