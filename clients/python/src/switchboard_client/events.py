"""What the asyncio `Client` hears, as typed, frozen dataclasses.

Server frames (docs/protocol.md, "Protocol v2") become the events below; the client adds
`Disconnected` (a connection ended, and what happens next) and `StateChanged`. Every frame
event keeps the parsed frame in `raw` for fields a newer server may add.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .closecodes import CloseCodeInfo

__all__ = [
    "ConnectionState",
    "Direct",
    "Disconnected",
    "Event",
    "Goodbye",
    "HealthPing",
    "Joined",
    "Left",
    "MemberJoined",
    "MemberLeft",
    "Message",
    "Presence",
    "Recovered",
    "ServerError",
    "StateChanged",
    "UnknownFrame",
    "Welcome",
]

ConnectionState = Literal["idle", "connecting", "open", "reconnecting", "closed"]
"""`idle` before `connect()`; `connecting` until the first `welcome`; `open`; `reconnecting`
after a loss (waiting or opening again); `closed` for good."""


def _field(o: dict[str, Any], key: str, default: Any = None) -> Any:
    return o.get(key, default)


@dataclass(frozen=True)
class Welcome:
    """The first frame of every connection. `token_expires_at` (ms, server clock) is set when
    the credential expires; `server_time` is the server's clock when it was sent."""

    connection_id: str
    user_id: str
    ping_interval_ms: int
    server_time: int
    protocol: int
    max_lobbies: int | None
    token_expires_at: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @staticmethod
    def parse(o: dict[str, Any]) -> Welcome:
        """From the frame."""
        return Welcome(
            connection_id=str(o.get("connection_id", "")),
            user_id=str(o.get("user_id", "")),
            ping_interval_ms=int(o.get("ping_interval_ms") or 0),
            server_time=int(o.get("server_time") or 0),
            protocol=int(o.get("protocol") or 1),
            max_lobbies=_field(o, "max_lobbies"),
            token_expires_at=_field(o, "token_expires_at"),
            raw=o,
        )


@dataclass(frozen=True)
class Message:
    """A lobby broadcast. `sender` is the user (the frame's `from`), None from the backend;
    `offset` numbers the lobby's broadcasts (1, 2, ...) within its epoch."""

    lobby: str
    sender: str | None
    data: Any
    offset: int | None
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Direct:
    """A message to this user (or, from the backend, to this connection)."""

    sender: str | None
    data: Any
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Presence:
    """A lobby's users (an answer to `presence()`, or the catch-up after missed events)."""

    lobby: str
    users: list[str]
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class MemberJoined:
    """A user's first connection joined the lobby."""

    lobby: str
    user_id: str


@dataclass(frozen=True)
class MemberLeft:
    """A user's last connection left the lobby."""

    lobby: str
    user_id: str


@dataclass(frozen=True)
class Joined:
    """This connection is in `lobby`: a `join()`, a rejoin after a reconnect (`rejoin`), or
    the backend's join (`by_backend`, no id)."""

    lobby: str
    offset: int
    epoch: str
    presence_events: bool
    rejoin: bool = False
    by_backend: bool = False


@dataclass(frozen=True)
class Left:
    """This connection is no longer in `lobby`. `reason`: `left` (our `leave()`), `kicked`,
    `removed`, `not_allowed` (the server's), `rejoin_failed` (a rejoin was refused: `code`),
    `closed` (the client closed for good)."""

    lobby: str
    reason: str
    code: str | None = None


@dataclass(frozen=True)
class Recovered:
    """After a rejoin with `since`/`epoch`: `ok` is true when every missed message was
    replayed (they came before this, as `Message`s), false when history did not reach back
    or the lobby's epoch changed (a restart): resync that lobby's state another way."""

    lobby: str
    ok: bool


@dataclass(frozen=True)
class ServerError:
    """An `error` frame (the connection stays open); `id` is the request's, if any."""

    code: str
    message: str
    id: Any


@dataclass(frozen=True)
class Goodbye:
    """Sent just before a close that invites a retry: wait at least `retry_after_ms`."""

    code: int
    reason: str
    retry_after_ms: int


@dataclass(frozen=True)
class HealthPing:
    """The server's application-level ping (already answered with `health_pong`)."""

    timestamp: int


@dataclass(frozen=True)
class UnknownFrame:
    """A frame type this client does not know (a newer server)."""

    type: str
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Disconnected:
    """A connection ended. `will_reconnect` says whether the client tries again, after
    `retry_in` seconds (at least the goodbye's `retry_after_ms`); `attempt` numbers the retry."""

    code: int
    reason: str
    info: CloseCodeInfo | None
    goodbye: Goodbye | None
    will_reconnect: bool
    retry_in: float | None
    attempt: int


@dataclass(frozen=True)
class StateChanged:
    """The connection state changed."""

    state: ConnectionState
    previous: ConnectionState


Event = (
    Welcome
    | Message
    | Direct
    | Presence
    | MemberJoined
    | MemberLeft
    | Joined
    | Left
    | Recovered
    | ServerError
    | Goodbye
    | HealthPing
    | UnknownFrame
    | Disconnected
    | StateChanged
)
"""Everything `Client.events()` yields."""
