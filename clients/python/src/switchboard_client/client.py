"""The asyncio client: one protocol-v2 WebSocket in many lobbies, kept alive across failures.

The rules are the TypeScript client's (clients/typescript/src/client.ts), so that a fleet of
mixed clients behaves alike towards the server:

- The token (or `get_token()`) is asked before every connect and reconnect.
- `health_ping` is answered at once with `health_pong` echoing its `timestamp`.
- After a close: never reconnect after 4001 / 4003 / 4009; otherwise wait an exponential
  backoff with full jitter, and at least the `goodbye`'s `retry_after_ms`.
- Liveness: no server traffic for `liveness_factor` x `ping_interval_ms` means the connection
  is dead even if TCP says nothing (a pulled cable): it is dropped and retried.
- Requests carry an `id` and are matched to their answers (`joined`, `left`, `presence`,
  `ack`, `rpc_result`, or `error`). Requests made while not connected wait in a bounded queue
  and go out after the next `welcome`; a request already sent when the connection drops fails
  with `connection_lost` (it may or may not have been applied: only the caller knows whether
  repeating it is safe).
- Recovery: each lobby keeps its epoch and the last offset seen; after a reconnect every lobby
  is rejoined with its own `since` / `epoch`, so the missed messages arrive first, in order,
  exactly once, then `Recovered`.
- A token that expires (`welcome.token_expires_at`) is refreshed through `get_token()` before
  it does, without reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from .closecodes import CLIENT_LIVENESS_CODE, close_code_info, reconnect_rule
from .errors import ConnectionClosedError, RequestError
from .events import (
    ConnectionState,
    Direct,
    Disconnected,
    Event,
    Goodbye,
    HealthPing,
    Joined,
    Left,
    MemberJoined,
    MemberLeft,
    Message,
    Presence,
    Recovered,
    ServerError,
    StateChanged,
    UnknownFrame,
    Welcome,
)
from .timing import DEFAULT_BACKOFF, Backoff, backoff_delay, refresh_delay, refresh_retry_delay

__all__ = ["Client", "EventStream", "Room"]

log = logging.getLogger("switchboard_client")

AsyncTimeout = asyncio.TimeoutError
"""What `asyncio.wait_for` raises: the builtin TimeoutError from Python 3.11 on, a class of
its own in 3.10 (which `except TimeoutError` would not catch)."""

SUBPROTOCOL_V2 = Subprotocol("switchboard.v2")
E = TypeVar("E")
Frame = dict[str, Any]
TokenSource = Callable[[], str | Awaitable[str | None] | None]

_ANSWER = {"join": "joined", "leave": "left", "presence": "presence", "rpc": "rpc_result"}
"""The answer a request gets when it succeeds (anything else: `ack`)."""


class Room:
    """One lobby this client is in (or joining). It keeps the lobby's epoch and the offset of
    the last message seen, which is what a rejoin needs to recover exactly what was missed."""

    def __init__(self, client: Client, lobby: str) -> None:
        self._client = client
        self.lobby = lobby
        self.epoch: str | None = None
        """The lobby's history epoch (from the last `joined`), None before the first."""
        self.offset = 0
        """The offset of the last message seen (or of the last `joined`, if none since)."""
        self.joined: Joined | None = None
        """The last `joined` (None until the first)."""
        self.active = True
        """False once the room ended (left, kicked, a failed rejoin, the client closed)."""
        self._resuming = False
        self._ready: asyncio.Future[Room] = asyncio.get_running_loop().create_future()

    def _join_frame(self) -> Frame:
        frame: Frame = {"type": "join", "lobby": self.lobby}
        self._resuming = self.epoch is not None
        if self.epoch is not None:
            frame["since"] = self.offset
            frame["epoch"] = self.epoch
        return frame

    def _on_joined(self, frame: Frame) -> Joined:
        offset = int(frame.get("offset") or 0)
        epoch = str(frame.get("epoch") or "")
        rejoin = self.joined is not None
        if epoch != self.epoch or not self._resuming:
            # First join, or the lobby's history was lost (a new epoch): tracking restarts.
            self.epoch = epoch
            self.offset = offset
        self._resuming = False
        event = Joined(self.lobby, offset, epoch, bool(frame.get("presence_events")), rejoin)
        self.joined = event
        if not self._ready.done():
            self._ready.set_result(self)
        return event

    def _on_message(self, offset: int | None) -> None:
        if offset is None or self.epoch is None:
            return
        if offset > self.offset:
            self.offset = offset
        else:
            # The server never repeats an offset (replay and live traffic meet without
            # overlap), so a smaller one means the lobby's numbering restarted under a new
            # epoch: deliver it, and forget the old epoch (the next rejoin starts afresh).
            self.epoch = None
            self.offset = 0

    def _on_recovered(self, ok: bool) -> None:
        baseline = self.joined.offset if self.joined is not None else 0
        if not ok and baseline > self.offset:
            # What was missed is lost: the next recovery starts from this join.
            self.offset = baseline

    def _end(self, error: BaseException | None) -> None:
        self.active = False
        if not self._ready.done():
            if error is not None:
                self._ready.set_exception(error)
                self._ready.exception()  # retrieved: nobody may be waiting
            else:
                self._ready.cancel()

    async def broadcast(self, data: Any, *, exclude_self: bool = False) -> int:
        """See `Client.broadcast`."""
        return await self._client.broadcast(self.lobby, data, exclude_self=exclude_self)

    async def presence(self) -> list[str]:
        """See `Client.presence`."""
        return await self._client.presence(self.lobby)

    async def leave(self) -> None:
        """See `Client.leave`."""
        await self._client.leave(self.lobby)

    def __repr__(self) -> str:
        return f"Room({self.lobby!r}, epoch={self.epoch!r}, offset={self.offset})"


class _Pending:
    """A request waiting for its answer."""

    def __init__(self, frame: Frame, expect: str) -> None:
        self.frame = frame
        self.expect = expect
        self.sent = False
        self.future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()

    def fail(self, error: RequestError) -> None:
        if not self.future.done():
            self.future.set_exception(error)
            self.future.exception()  # retrieved: a caller that timed out is gone


class EventStream:
    """An async iterator over the client's events from the moment it was created (not from
    the first `__anext__`: nothing between the two is lost). It ends when the client closes
    for good. Unbounded: a consumer that stops reading should `close()` it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._ended = False

    def _put(self, event: Event | None) -> None:
        self._queue.put_nowait(event)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._ended = True
            self._client._streams.discard(self)
            raise StopAsyncIteration
        return event

    async def next(self, kind: type[E], timeout: float | None = None) -> E:
        """The next event of type `kind` (others are skipped), within `timeout` seconds
        (raises TimeoutError) or StopAsyncIteration if the client closed first."""

        async def find() -> E:
            async for event in self:
                if isinstance(event, kind):
                    return event
            raise StopAsyncIteration

        return await asyncio.wait_for(find(), timeout)

    def close(self) -> None:
        """Stops receiving events."""
        self._client._streams.discard(self)
        self._ended = True


class Client:
    """A protocol-v2 connection to a Switchboard server, for asyncio.

    ```python
    async with Client("ws://127.0.0.1:8080", token="alice") as client:
        room = await client.join("lobby-1")
        offset = await room.broadcast({"text": "hi"})
        async for event in client.events():
            ...
    ```

    `url`: the server's `ws://host:port` (or `http://`); the client opens `{url}/ws`.
    `token` or `get_token` (sync or async, called before every connect and for refreshes;
    wins over `token`); neither for a server whose connect proxy admits by cookie.
    `headers`: extra handshake headers (say, that session `Cookie`). `backoff`: the reconnect
    backoff; `random`: its jitter source (tests). `request_timeout`: default deadline of every
    request, seconds. `max_queue`: requests kept while not connected. `liveness_factor`:
    server silence, in ping intervals, after which the connection is dead.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        headers: Mapping[str, str] | None = None,
        reconnect: bool = True,
        backoff: Backoff = DEFAULT_BACKOFF,
        request_timeout: float = 10.0,
        connect_timeout: float = 15.0,
        liveness_factor: float = 2.0,
        max_queue: int = 100,
        max_message_bytes: int = 16 * 1024 * 1024,
        random: Callable[[], float] = _random.random,
    ) -> None:
        base = url.rstrip("/")
        if base.startswith("http://") or base.startswith("https://"):
            base = "ws" + base[4:]
        self.url = base
        self._token = token
        self._get_token = get_token
        self._headers = dict(headers or {})
        self._reconnect = reconnect
        self._backoff = backoff
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._liveness_factor = liveness_factor
        self._max_queue = max_queue
        self._max_message_bytes = max_message_bytes
        self._random = random

        self._state: ConnectionState = "idle"
        self._welcome: Welcome | None = None
        self._ws: ClientConnection | None = None
        self._outgoing: asyncio.Queue[str] | None = None
        self._generation = 0
        """Counts connections, so that a task of an old connection knows it is stale."""
        self._holding = False
        """After a welcome, until every rejoin is answered: new requests wait in the outbox."""
        self._run_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_requested: asyncio.Event | None = None
        self._first_welcome: asyncio.Future[Welcome] | None = None
        self._closed_error: ConnectionClosedError | None = None
        self._attempt = 0
        self._goodbye: Goodbye | None = None
        self._rooms: dict[str, Room] = {}
        self._pending: dict[str, _Pending] = {}
        self._outbox: list[_Pending] = []
        self._next_id = 0
        self._server_skew_ms = 0.0
        self._token_expires_at: int | None = None
        self._streams: set[EventStream] = set()
        self._callbacks: list[tuple[type[Any], Callable[[Any], Any]]] = []
        self._callback_tasks: set[asyncio.Task[Any]] = set()

    # ---- public surface ------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The connection state."""
        return self._state

    @property
    def welcome(self) -> Welcome | None:
        """The current connection's `welcome`, None while not connected."""
        return self._welcome

    @property
    def rooms(self) -> dict[str, Room]:
        """The lobbies this client is in or joining, by code (a copy)."""
        return dict(self._rooms)

    @property
    def token_expires_at(self) -> int | None:
        """The current credential's expiry (ms, server clock), None if it never expires."""
        return self._token_expires_at

    async def connect(self, timeout: float | None = None) -> Welcome:
        """Starts the connection and waits for the first `welcome` (retrying meanwhile, as
        after any loss). Raises `ConnectionClosedError` if the server refuses for good (4001
        unauthorized...) and TimeoutError after `timeout` seconds."""
        if self._run_task is None:
            loop = asyncio.get_running_loop()
            self._first_welcome = loop.create_future()
            self._close_requested = asyncio.Event()
            self._set_state("connecting")
            self._run_task = asyncio.create_task(self._run(), name="switchboard-client")
        if self._closed_error is not None:
            raise self._closed_error
        assert self._first_welcome is not None
        return await asyncio.wait_for(asyncio.shield(self._first_welcome), timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """Closes the connection (1000) for good: `Disconnected` (1000 `client_closed`), pending
        requests fail with `closed`, every room ends (`Left`, reason `closed`), and event
        streams end. A closed client does not connect again: make a new one."""
        if self._closing:
            if self._run_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._run_task), timeout)
            return
        self._closing = True
        was_running = self._state not in ("idle", "closed")
        if self._close_requested is not None:
            self._close_requested.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(1000, "client_closed"), timeout)
        if self._run_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._run_task), timeout)
            except (AsyncTimeout, asyncio.CancelledError):
                self._run_task.cancel()
        if was_running and self._closed_error is None:
            # As the TypeScript client: a close() is a disconnect that is not followed by a
            # reconnect.
            self._emit(Disconnected(1000, "client_closed", None, None, False, None, self._attempt))
        self._finish(ConnectionClosedError("closed", "the client was closed", 1000))

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def events(self) -> EventStream:
        """A new stream of every event from now on (see `EventStream`)."""
        stream = EventStream(self)
        if self._state == "closed":
            stream._put(None)
        else:
            self._streams.add(stream)
        return stream

    def on(
        self, kind: type[E], callback: Callable[[E], Awaitable[None] | None]
    ) -> Callable[[], None]:
        """Calls `callback` with every event of type `kind` (`Message`, `Disconnected`...; use
        `object` for all). A coroutine callback runs as its own task, so a slow one never holds
        the connection's reading. Returns a function that unsubscribes."""
        entry: tuple[type[Any], Callable[[Any], Any]] = (kind, callback)
        self._callbacks.append(entry)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(entry)

        return unsubscribe

    def room(self, lobby: str) -> Room | None:
        """The room of `lobby`, if this client is in it or joining it."""
        return self._rooms.get(lobby)

    async def join(self, lobby: str, *, timeout: float | None = None) -> Room:
        """Joins `lobby` and returns its `Room` once the server answered `joined`. Raises
        `RequestError` with the server's code (`lobby_full`, `not_allowed`,
        `too_many_lobbies`, `invalid_lobby`) or `timeout` / `closed`. Called while not
        connected, the join goes out after the next `welcome`. After a reconnect the room is
        rejoined by itself, recovering what it missed."""
        self._check_open_for_requests()
        room = self._rooms.get(lobby)
        if room is not None and room.joined is not None and room.active:
            return room
        if room is None:
            room = Room(self, lobby)
            self._rooms[lobby] = room
            if self._state == "open":
                self._send_join(room)
            # else: every room is joined right after the next welcome
        deadline = self._request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(room._ready), deadline)
        except AsyncTimeout:
            if room.joined is None and self._rooms.get(lobby) is room:
                # Nobody waits for a room that never got in: give it up, and leave in case
                # the join succeeds late on the server.
                self._drop_room(room, RequestError("timeout", f"no answer to join {lobby}"))
                self._send_now({"type": "leave", "lobby": lobby})
            raise RequestError(
                "timeout", f"no answer to join {lobby} within {deadline} s"
            ) from None

    async def leave(self, lobby: str, *, timeout: float | None = None) -> None:
        """Leaves `lobby` (idempotent). Its room ends at once; nothing more comes from it."""
        room = self._rooms.pop(lobby, None)
        if room is not None:
            for key, pending in list(self._pending.items()):
                if pending.frame.get("type") == "join" and pending.frame.get("lobby") == lobby:
                    self._settle(key)
            room._end(RequestError("left", f"room {lobby} was left"))
            self._emit(Left(lobby, "left"))
        if self._state != "open":
            return  # the server forgot the closed connection's lobbies already
        try:
            await self.request({"type": "leave", "lobby": lobby}, timeout=timeout)
        except RequestError as error:
            if error.code not in ("connection_lost", "closed"):
                raise

    async def broadcast(
        self, lobby: str, data: Any, *, exclude_self: bool = False, timeout: float | None = None
    ) -> int:
        """Broadcasts `data` to `lobby` and returns the offset the lobby gave it (from the
        `ack`), so the sender knows its place in the order. `exclude_self` skips only this
        connection."""
        frame: Frame = {"type": "broadcast", "lobby": lobby, "data": data}
        if exclude_self:
            frame["exclude_self"] = True
        ack = await self.request(frame, timeout=timeout)
        offset = ack.get("offset")
        offset = offset if isinstance(offset, int) else 0
        room = self._rooms.get(lobby)
        if (
            exclude_self
            and room is not None
            and room.epoch is not None
            and offset == room.offset + 1
        ):
            room.offset = offset  # our own message will not come back: it is seen
        return offset

    async def direct(self, to: str, data: Any, *, timeout: float | None = None) -> None:
        """Sends `data` to every connection of user `to` (nobody connected is not an error)."""
        await self.request({"type": "direct", "to": to, "data": data}, timeout=timeout)

    async def presence(self, lobby: str, *, timeout: float | None = None) -> list[str]:
        """The users in `lobby` (one this connection is in), each once, sorted."""
        answer = await self.request({"type": "presence", "lobby": lobby}, timeout=timeout)
        return [str(u) for u in answer.get("users", [])]

    async def rpc(self, method: str, data: Any = None, *, timeout: float | None = None) -> Any:
        """Calls `method` on the backend (the server POSTs it to `webhook.rpc_url`) and returns
        the answer's data. Raises `RequestError`: `rpc_failed` (the backend failed or was
        late), `rate_limited` (too many calls waiting on this connection), `unknown_type` (the
        server has no RPC backend), `timeout`, `connection_lost`..."""
        answer = await self.request(
            {"type": "rpc", "method": method, "data": data}, timeout=timeout
        )
        return answer.get("data")

    async def request(self, frame: Frame, *, timeout: float | None = None) -> Frame:
        """Sends any v2 frame with a fresh `id` and returns its answer (`joined`, `left`,
        `presence`, `rpc_result`, or `ack` for the rest, application messages included).
        Raises `RequestError` (the `error` frame's code, or `timeout`, `connection_lost`,
        `dropped`, `closed`)."""
        self._check_open_for_requests()
        pending = self._enqueue(frame)
        deadline = self._request_timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), deadline)
        except AsyncTimeout:
            key = str(pending.frame["id"])
            if self._settle(key) is not None:
                raise RequestError(
                    "timeout", f"no answer to {frame.get('type')} within {deadline} s", key
                ) from None
            return pending.future.result()  # answered just as the deadline passed

    # ---- requests ------------------------------------------------------------------------

    def _check_open_for_requests(self) -> None:
        if self._closed_error is not None or self._closing:
            raise RequestError("closed", "the client is closed")
        if self._run_task is None:
            raise RequestError("closed", "call connect() first")

    def _enqueue(self, frame: Frame) -> _Pending:
        self._next_id += 1
        key = f"py-{self._next_id}"
        sent = {**frame, "id": key}
        kind = str(frame.get("type"))
        pending = _Pending(sent, _ANSWER.get(kind, "ack"))
        self._pending[key] = pending
        if self._welcome is not None and self._ws is not None and not self._holding:
            self._transmit(pending)
        elif len(self._outbox) < self._max_queue:
            self._outbox.append(pending)
        else:
            self._settle(key)
            pending.fail(RequestError("dropped", "the outgoing queue is full", key))
        return pending

    def _transmit(self, pending: _Pending) -> None:
        pending.sent = True
        if not self._send_now(pending.frame):
            pending.fail(RequestError("connection_lost", "not connected", pending.frame["id"]))
            self._settle(str(pending.frame["id"]))

    def _send_now(self, frame: Frame) -> bool:
        """Queues `frame` for the connection's writer task, which sends in order (so a rejoin
        always goes out before the requests that waited for the connection)."""
        if self._ws is None or self._outgoing is None:
            return False
        self._outgoing.put_nowait(json.dumps(frame, separators=(",", ":")))
        return True

    def _settle(self, key: str) -> _Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None and pending in self._outbox:
            self._outbox.remove(pending)
        return pending

    def _send_join(self, room: Room) -> _Pending:
        """Sends a room's (re)join; answers are applied to the room in `_on_frame`."""
        pending = self._enqueue(room._join_frame())
        rejoin = room.joined is not None

        def done(future: asyncio.Future[Frame]) -> None:
            error = future.exception() if not future.cancelled() else None
            if not isinstance(error, RequestError):
                return
            if error.code in ("connection_lost", "closed"):
                return  # rejoined after the next welcome, or ended by close()
            if self._rooms.get(room.lobby) is room:
                self._drop_room(room, error)
                if rejoin:
                    self._emit(Left(room.lobby, "rejoin_failed", error.code))

        pending.future.add_done_callback(done)
        return pending

    def _drop_room(self, room: Room, error: BaseException) -> None:
        if self._rooms.get(room.lobby) is room:
            del self._rooms[room.lobby]
        room._end(error)

    # ---- events --------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        for stream in list(self._streams):
            stream._put(event)
        for kind, callback in list(self._callbacks):
            if not isinstance(event, kind):
                continue
            try:
                result = callback(event)
            except Exception:
                log.exception("switchboard: an event callback raised")
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._callback_tasks.add(task)
                task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("switchboard: an event callback raised", exc_info=task.exception())

    def _set_state(self, state: ConnectionState) -> None:
        if state == self._state:
            return
        previous, self._state = self._state, state
        self._emit(StateChanged(state, previous))

    # ---- the connection's life -----------------------------------------------------------

    async def _fetch_token(self) -> str | None:
        if self._get_token is not None:
            value = self._get_token()
            return await value if inspect.isawaitable(value) else value
        return self._token

    async def _run(self) -> None:
        """Connect, serve, and after every loss decide (close-code rules) and wait."""
        assert self._close_requested is not None
        while not self._closing:
            code, reason = 1006, "token_unavailable"
            try:
                token = await self._fetch_token()
            except Exception as error:  # the app's callback: any failure is a failed attempt
                log.warning("switchboard: get_token failed: %r", error)
            else:
                code, reason = await self._attempt_connection(token)
            if self._closing:
                break
            goodbye, self._goodbye = self._goodbye, None
            rule = reconnect_rule(code)
            for_good = rule == "never" or not self._reconnect
            self._connection_lost(for_good)
            info = close_code_info(code, reason or (goodbye.reason if goodbye else None))
            word = reason or (goodbye.reason if goodbye else "") or (info.reason if info else "")
            if for_good:
                self._emit(Disconnected(code, word, info, goodbye, False, None, self._attempt))
                self._finish(
                    ConnectionClosedError(word or "closed", f"closed with {code} {word}", code)
                )
                return
            self._attempt += 1
            delay = backoff_delay(self._attempt, self._backoff, self._random)
            if goodbye is not None:
                delay = max(delay, goodbye.retry_after_ms / 1000)
            self._emit(Disconnected(code, word, info, goodbye, True, delay, self._attempt))
            if self._closing:
                break
            self._set_state("reconnecting")
            with contextlib.suppress(AsyncTimeout):
                await asyncio.wait_for(self._close_requested.wait(), delay)

    async def _attempt_connection(self, token: str | None) -> tuple[int, str]:
        """One connection, from the handshake to its close: (close code, reason)."""
        url = f"{self.url}/ws" if token is None else f"{self.url}/ws?token={quote(token, safe='')}"
        try:
            ws = await connect(
                url,
                subprotocols=[SUBPROTOCOL_V2],
                additional_headers=self._headers,
                open_timeout=self._connect_timeout,
                ping_interval=None,  # the server pings; websockets answers its Pings itself
                compression=None,  # the server speaks no permessage-deflate
                max_size=self._max_message_bytes,
                proxy=None,
            )
        except InvalidStatus as error:
            return 1006, f"http_{error.response.status_code}"
        except (OSError, TimeoutError, AsyncTimeout, InvalidHandshake) as error:
            log.debug("switchboard: connect failed: %r", error)
            return 1006, "connection_failed"
        self._ws = ws
        self._generation += 1
        self._holding = False
        self._outgoing = asyncio.Queue()
        writer = asyncio.create_task(_write(ws, self._outgoing))
        try:
            return await self._serve(ws)
        finally:
            writer.cancel()
            self._ws = None
            self._outgoing = None
            self._welcome = None
            if self._refresh_task is not None:
                self._refresh_task.cancel()
                self._refresh_task = None

    async def _serve(self, ws: ClientConnection) -> tuple[int, str]:
        """Reads until the socket closes. Before `welcome` only a `goodbye` may come (a
        refusal: server_full, a shutdown...), then the close; the wait for it is bounded by
        `connect_timeout`, and afterwards silence by the liveness deadline."""
        try:
            while self._welcome is None:
                raw = await asyncio.wait_for(ws.recv(), self._connect_timeout)
                frame = _parse(raw)
                if frame is None:
                    continue
                if frame["type"] == "welcome":
                    self._on_welcome(Welcome.parse(frame))
                elif frame["type"] == "goodbye":
                    self._on_frame(frame)
            liveness = self._welcome.ping_interval_ms / 1000 * self._liveness_factor
            while True:
                raw = await asyncio.wait_for(ws.recv(), liveness if liveness > 0 else None)
                frame = _parse(raw)
                if frame is not None:
                    self._on_frame(frame)
        except AsyncTimeout:
            # No welcome in time, or the server went silent: the connection is dead whatever
            # TCP says.
            ws.transport.abort()
            return CLIENT_LIVENESS_CODE, "liveness_timeout"
        except ConnectionClosed:
            pass
        return ws.close_code or 1006, ws.close_reason or ""

    def _on_welcome(self, welcome: Welcome) -> None:
        self._welcome = welcome
        self._attempt = 0
        if welcome.server_time:
            self._server_skew_ms = welcome.server_time - time.time() * 1000
        # Every room is rejoined first, each with its own since/epoch, and what waited goes
        # out only once every rejoin is answered: a server may decide a join asynchronously
        # (a join proxy, cluster mode) and would refuse a broadcast to a lobby not yet joined.
        self._holding = False
        for pending in list(self._outbox):
            if pending.frame["type"] == "join" and pending.frame.get("lobby") in self._rooms:
                self._settle(str(pending.frame["id"]))  # the rejoin below replaces it
        rejoins = [self._send_join(room) for room in list(self._rooms.values())]
        if rejoins:
            self._holding = True
            task = asyncio.create_task(self._release_after(rejoins, self._generation))
            self._callback_tasks.add(task)  # held until done (the loop keeps weak references)
            task.add_done_callback(self._callback_done)
        else:
            self._flush()
        self._token_expires_at = welcome.token_expires_at
        if welcome.token_expires_at is not None:
            self._arm_refresh(welcome.token_expires_at)
        self._set_state("open")
        if self._first_welcome is not None and not self._first_welcome.done():
            self._first_welcome.set_result(welcome)
        self._emit(welcome)

    async def _release_after(self, rejoins: list[_Pending], generation: int) -> None:
        """Sends the requests that waited for the connection once the rejoins are answered
        (or after the request timeout: a rejoin that gets no answer must not hold them)."""
        await asyncio.wait([p.future for p in rejoins], timeout=self._request_timeout)
        if generation == self._generation and self._ws is not None:
            self._holding = False
            self._flush()

    def _flush(self) -> None:
        queued, self._outbox = self._outbox, []
        for pending in queued:
            self._transmit(pending)

    def _on_frame(self, frame: Frame) -> None:
        kind = frame["type"]
        fid = frame.get("id")
        pending: _Pending | None = None
        if isinstance(fid, str) and kind in (
            "joined",
            "left",
            "presence",
            "ack",
            "rpc_result",
            "error",
        ):
            candidate = self._pending.get(fid)
            if candidate is not None and (kind == "error" or kind == candidate.expect):
                pending = self._settle(fid)
        lobby = frame.get("lobby") if isinstance(frame.get("lobby"), str) else None
        room = self._rooms.get(lobby) if lobby is not None else None
        if kind == "health_ping":
            self._send_now({"type": "health_pong", "timestamp": frame.get("timestamp")})
            self._emit(HealthPing(int(frame.get("timestamp") or 0)))
        elif kind == "joined" and lobby is not None:
            if room is None and fid is None:
                # The backend joined this connection to a lobby: a room like the others.
                room = Room(self, lobby)
                self._rooms[lobby] = room
                event = room._on_joined(frame)
                self._emit(
                    Joined(lobby, event.offset, event.epoch, event.presence_events, False, True)
                )
            elif room is not None:
                self._emit(room._on_joined(frame))
        elif kind == "left" and lobby is not None:
            if pending is None and room is not None:
                # The server ended the membership (kicked, removed, not_allowed).
                reason = str(frame.get("reason") or "left")
                self._drop_room(room, RequestError(reason, f"left {lobby} ({reason})"))
                self._emit(Left(lobby, reason))
        elif kind == "message":
            offset = frame.get("offset")
            offset = offset if isinstance(offset, int) and not isinstance(offset, bool) else None
            if room is not None:
                room._on_message(offset)
            sender = frame.get("from")
            self._emit(
                Message(
                    lobby or "",
                    sender if isinstance(sender, str) else None,
                    frame.get("data"),
                    offset,
                    frame,
                )
            )
        elif kind == "recovered":
            ok = bool(frame.get("ok"))
            if room is not None:
                room._on_recovered(ok)
            self._emit(Recovered(lobby or "", ok))
        elif kind == "presence":
            self._emit(Presence(lobby or "", [str(u) for u in frame.get("users", [])], frame))
        elif kind in ("member_joined", "member_left"):
            cls = MemberJoined if kind == "member_joined" else MemberLeft
            self._emit(cls(lobby or "", str(frame.get("user_id", ""))))
        elif kind == "direct":
            sender = frame.get("from")
            self._emit(
                Direct(sender if isinstance(sender, str) else None, frame.get("data"), frame)
            )
        elif kind == "goodbye":
            goodbye = Goodbye(
                int(frame.get("code") or 0),
                str(frame.get("reason") or ""),
                int(frame.get("retry_after_ms") or 0),
            )
            self._goodbye = goodbye
            self._emit(goodbye)
        elif kind == "error":
            code, message = str(frame.get("code") or "error"), str(frame.get("message") or "")
            if pending is not None:
                pending.fail(RequestError(code, message, fid))
            self._emit(ServerError(code, message, fid))
        elif kind not in ("ack", "rpc_result", "joined", "left"):
            self._emit(UnknownFrame(kind, frame))
        if pending is not None and kind != "error" and not pending.future.done():
            pending.future.set_result(frame)

    def _connection_lost(self, for_good: bool) -> None:
        """Requests already sent fail with `connection_lost` (queued ones wait for the next
        connection); for good, everything fails with `closed` and every room ends."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            self._refresh_task = None
        for key, pending in list(self._pending.items()):
            if not for_good and not pending.sent:
                continue
            self._settle(key)
            if for_good:
                pending.fail(RequestError("closed", "the connection closed for good", key))
            else:
                pending.fail(RequestError("connection_lost", "the connection was lost", key))

    def _finish(self, error: ConnectionClosedError) -> None:
        """The client is closed for good: everything waiting learns it, streams end."""
        if self._closed_error is None:
            self._closed_error = error
        self._closing = True
        for key, pending in list(self._pending.items()):
            self._settle(key)
            pending.fail(RequestError("closed", "the client is closed", key))
        for lobby, room in list(self._rooms.items()):
            del self._rooms[lobby]
            was_in = room.joined is not None
            room._end(RequestError("closed", "the client is closed"))
            if was_in:
                self._emit(Left(lobby, "closed"))
        if self._first_welcome is not None and not self._first_welcome.done():
            self._first_welcome.set_exception(self._closed_error)
            self._first_welcome.exception()
        self._set_state("closed")
        for stream in list(self._streams):
            stream._put(None)
        self._streams.clear()

    # ---- token refresh -------------------------------------------------------------------

    def _server_now_ms(self) -> float:
        return time.time() * 1000 + self._server_skew_ms

    def _arm_refresh(self, expires_at: int, delay: float | None = None) -> None:
        self._token_expires_at = expires_at
        if self._get_token is None:
            return  # a static token cannot be refreshed: 4010 closes at the expiry
        if delay is None:
            delay = refresh_delay((expires_at - self._server_now_ms()) / 1000)
        if self._refresh_task is not None:
            self._refresh_task.cancel()
        self._refresh_task = asyncio.create_task(self._refresh_after(delay))

    async def _refresh_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._refresh_task = None
        try:
            token = await self._fetch_token()
            if token is None:
                return  # nothing to refresh with: the server closes with 4010 at the expiry
            ack = await self.request({"type": "refresh", "token": token})
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("switchboard: token refresh failed: %r", error)
            if self._state == "open" and self._token_expires_at is not None:
                remaining = (self._token_expires_at - self._server_now_ms()) / 1000
                self._arm_refresh(self._token_expires_at, refresh_retry_delay(remaining))
            return
        expires = ack.get("token_expires_at")
        if isinstance(expires, int):
            self._arm_refresh(expires)
        else:
            self._token_expires_at = None

    # ---- iteration sugar -----------------------------------------------------------------

    def messages(self) -> AsyncIterator[Message]:
        """Every `Message` from now on (a filtered `events()`, subscribed at once: not at the
        first `__anext__`, which would miss what arrives in between)."""
        stream = self.events()

        async def only_messages() -> AsyncIterator[Message]:
            async for event in stream:
                if isinstance(event, Message):
                    yield event

        return only_messages()


def _parse(raw: str | bytes) -> Frame | None:
    """A server frame, or None for anything that is not a JSON object with a string type."""
    try:
        frame = json.loads(raw)
    except ValueError:
        return None
    if isinstance(frame, dict) and isinstance(frame.get("type"), str):
        return frame
    return None


async def _write(ws: ClientConnection, outgoing: asyncio.Queue[str]) -> None:
    """Sends the connection's frames in order. A send that fails because the socket closed
    ends it: the close itself is handled by the reader (requests fail there)."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(await outgoing.get())
