"""The server's HTTP API for backends (README, "HTTP API"; `/api/openapi.json`), sync and
async over httpx.

Both classes build their requests with the same `_Call` descriptions and parse the answers
with the same functions, so the two can never disagree on a path or a field; only the I/O
differs. Errors come back as `ApiError` carrying the server's code (`unauthorized`,
`api_disabled`, `invalid_lobby`, `invalid_user`, `invalid_body`, `not_found`, `overloaded`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from .errors import ApiError

__all__ = [
    "AsyncSwitchboardAPI",
    "Closed",
    "ConnectionInfo",
    "Delivered",
    "Health",
    "LobbyInfo",
    "LobbyPresence",
    "Stats",
    "SwitchboardAPI",
    "UsersJoined",
    "UsersRemoved",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Delivered:
    """A publish or send: `delivered` connections reached on this node."""

    delivered: int


@dataclass(frozen=True)
class LobbyInfo:
    """One lobby of `GET /api/lobbies`."""

    lobby: str
    connections: int
    users: int


@dataclass(frozen=True)
class LobbyPresence:
    """The users present in a lobby, each once, sorted."""

    lobby: str
    users: list[str]


@dataclass(frozen=True)
class Closed:
    """A kick: `closed` connections (closed with 4009 `kicked`)."""

    closed: int


@dataclass(frozen=True)
class ConnectionInfo:
    """One connection of this node (`GET /api/connections/{id}`)."""

    id: str
    user_id: str
    protocol: int
    ip: str
    connected_at: int
    """Milliseconds since the Unix epoch."""
    lobbies: list[str]


@dataclass(frozen=True)
class UsersJoined:
    """A server-side join: this node's connections of the user that joined."""

    joined: int


@dataclass(frozen=True)
class UsersRemoved:
    """A server-side removal: this node's connections taken out of the lobby."""

    removed: int


@dataclass(frozen=True)
class Stats:
    """`GET /api/stats`: the documented counters as fields; everything (cluster sections
    included) in `raw`."""

    total_connections: int
    max_connections: int
    active_lobbies: int
    users: int
    messages_in: int
    messages_out: int
    capacity_percent: float
    uptime_seconds: int
    rejections: dict[str, int]
    closes: dict[str, int]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class Health:
    """`/healthz` and `/readyz`: alive, ready (false while draining), and readyz's body."""

    alive: bool
    ready: bool
    detail: str


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One API call: method, path, JSON body, and how to read a 2xx answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    has_body: bool = False


def _seg(value: str) -> str:
    """A path segment, percent-encoded (user ids may hold any printable character)."""
    return quote(value, safe="")


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(200, "invalid_response", f"`{name}` is not an integer: {value!r}")
    return value


def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(200, "invalid_response", f"expected a JSON object, got {value!r}")
    return value


def _delivered(v: Any) -> Delivered:
    return Delivered(_int(_obj(v).get("delivered"), "delivered"))


def _lobbies(v: Any) -> list[LobbyInfo]:
    if not isinstance(v, list):
        raise ApiError(200, "invalid_response", f"expected a list, got {v!r}")
    return [
        LobbyInfo(str(o["lobby"]), _int(o["connections"], "connections"), _int(o["users"], "users"))
        for o in map(_obj, v)
    ]


def _presence(v: Any) -> LobbyPresence:
    o = _obj(v)
    return LobbyPresence(str(o["lobby"]), [str(u) for u in o["users"]])


def _closed(v: Any) -> Closed:
    return Closed(_int(_obj(v).get("closed"), "closed"))


def _connection(v: Any) -> ConnectionInfo:
    o = _obj(v)
    return ConnectionInfo(
        id=str(o["id"]),
        user_id=str(o["user_id"]),
        protocol=_int(o["protocol"], "protocol"),
        ip=str(o["ip"]),
        connected_at=_int(o["connected_at"], "connected_at"),
        lobbies=[str(lobby) for lobby in o.get("lobbies", [])],
    )


def _joined(v: Any) -> UsersJoined:
    return UsersJoined(_int(_obj(v).get("joined"), "joined"))


def _removed(v: Any) -> UsersRemoved:
    return UsersRemoved(_int(_obj(v).get("removed"), "removed"))


def _stats(v: Any) -> Stats:
    o = _obj(v)
    return Stats(
        total_connections=_int(o.get("total_connections", 0), "total_connections"),
        max_connections=_int(o.get("max_connections", 0), "max_connections"),
        active_lobbies=_int(o.get("active_lobbies", 0), "active_lobbies"),
        users=_int(o.get("users", 0), "users"),
        messages_in=_int(o.get("messages_in", 0), "messages_in"),
        messages_out=_int(o.get("messages_out", 0), "messages_out"),
        capacity_percent=float(o.get("capacity_percent", 0.0)),
        uptime_seconds=_int(o.get("uptime_seconds", 0), "uptime_seconds"),
        rejections={str(k): int(n) for k, n in dict(o.get("rejections") or {}).items()},
        closes={str(k): int(n) for k, n in dict(o.get("closes") or {}).items()},
        raw=o,
    )


class _Calls:
    """The API's calls as data; `SwitchboardAPI` and `AsyncSwitchboardAPI` only run them."""

    @staticmethod
    def broadcast(lobby: str, data: Any, exclude_user: str | None) -> _Call[Delivered]:
        body: dict[str, Any] = {"data": data}
        if exclude_user is not None:
            body["exclude_user"] = exclude_user
        return _Call("POST", f"/api/lobbies/{_seg(lobby)}/broadcast", _delivered, body, True)

    @staticmethod
    def send_to_user(user: str, data: Any) -> _Call[Delivered]:
        return _Call("POST", f"/api/users/{_seg(user)}/send", _delivered, {"data": data}, True)

    @staticmethod
    def send_to_connection(connection_id: str, data: Any) -> _Call[Delivered]:
        path = f"/api/connections/{_seg(connection_id)}/send"
        return _Call("POST", path, _delivered, {"data": data}, True)

    @staticmethod
    def lobbies() -> _Call[list[LobbyInfo]]:
        return _Call("GET", "/api/lobbies", _lobbies)

    @staticmethod
    def presence(lobby: str) -> _Call[LobbyPresence]:
        return _Call("GET", f"/api/lobbies/{_seg(lobby)}/presence", _presence)

    @staticmethod
    def kick_user(user: str) -> _Call[Closed]:
        return _Call("DELETE", f"/api/users/{_seg(user)}", _closed)

    @staticmethod
    def kick_connection(connection_id: str) -> _Call[Closed]:
        return _Call("DELETE", f"/api/connections/{_seg(connection_id)}", _closed)

    @staticmethod
    def connection(connection_id: str) -> _Call[ConnectionInfo]:
        return _Call("GET", f"/api/connections/{_seg(connection_id)}", _connection)

    @staticmethod
    def join_user(user: str, lobby: str) -> _Call[UsersJoined]:
        return _Call("POST", f"/api/users/{_seg(user)}/lobbies/{_seg(lobby)}", _joined)

    @staticmethod
    def remove_user(user: str, lobby: str) -> _Call[UsersRemoved]:
        return _Call("DELETE", f"/api/users/{_seg(user)}/lobbies/{_seg(lobby)}", _removed)

    @staticmethod
    def stats() -> _Call[Stats]:
        return _Call("GET", "/api/stats", _stats)

    @staticmethod
    def openapi() -> _Call[dict[str, Any]]:
        return _Call("GET", "/api/openapi.json", _obj)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key is not None else {}


def _result(call: _Call[T], response: httpx.Response) -> T:
    """The parsed 2xx answer, or the server's JSON error as `ApiError`."""
    if response.is_success:
        return call.parse(response.json())
    _raise(response)


def _text(response: httpx.Response) -> str:
    """A 2xx answer's text (`/metrics`), or the error as `ApiError`."""
    if response.is_success:
        return response.text
    _raise(response)


def _raise(response: httpx.Response) -> NoReturn:
    """The server's JSON error `{"error":{"code","message"}}` as `ApiError` (a body that is
    not one, say a proxy's page, becomes code `http_<status>`)."""
    code, message = f"http_{response.status_code}", response.text
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry_after: float | None = None
    header = response.headers.get("retry-after")
    if header is not None:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    raise ApiError(response.status_code, code, message, retry_after)


def _health(alive: httpx.Response, ready: httpx.Response) -> Health:
    return Health(alive.status_code == 200, ready.status_code == 200, ready.text)


def _build(client: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
    if call.has_body:
        return client.build_request(call.method, call.path, json=call.json)
    return client.build_request(call.method, call.path)


class SwitchboardAPI:
    """The HTTP API, blocking (httpx.Client). Use as a context manager, or call `close()`.

    `base_url` is the server's (or its `admin_bind` listener's) `http://host:port`; `api_key`
    is `api.key` (None: a dev-mode server on a loopback listener needs none); `health_url` is
    the clients' listener when `admin_bind` separates the API (the probes stay there).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        client: httpx.Client | None = None,
        health_url: str | None = None,
    ) -> None:
        self._health_url = (health_url or base_url).rstrip("/")
        self._client = client or httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout
        )
        if client is not None:
            self._client.base_url = httpx.URL(base_url)
            self._client.headers.update(_headers(api_key))

    def _run(self, call: _Call[T]) -> T:
        return _result(call, self._client.send(_build(self._client, call)))

    def broadcast(self, lobby: str, data: Any, *, exclude_user: str | None = None) -> Delivered:
        """Publishes `data` to every connection in `lobby` as a `message` with `from: null`,
        skipping `exclude_user`'s connections (say, the user whose action caused it)."""
        return self._run(_Calls.broadcast(lobby, data, exclude_user))

    def send_to_user(self, user: str, data: Any) -> Delivered:
        """Sends `data` as a `direct` frame (`from: null`) to every connection of `user`."""
        return self._run(_Calls.send_to_user(user, data))

    def send_to_connection(self, connection_id: str, data: Any) -> Delivered:
        """Sends `data` as a `direct` frame (`from: null`) to one connection (its welcome's
        `connection_id`), on whichever node holds it. `ApiError` with code `not_found` when
        none does, `queue_full` (429) when the connection is not reading."""
        return self._run(_Calls.send_to_connection(connection_id, data))

    def lobbies(self) -> list[LobbyInfo]:
        """Every lobby with its connection and user counts."""
        return self._run(_Calls.lobbies())

    def presence(self, lobby: str) -> LobbyPresence:
        """The users present in `lobby`, each once."""
        return self._run(_Calls.presence(lobby))

    def kick_user(self, user: str) -> Closed:
        """Closes every connection of `user` with 4009 `kicked` (clients do not reconnect)."""
        return self._run(_Calls.kick_user(user))

    def kick_connection(self, connection_id: str) -> Closed:
        """Closes one connection (its welcome's `connection_id`) with 4009 `kicked`."""
        return self._run(_Calls.kick_connection(connection_id))

    def connection(self, connection_id: str) -> ConnectionInfo:
        """One connection of this node: user, protocol, IP, connect time, lobbies."""
        return self._run(_Calls.connection(connection_id))

    def join_user(self, user: str, lobby: str) -> UsersJoined:
        """Joins `user`'s protocol-v2 connections to `lobby` (they get `joined` without id)."""
        return self._run(_Calls.join_user(user, lobby))

    def remove_user(self, user: str, lobby: str) -> UsersRemoved:
        """Takes `user`'s connections out of `lobby` (v2: `left` reason `removed`; v1: 4009)."""
        return self._run(_Calls.remove_user(user, lobby))

    def stats(self) -> Stats:
        """Connections, capacity, lobbies, users, counters, rejections and closes by reason."""
        return self._run(_Calls.stats())

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return self._run(_Calls.openapi())

    def metrics(self) -> str:
        """`/metrics`: the Prometheus text (on the same listener as the API)."""
        return _text(self._client.get("/metrics"))

    def health(self) -> Health:
        """`/healthz` (alive) and `/readyz` (ready; 503 while draining), on the clients'
        listener: `health_url` when the API has its own (`admin_bind`). Needs no key."""
        return _health(
            self._client.get(f"{self._health_url}/healthz"),
            self._client.get(f"{self._health_url}/readyz"),
        )

    def close(self) -> None:
        """Closes the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> SwitchboardAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSwitchboardAPI:
    """The HTTP API for asyncio (httpx.AsyncClient); the same calls as `SwitchboardAPI`.

    One instance keeps one keep-alive pool: create it once per process (say, in a FastAPI
    lifespan), not per request.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
        health_url: str | None = None,
    ) -> None:
        self._health_url = (health_url or base_url).rstrip("/")
        self._client = client or httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout
        )
        if client is not None:
            self._client.base_url = httpx.URL(base_url)
            self._client.headers.update(_headers(api_key))

    async def _run(self, call: _Call[T]) -> T:
        return _result(call, await self._client.send(_build(self._client, call)))

    async def broadcast(
        self, lobby: str, data: Any, *, exclude_user: str | None = None
    ) -> Delivered:
        """See `SwitchboardAPI.broadcast`."""
        return await self._run(_Calls.broadcast(lobby, data, exclude_user))

    async def send_to_user(self, user: str, data: Any) -> Delivered:
        """See `SwitchboardAPI.send_to_user`."""
        return await self._run(_Calls.send_to_user(user, data))

    async def send_to_connection(self, connection_id: str, data: Any) -> Delivered:
        """See `SwitchboardAPI.send_to_connection`."""
        return await self._run(_Calls.send_to_connection(connection_id, data))

    async def lobbies(self) -> list[LobbyInfo]:
        """See `SwitchboardAPI.lobbies`."""
        return await self._run(_Calls.lobbies())

    async def presence(self, lobby: str) -> LobbyPresence:
        """See `SwitchboardAPI.presence`."""
        return await self._run(_Calls.presence(lobby))

    async def kick_user(self, user: str) -> Closed:
        """See `SwitchboardAPI.kick_user`."""
        return await self._run(_Calls.kick_user(user))

    async def kick_connection(self, connection_id: str) -> Closed:
        """See `SwitchboardAPI.kick_connection`."""
        return await self._run(_Calls.kick_connection(connection_id))

    async def connection(self, connection_id: str) -> ConnectionInfo:
        """See `SwitchboardAPI.connection`."""
        return await self._run(_Calls.connection(connection_id))

    async def join_user(self, user: str, lobby: str) -> UsersJoined:
        """See `SwitchboardAPI.join_user`."""
        return await self._run(_Calls.join_user(user, lobby))

    async def remove_user(self, user: str, lobby: str) -> UsersRemoved:
        """See `SwitchboardAPI.remove_user`."""
        return await self._run(_Calls.remove_user(user, lobby))

    async def stats(self) -> Stats:
        """See `SwitchboardAPI.stats`."""
        return await self._run(_Calls.stats())

    async def openapi(self) -> dict[str, Any]:
        """See `SwitchboardAPI.openapi`."""
        return await self._run(_Calls.openapi())

    async def metrics(self) -> str:
        """See `SwitchboardAPI.metrics`."""
        return _text(await self._client.get("/metrics"))

    async def health(self) -> Health:
        """See `SwitchboardAPI.health`."""
        return _health(
            await self._client.get(f"{self._health_url}/healthz"),
            await self._client.get(f"{self._health_url}/readyz"),
        )

    async def aclose(self) -> None:
        """Closes the HTTP connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncSwitchboardAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
