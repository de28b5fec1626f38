"""The FastAPI peer: the seed's ConnectionManager (seed/websocket-management.md), kept as it is.

Faithful to the seed's design: a set of sockets per lobby, one socket per user
(`user_connections[user_id]`, overwritten by a second connection), every broadcast send
awaited in turn, no ping loop and no sweeper. Only the limits are raised for the benchmark,
and the endpoint speaks the subset of Switchboard's protocol v1 that the load generator uses:
`welcome` after accept, `health_pong`, `broadcast` (-> `message`, `exclude_self` mapped to the
seed's `exclude_user_id`), `direct`, `presence`. Tokens are dev-mode: the token is the user id.
Run under uvicorn (bench/peers/start.sh), whose own WebSocket keepalive pings stay at their
defaults (20 s interval, 20 s timeout): that is what a user deploying the seed gets.
"""

import asyncio
import json
import logging
import os
import time
from typing import Dict, Optional, Set, Tuple

from fastapi import FastAPI, Query, WebSocket, WebSocketDisconnect

logger = logging.getLogger(__name__)


class ConnectionManager:
    """Production-grade WebSocket connection manager (the seed's code)."""

    def __init__(self, max_connections: int = 500, max_per_lobby: int = 10):
        self.max_connections = max_connections
        self.max_per_lobby = max_per_lobby
        # lobby_code -> set of websockets
        self.active_connections: Dict[str, Set[WebSocket]] = {}
        # websocket -> (lobby_code, user_id)
        self.connection_info: Dict[WebSocket, Tuple[str, str]] = {}
        # user_id -> websocket (for direct messaging)
        self.user_connections: Dict[str, WebSocket] = {}
        # Health monitoring
        self._pending_pings: Dict[str, asyncio.Event] = {}
        self._last_message_times: Dict[str, float] = {}

    def can_accept_connection(self, lobby_code: str) -> Tuple[bool, str]:
        total = sum(len(conns) for conns in self.active_connections.values())
        if total >= self.max_connections:
            return False, "server_full"
        lobby_count = len(self.active_connections.get(lobby_code, set()))
        if lobby_count >= self.max_per_lobby:
            return False, "lobby_full"
        return True, ""

    async def connect(self, websocket: WebSocket, lobby_code: str, user_id: str) -> None:
        await websocket.accept()
        if lobby_code not in self.active_connections:
            self.active_connections[lobby_code] = set()
        self.active_connections[lobby_code].add(websocket)
        self.connection_info[websocket] = (lobby_code, user_id)
        self.user_connections[user_id] = websocket
        self._last_message_times[user_id] = time.time()

    def disconnect(self, websocket: WebSocket) -> Optional[Tuple[str, str]]:
        info = self.connection_info.get(websocket)
        if not info:
            return None
        lobby_code, user_id = info
        if lobby_code in self.active_connections:
            self.active_connections[lobby_code].discard(websocket)
            if not self.active_connections[lobby_code]:
                del self.active_connections[lobby_code]
        del self.connection_info[websocket]
        self.user_connections.pop(user_id, None)
        self._last_message_times.pop(user_id, None)
        self._pending_pings.pop(user_id, None)
        return info

    async def broadcast_to_lobby(
        self, lobby_code: str, message: dict, exclude_user_id: Optional[str] = None
    ) -> int:
        if lobby_code not in self.active_connections:
            return 0
        data = json.dumps(message)
        disconnected = []
        sent_count = 0
        for websocket in self.active_connections[lobby_code]:
            if exclude_user_id:
                info = self.connection_info.get(websocket)
                if info and info[1] == exclude_user_id:
                    continue
            try:
                await websocket.send_text(data)
                sent_count += 1
            except Exception:
                disconnected.append(websocket)
        for ws in disconnected:
            self.disconnect(ws)
        return sent_count

    async def send_to_user(self, user_id: str, message: dict) -> bool:
        websocket = self.user_connections.get(user_id)
        if not websocket:
            return False
        try:
            await websocket.send_text(json.dumps(message))
            return True
        except Exception:
            self.disconnect(websocket)
            return False

    def record_pong(self, user_id: str) -> None:
        self._last_message_times[user_id] = time.time()
        ping_event = self._pending_pings.get(user_id)
        if ping_event:
            ping_event.set()

    def update_last_message(self, user_id: str) -> None:
        self._last_message_times[user_id] = time.time()

    def get_lobby_users(self, lobby_code: str) -> Set[str]:
        users = set()
        for ws in self.active_connections.get(lobby_code, set()):
            info = self.connection_info.get(ws)
            if info:
                users.add(info[1])
        return users

    def get_stats(self) -> dict:
        total = sum(len(conns) for conns in self.active_connections.values())
        return {
            "total_connections": total,
            "max_connections": self.max_connections,
            "capacity_percent": round(total / self.max_connections * 100, 1),
            "active_lobbies": len(self.active_connections),
        }


# Limits raised for the benchmark (the process cap of 20,000 open files binds first).
manager = ConnectionManager(
    max_connections=int(os.environ.get("MAX_CONNECTIONS", "100000")),
    max_per_lobby=int(os.environ.get("MAX_PER_LOBBY", "100000")),
)
app = FastAPI()
_next_id = 0


async def authenticate_token(token: str) -> Optional[str]:
    return token or None  # dev mode: the token is the user id


async def handle_message(websocket: WebSocket, lobby_code: str, user_id: str, data) -> None:
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "broadcast":
        if "data" not in data:
            await websocket.send_text(json.dumps({"type": "error", "code": "missing_field", "message": "missing field `data`"}))
            return
        exclude = user_id if data.get("exclude_self") is True else None
        await manager.broadcast_to_lobby(
            lobby_code,
            {"type": "message", "lobby": lobby_code, "from": user_id, "data": data["data"]},
            exclude_user_id=exclude,
        )
    elif kind == "direct":
        await manager.send_to_user(str(data.get("to")), {"type": "direct", "from": user_id, "data": data.get("data")})
    elif kind == "presence":
        users = sorted(manager.get_lobby_users(lobby_code))
        await websocket.send_text(json.dumps({"type": "presence", "lobby": lobby_code, "users": users}))
    else:
        await websocket.send_text(json.dumps({"type": "error", "code": "unknown_type", "message": f"unknown type {kind}"}))


@app.get("/healthz")
async def healthz():
    return "ok"


@app.get("/api/stats")
async def stats():
    return manager.get_stats()


@app.websocket("/ws/{lobby_code}")
async def websocket_endpoint(websocket: WebSocket, lobby_code: str, token: str = Query(...)):
    global _next_id
    user_id = await authenticate_token(token)
    if not user_id:
        await websocket.close(code=4001, reason="unauthorized")
        return
    can_accept, reason = manager.can_accept_connection(lobby_code)
    if not can_accept:
        await websocket.close(code=4002, reason=reason)
        return
    await manager.connect(websocket, lobby_code, user_id)
    _next_id += 1
    await websocket.send_text(json.dumps({
        "type": "welcome", "connection_id": f"py-{_next_id}", "user_id": user_id, "lobby": lobby_code,
        "ping_interval_ms": 0, "server_time": int(time.time() * 1000), "protocol": 1, "presence_events": False,
    }))
    try:
        while True:
            data = await websocket.receive_json()
            manager.update_last_message(user_id)
            if data.get("type") == "health_pong":
                manager.record_pong(user_id)
                continue
            await handle_message(websocket, lobby_code, user_id, data)
    except WebSocketDisconnect:
        manager.disconnect(websocket)
