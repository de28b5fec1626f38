"""Every HTTP API call, sync and async, against the real server, observed by real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from switchboard_client import (
    ApiError,
    AsyncSwitchboardAPI,
    Client,
    Direct,
    Disconnected,
    Joined,
    Left,
    Message,
    SwitchboardAPI,
)

from .conftest import API_KEY, Server, ServerFactory, within


@pytest.fixture
async def api(server: Server) -> AsyncIterator[AsyncSwitchboardAPI]:
    async with AsyncSwitchboardAPI(server.http_url, API_KEY) as api:
        yield api


@pytest.fixture
def sync_api(server: Server) -> SwitchboardAPI:
    return SwitchboardAPI(server.http_url, API_KEY)


async def connected(server: Server, user: str, *lobbies: str) -> Client:
    client = Client(server.ws_url, token=user, reconnect=False)
    await within(client.connect())
    for lobby in lobbies:
        await within(client.join(lobby))
    return client


async def test_health_stats_and_openapi(api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI) -> None:
    health = await api.health()
    assert health.alive and health.ready
    assert (await asyncio.to_thread(sync_api.health)).ready
    stats = await api.stats()
    assert stats.max_connections > 0 and stats.uptime_seconds >= 0
    assert "total_connections" in stats.raw
    sync_stats = await asyncio.to_thread(sync_api.stats)
    assert sync_stats.max_connections == stats.max_connections
    doc = await api.openapi()
    assert "/api/lobbies/{lobby}/broadcast" in doc["paths"]


async def test_broadcast_with_exclusion_reaches_the_lobby_but_the_excluded_user(
    server: Server, api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI
) -> None:
    alice = await connected(server, "alice", "news")
    bob = await connected(server, "bob", "news")
    alice_events, bob_events = alice.events(), bob.events()
    assert (await api.broadcast("news", {"n": 1}, exclude_user="bob")).delivered == 1
    sent = await asyncio.to_thread(sync_api.broadcast, "news", {"n": 2})
    assert sent.delivered == 2
    first = await within(alice_events.next(Message))
    assert (first.lobby, first.sender, first.data) == ("news", None, {"n": 1})
    assert (await within(alice_events.next(Message))).data == {"n": 2}
    # Bob's first message is the second one: the first skipped him.
    got = await within(bob_events.next(Message))
    assert got.data == {"n": 2} and got.offset == 2
    await alice.close()
    await bob.close()


async def test_send_to_user_and_lobbies_and_presence(
    server: Server, api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI
) -> None:
    carol = await connected(server, "carol", "room-a", "room-b")
    events = carol.events()
    assert (await api.send_to_user("carol", "psst")).delivered == 1
    assert (await asyncio.to_thread(sync_api.send_to_user, "carol", {"x": 1})).delivered == 1
    assert (await within(events.next(Direct))).data == "psst"
    direct = await within(events.next(Direct))
    assert direct.sender is None and direct.data == {"x": 1}
    # One connection, by its id.
    assert carol.welcome is not None
    connection_id = carol.welcome.connection_id
    assert (await api.send_to_connection(connection_id, [1])).delivered == 1
    sent = await asyncio.to_thread(sync_api.send_to_connection, connection_id, "two")
    assert sent.delivered == 1
    assert (await within(events.next(Direct))).data == [1]
    assert (await within(events.next(Direct))).data == "two"
    with pytest.raises(ApiError) as gone:
        await api.send_to_connection("nobody-1", 1)
    assert (gone.value.status, gone.value.code) == (404, "not_found")
    lobbies = {lobby.lobby: lobby for lobby in await api.lobbies()}
    assert lobbies["room-a"].connections == 1 and lobbies["room-a"].users == 1
    assert "room-b" in {lobby.lobby for lobby in await asyncio.to_thread(sync_api.lobbies)}
    presence = await api.presence("room-a")
    assert presence.lobby == "room-a" and presence.users == ["carol"]
    assert (await asyncio.to_thread(sync_api.presence, "room-b")).users == ["carol"]
    await carol.close()


async def test_connection_info_and_server_side_join_and_removal(
    server: Server, api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI
) -> None:
    dave = await connected(server, "dave", "start")
    events = dave.events()
    assert dave.welcome is not None
    connection_id = dave.welcome.connection_id
    info = await api.connection(connection_id)
    assert (info.id, info.user_id, info.protocol, info.lobbies) == (
        connection_id,
        "dave",
        2,
        ["start"],
    )
    assert info.connected_at > 0 and info.ip == "127.0.0.1"

    assert (await api.join_user("dave", "by-backend")).joined == 1
    joined = await within(events.next(Joined))
    assert joined.lobby == "by-backend" and joined.by_backend
    assert dave.room("by-backend") is not None
    sync_info = await asyncio.to_thread(sync_api.connection, connection_id)
    assert sorted(sync_info.lobbies) == ["by-backend", "start"]

    removed = await asyncio.to_thread(sync_api.remove_user, "dave", "by-backend")
    assert removed.removed == 1
    left = await within(events.next(Left))
    assert (left.lobby, left.reason) == ("by-backend", "removed")
    assert dave.room("by-backend") is None
    assert (await asyncio.to_thread(sync_api.join_user, "dave", "again")).joined == 1
    assert (await api.remove_user("dave", "again")).removed == 1
    await dave.close()


async def test_kicks_close_with_4009_and_the_client_does_not_come_back(
    server: Server, api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI
) -> None:
    erin = await connected(server, "erin", "k")
    frank = await connected(server, "frank", "k")
    erin_events, frank_events = erin.events(), frank.events()
    assert erin.welcome is not None
    assert (await api.kick_connection(erin.welcome.connection_id)).closed == 1
    assert (await asyncio.to_thread(sync_api.kick_user, "frank")).closed == 1
    for events in (erin_events, frank_events):
        gone = await within(events.next(Disconnected))
        assert (gone.code, gone.reason, gone.will_reconnect) == (4009, "kicked", False)
    assert erin.state == frank.state == "closed"
    assert (await api.kick_user("nobody-here")).closed == 0


async def test_errors_are_typed_with_the_servers_code(
    server: Server, api: AsyncSwitchboardAPI, sync_api: SwitchboardAPI
) -> None:
    with pytest.raises(ApiError) as caught:
        await api.connection("ffffffff-999999")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    with pytest.raises(ApiError) as caught:
        await api.broadcast("not a lobby!", {})
    assert (caught.value.status, caught.value.code) == (400, "invalid_lobby")
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(sync_api.presence, "bad/lobby")
    assert caught.value.code == "invalid_lobby"
    async with AsyncSwitchboardAPI(server.http_url, "wrong-key") as wrong:
        with pytest.raises(ApiError) as caught:
            await wrong.stats()
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with SwitchboardAPI(server.http_url) as keyless, pytest.raises(ApiError) as sync_caught:
        keyless.lobbies()
    assert sync_caught.value.code == "unauthorized"


async def test_a_separate_admin_listener(start_server: ServerFactory) -> None:
    """With `admin_bind` the API and /metrics move to their own listener; the probes stay
    with the clients'."""
    server = start_server(
        {"SWITCHBOARD_API__KEY": API_KEY, "SWITCHBOARD_ADMIN_BIND": "127.0.0.1:0"}
    )
    assert server.admin_port is not None and server.admin_port != server.port
    async with (
        AsyncSwitchboardAPI(server.admin_url, API_KEY, health_url=server.http_url) as api,
        Client(server.ws_url, token="otto") as otto,
    ):
        await within(otto.join("admin-test"))
        assert (await api.presence("admin-test")).users == ["otto"]
        assert (await api.health()).ready
        metrics = await api.metrics()
        assert "switchboard_connections 1" in metrics
    with SwitchboardAPI(server.admin_url, API_KEY, health_url=server.http_url) as sync_api:
        assert (await asyncio.to_thread(sync_api.health)).alive
        assert "switchboard_connections" in await asyncio.to_thread(sync_api.metrics)
    async with AsyncSwitchboardAPI(server.http_url, API_KEY) as wrong_listener:
        with pytest.raises(ApiError) as caught:
            await wrong_listener.stats()
        assert caught.value.status == 404
