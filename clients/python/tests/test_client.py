"""The asyncio client against the real server: joins, acks, presence, direct messages, health
pings, recovery after a cut mid-stream and after a server restart, close-code rules, and
token refresh."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest

from switchboard_client import (
    AsyncSwitchboardAPI,
    Backoff,
    Client,
    ConnectionClosedError,
    Direct,
    Disconnected,
    HealthPing,
    Left,
    MemberJoined,
    MemberLeft,
    Message,
    Recovered,
    RequestError,
    Welcome,
    verify_rpc,
)

from .conftest import (
    API_KEY,
    JWT_SECRET,
    CutProxy,
    HeldBackend,
    Server,
    ServerFactory,
    jwt,
    within,
)

FAST = Backoff(initial_s=0.05, max_s=0.2)


@pytest.fixture(scope="module")
def v2_server(start_server: ServerFactory) -> Server:
    return start_server(
        {
            "SWITCHBOARD_API__KEY": API_KEY,
            "SWITCHBOARD_LIMITS__MAX_LOBBIES_PER_CONNECTION": "4",
            "SWITCHBOARD_HEALTH__PING_INTERVAL_MS": "300",
            "SWITCHBOARD_HEALTH__PONG_TIMEOUT_MS": "300",
        }
    )


async def test_join_broadcast_ack_presence_direct_and_leave(v2_server: Server) -> None:
    async with (
        Client(v2_server.ws_url, token="ann") as ann,
        Client(v2_server.ws_url, token="ben") as ben,
    ):
        ann_events, ben_events = ann.events(), ben.events()
        room = await within(ann.join("hall"))
        assert room.joined is not None and room.joined.offset == 0
        await within(ben.join("hall"))
        assert (await within(ann_events.next(MemberJoined))).user_id == "ben"
        assert await within(room.presence()) == ["ann", "ben"]

        first = await within(room.broadcast({"text": "one"}))
        second = await within(ben.broadcast("hall", {"text": "two"}))
        assert (first, second) == (1, 2)
        for events in (ann_events, ben_events):
            got = [await within(events.next(Message)) for _ in range(2)]
            assert [(m.sender, m.data["text"], m.offset) for m in got] == [
                ("ann", "one", 1),
                ("ben", "two", 2),
            ]
        # exclude_self: not echoed to the sender, and counted as seen (for recovery).
        third = await within(ann.broadcast("hall", {"text": "three"}, exclude_self=True))
        assert third == 3 and room.offset == 3
        assert (await within(ben_events.next(Message))).offset == 3

        await within(ann.direct("ben", {"psst": True}))
        direct = await within(ben_events.next(Direct))
        assert direct.sender == "ann" and direct.data == {"psst": True}

        await within(ben.leave("hall"))
        assert ben.room("hall") is None
        assert (await within(ann_events.next(MemberLeft))).user_id == "ben"
        await within(ben.leave("hall"))  # idempotent
    # close(): Disconnected, then every room ends, then the stream ends.
    tail = [event async for event in ann_events if isinstance(event, (Left, Disconnected))]
    assert tail == [
        Disconnected(1000, "client_closed", None, None, False, None, 0),
        Left("hall", "closed"),
    ]
    assert ann.state == "closed"


async def test_requests_fail_with_the_servers_codes(v2_server: Server) -> None:
    async with Client(v2_server.ws_url, token="cid") as client:
        with pytest.raises(RequestError) as caught:
            await within(client.join("no spaces allowed"))
        assert caught.value.code == "invalid_lobby"
        for n in range(4):
            await within(client.join(f"many-{n}"))
        with pytest.raises(RequestError) as caught:
            await within(client.join("one-too-many"))
        assert caught.value.code == "too_many_lobbies"
        assert client.room("one-too-many") is None
        with pytest.raises(RequestError) as caught:
            await within(client.broadcast("not-joined", {"x": 1}))
        assert caught.value.code == "not_allowed"
        # No RPC backend here: the server answers rpc with unknown_type.
        with pytest.raises(RequestError) as caught:
            await within(client.rpc("add", {"a": 1, "b": 2}))
        assert caught.value.code == "unknown_type"
        # The connection stays usable after every refusal.
        assert await within(client.presence("many-0")) == ["cid"]


async def test_health_pings_are_answered(v2_server: Server) -> None:
    """The server pings every 300 ms and closes 4004 after 600 ms of silence: three pings
    answered on a quiet connection, and it is still the same connection."""
    async with Client(v2_server.ws_url, token="dee") as client:
        heard: asyncio.Queue[HealthPing] = asyncio.Queue()

        async def on_ping(ping: HealthPing) -> None:  # a coroutine callback: its own task
            await heard.put(ping)

        unsubscribe = client.on(HealthPing, on_ping)
        assert client.welcome is not None
        first_id = client.welcome.connection_id
        stamps = [(await within(heard.get())).timestamp for _ in range(3)]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3
        unsubscribe()
        assert client.state == "open" and client.welcome.connection_id == first_id
        room = await within(client.join("still-here"))
        messages = client.messages()
        await within(room.broadcast("after the pings"))
        assert (await within(anext(messages))).data == "after the pings"


async def test_recovery_after_the_socket_dies_mid_stream_in_every_lobby(
    v2_server: Server,
) -> None:
    """A backend publishes to three lobbies while the connection is cut (twice): every
    message arrives once, in order, in every lobby, and each lobby reports `recovered`."""
    proxy = await CutProxy(v2_server.port).start()
    lobbies = ["rec-a", "rec-b", "rec-c"]
    per_lobby = 60
    client = Client(proxy.ws_url, token="eve", backoff=FAST)
    seen: dict[str, list[int]] = defaultdict(list)
    recovered: list[Recovered] = []
    disconnects: list[Disconnected] = []
    cut_at = {20, 40}
    cuts = asyncio.Event()
    done = asyncio.Event()

    def on_message(message: Message) -> None:
        assert message.offset is not None
        seen[message.lobby].append(message.offset)
        total = sum(len(v) for v in seen.values())
        if total in cut_at:
            proxy.cut()
            cut_at.discard(total)
            if not cut_at:
                cuts.set()
        if all(len(seen[lobby]) >= per_lobby for lobby in lobbies):
            done.set()

    client.on(Message, on_message)
    client.on(Recovered, recovered.append)
    client.on(Disconnected, disconnects.append)
    await within(client.connect())
    for lobby in lobbies:
        await within(client.join(lobby))
    async with AsyncSwitchboardAPI(v2_server.http_url, API_KEY) as api:
        for n in range(per_lobby):
            for lobby in lobbies:
                await within(api.broadcast(lobby, {"n": n}))
        await within(cuts.wait())
        await within(done.wait())
    assert {lobby: seen[lobby] for lobby in lobbies} == {
        lobby: list(range(1, per_lobby + 1)) for lobby in lobbies
    }
    assert len(disconnects) == 2 and all(d.will_reconnect for d in disconnects)
    assert proxy.connections == 3
    # Each rejoin asked for what it missed and got it all.
    assert recovered and all(r.ok for r in recovered)
    assert {r.lobby for r in recovered} == set(lobbies)
    await client.close()
    await proxy.close()


async def test_a_server_restart_recovers_false_then_goes_live(start_server: ServerFactory) -> None:
    server = start_server({"SWITCHBOARD_API__KEY": API_KEY})
    client = Client(server.ws_url, token="fay", backoff=FAST)
    events = client.events()
    await within(client.connect())
    room = await within(client.join("restart"))
    async with AsyncSwitchboardAPI(server.http_url, API_KEY) as api:
        await within(api.broadcast("restart", "before"))
    assert (await within(events.next(Message))).data == "before"
    old_epoch = room.epoch
    server.restart()
    gone = await within(events.next(Disconnected))
    assert gone.will_reconnect and gone.code == 1006
    await within(events.next(Welcome))
    recovered = await within(events.next(Recovered))
    assert (recovered.lobby, recovered.ok) == ("restart", False)
    assert room.epoch != old_epoch
    async with AsyncSwitchboardAPI(server.http_url, API_KEY) as api:
        await within(api.broadcast("restart", "after"))
    live = await within(events.next(Message))
    assert (live.data, live.offset) == ("after", 1)
    await client.close()


async def test_never_reconnect_after_replaced(v2_server: Server) -> None:
    first = Client(v2_server.ws_url, token="gus", backoff=FAST)
    events = first.events()
    await within(first.connect())
    await within(first.join("dup"))
    async with Client(v2_server.ws_url, token="gus") as second:
        gone = await within(events.next(Disconnected))
        assert (gone.code, gone.reason, gone.will_reconnect) == (4003, "replaced", False)
        assert first.state == "closed"
        with pytest.raises(RequestError) as caught:
            await within(first.join("dup"))
        assert caught.value.code == "closed"
        assert second.state == "open"


async def test_goodbye_retry_after_is_honoured(start_server: ServerFactory) -> None:
    """A full server refuses with a goodbye (4002 server_full, retry_after_ms 2000-10000):
    the client waits at least that long before its next attempt, even with a zero backoff."""
    server = start_server({"SWITCHBOARD_LIMITS__MAX_CONNECTIONS": "1"})
    async with Client(server.ws_url, token="hal") as holder:
        refused = Client(server.ws_url, token="ivy", random=lambda: 0.0)
        events = refused.events()
        connecting = asyncio.ensure_future(refused.connect())
        first = await within(events.next(Disconnected))
        first_at = time.monotonic()
        assert (first.code, first.reason) == (4002, "server_full")
        assert first.goodbye is not None and 2000 <= first.goodbye.retry_after_ms < 10000
        assert first.will_reconnect and first.retry_in == first.goodbye.retry_after_ms / 1000
        second = await within(events.next(Disconnected), 12)
        assert time.monotonic() - first_at >= first.goodbye.retry_after_ms / 1000 - 0.05
        assert second.code == 4002 and second.attempt == 2
        await refused.close()
        with pytest.raises(ConnectionClosedError):
            await within(connecting)
        assert holder.state == "open"


@pytest.fixture(scope="module")
def jwt_server(start_server: ServerFactory) -> Server:
    return start_server({"SWITCHBOARD_AUTH__JWT_SECRET": JWT_SECRET}, dev=False)


async def test_unauthorized_stops_for_good(jwt_server: Server) -> None:
    client = Client(jwt_server.ws_url, token="not-a-jwt")
    with pytest.raises(ConnectionClosedError) as caught:
        await within(client.connect())
    assert caught.value.close_code == 4001
    assert client.state == "closed"


async def test_the_token_is_refreshed_before_it_expires(jwt_server: Server) -> None:
    """Tokens live 3 s; the client refreshes each about 1 s after it got it, through
    `get_token`, on the same connection, well past the first token's expiry."""
    calls = 0
    enough = asyncio.Event()

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        if calls >= 5:
            enough.set()
        return jwt("joy", exp_in_s=3)

    client = Client(jwt_server.ws_url, get_token=get_token)
    disconnects: list[Disconnected] = []
    client.on(Disconnected, disconnects.append)
    welcome = await within(client.connect())
    assert welcome.token_expires_at is not None
    first_expiry = welcome.token_expires_at
    await within(client.join("fresh"))
    await within(enough.wait())
    assert time.time() * 1000 > first_expiry  # the first token is dead by now
    assert disconnects == []
    assert client.welcome is not None and client.welcome.connection_id == welcome.connection_id
    assert client.token_expires_at is not None and client.token_expires_at > first_expiry
    assert await within(client.presence("fresh")) == ["joy"]
    await client.close()


async def test_rpc_calls_are_bounded_and_answered_by_id(start_server: ServerFactory) -> None:
    """One call waiting per connection (`webhook.rpc_concurrency` = 1): a second call is
    refused `rate_limited` at once while the first waits; the held call is signed, carries
    the user, and its answer resolves it."""
    backend = await HeldBackend().start()
    server = start_server(
        {
            "SWITCHBOARD_WEBHOOK__RPC_URL": f"http://127.0.0.1:{backend.port}/rpc",
            "SWITCHBOARD_WEBHOOK__SECRET": "rpc-secret",
            "SWITCHBOARD_WEBHOOK__RPC_CONCURRENCY": "1",
        }
    )
    async with Client(server.ws_url, token="kim") as client:
        first = asyncio.ensure_future(client.rpc("slow", {"n": 1}))
        headers, body, answer = await within(backend.calls.get())
        call = verify_rpc(["rpc-secret"], headers, body)
        assert (call.user_id, call.method, call.data) == ("kim", "slow", {"n": 1})
        with pytest.raises(RequestError) as caught:
            await within(client.rpc("second"))
        assert caught.value.code == "rate_limited"
        await within(client.join("meanwhile"))  # the connection is not held by the call
        answer.set_result(b'{"done":true}')
        assert await within(first) == {"done": True}
    await backend.close()


async def test_a_silent_connection_is_dropped_and_waiting_requests_go_out_after_reconnect(
    v2_server: Server,
) -> None:
    """A pulled cable (the proxy drops every byte, closes nothing): after twice the ping
    interval of silence the client drops the connection itself (4000 liveness_timeout) and
    reconnects; a broadcast made meanwhile waits and is sent on the new connection."""
    proxy = await CutProxy(v2_server.port).start()
    async with Client(proxy.ws_url, token="liv", backoff=FAST) as client:
        events = client.events()
        await within(client.join("quiet"))
        proxy.freeze()
        gone = await within(events.next(Disconnected))
        assert (gone.code, gone.reason, gone.will_reconnect) == (4000, "liveness_timeout", True)
        offset = await within(client.broadcast("quiet", {"sent": "while away"}))
        assert offset == 1
        assert proxy.connections == 2
        message = await within(events.next(Message))
        assert (message.data, message.offset) == ({"sent": "while away"}, 1)
    await proxy.close()


async def test_a_request_in_flight_when_the_connection_dies_fails_connection_lost(
    start_server: ServerFactory,
) -> None:
    backend = await HeldBackend().start()
    server = start_server(
        {
            "SWITCHBOARD_WEBHOOK__RPC_URL": f"http://127.0.0.1:{backend.port}/rpc",
            "SWITCHBOARD_WEBHOOK__SECRET": "rpc-secret",
        }
    )
    proxy = await CutProxy(server.port).start()
    async with Client(proxy.ws_url, token="lou", backoff=FAST) as client:
        events = client.events()
        call = asyncio.ensure_future(client.rpc("slow"))
        await within(backend.calls.get())
        proxy.cut()
        with pytest.raises(RequestError) as caught:
            await within(call)
        assert caught.value.code == "connection_lost"
        await within(events.next(Welcome))  # and the client is back
    await proxy.close()
    await backend.close()


async def test_token_expired_reconnects_with_a_fresh_token(jwt_server: Server) -> None:
    """4010 invites a reconnect after the goodbye's delay, with a fresh token from
    `get_token` (here the getter hands out the short-lived token until the server closed the
    connection, so that refreshing cannot save it: a fresh token handed to a refresh just
    before the expiry would, and the test would wait for a 4010 that never comes)."""
    expires = int(time.time()) + 2
    short = jwt("max", exp_in_s=None, exp=expires)
    calls = 0
    closed = False

    def get_token() -> str:
        nonlocal calls
        calls += 1
        return jwt("max") if closed else short

    def on_close(_: Disconnected) -> None:
        nonlocal closed
        closed = True

    client = Client(jwt_server.ws_url, get_token=get_token, backoff=FAST)
    client.on(Disconnected, on_close)
    events = client.events()
    first = await within(client.connect())
    expired = await within(events.next(Disconnected))
    assert (expired.code, expired.reason, expired.will_reconnect) == (4010, "token_expired", True)
    assert expired.goodbye is not None and expired.retry_in is not None
    assert expired.retry_in >= expired.goodbye.retry_after_ms / 1000
    again = await within(events.next(Welcome))
    assert again.connection_id != first.connection_id
    assert again.token_expires_at is not None and again.token_expires_at > expires * 1000
    assert calls >= 2
    await client.close()
