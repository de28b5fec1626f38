"""Verifying and parsing the server's signed calls to a backend (docs/backends.md): webhook
batches, connect-proxy attempts, join decisions and RPC calls.

Every call carries `Switchboard-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, each `v1`
the HMAC-SHA256 of `"<t>.<raw body>"` with one of the server's secrets (it signs with every
secret in `webhook.secret`, which is how secrets are rotated). A receiver must check the
signature over the *raw* bytes before parsing them, and refuse an old `t` (a replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import WebhookVerificationError

__all__ = [
    "SIGNATURE_HEADER",
    "ConnectAttempt",
    "ConnectEvent",
    "DisconnectEvent",
    "JoinEvent",
    "JoinRequest",
    "LeaveEvent",
    "MemberJoinedEvent",
    "MemberLeftEvent",
    "MessageEvent",
    "RpcRequest",
    "UnknownEvent",
    "WebhookEvent",
    "parse_events",
    "read_asgi_body",
    "sign",
    "verify_asgi_webhook",
    "verify_connect",
    "verify_join",
    "verify_rpc",
    "verify_signature",
    "verify_webhook",
]

SIGNATURE_HEADER = "switchboard-signature"


def _header(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> str | None:
    """A header by case-insensitive name, from a dict, Starlette's Headers or (name, value)
    pairs (ASGI scopes carry bytes pairs; decode those before)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if key.lower() == name:
            return str(value)
    return None


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secrets: str | bytes | Iterable[str | bytes], body: bytes, t: int | None = None) -> str:
    """The `Switchboard-Signature` value the server would send for `body` at time `t` (now
    by default). For tests of a backend, and for tools that replay calls."""
    keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    stamp = int(time.time()) if t is None else t
    parts = [f"t={stamp}"]
    for key in keys:
        mac = hmac.new(_secret_bytes(key), f"{stamp}.".encode() + body, hashlib.sha256)
        parts.append(f"v1={mac.hexdigest()}")
    return ",".join(parts)


def verify_signature(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> None:
    """Checks the signature of one call; returns nothing or raises
    `WebhookVerificationError`. `secrets`: every secret this receiver accepts (during a
    rotation, the old and the new). `now` (Unix seconds) is for tests."""
    header = _header(headers, SIGNATURE_HEADER)
    if header is None:
        raise WebhookVerificationError("missing_signature", "no Switchboard-Signature header")
    stamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                stamp = int(value)
            except ValueError:
                raise WebhookVerificationError(
                    "malformed_signature", f"t is not an integer: {value!r}"
                ) from None
        elif key == "v1":
            signatures.append(value)
    if stamp is None or not signatures:
        raise WebhookVerificationError("malformed_signature", "the header needs t= and v1=")
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_s:
        raise WebhookVerificationError(
            "timestamp_out_of_range",
            f"signed at {stamp}, {current - stamp:.0f} s from now (tolerance {tolerance_s} s)",
        )
    keys = [secrets] if isinstance(secrets, (str, bytes)) else list(secrets)
    signed = f"{stamp}.".encode() + body
    for secret in keys:
        expected = hmac.new(_secret_bytes(secret), signed, hashlib.sha256).hexdigest()
        # Every candidate is compared, in constant time each: which one matched leaks nothing.
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return
    raise WebhookVerificationError("bad_signature", "no v1 signature matches a known secret")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise WebhookVerificationError("invalid_body", f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise WebhookVerificationError("invalid_body", "not a JSON object")
    return value


@dataclass(frozen=True)
class WebhookEvent:
    """The fields every event has. `id` is unique per event: delivery is at least once, so
    de-duplicate on it. `time` is ms since the Unix epoch."""

    id: str
    time: int
    node: str
    connection_id: str
    user_id: str
    ip: str
    raw: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ConnectEvent(WebhookEvent):
    """A connection was admitted, in `lobbies` (its URL's)."""

    protocol: int = 1
    lobbies: list[str] = field(default_factory=list)
    type: Literal["connect"] = "connect"


@dataclass(frozen=True)
class DisconnectEvent(WebhookEvent):
    """A connection ended: `reason` word, close `code` (None when the client closed);
    `lost_node` when its node died (reason `node_lost`)."""

    reason: str = ""
    code: int | None = None
    lost_node: str | None = None
    type: Literal["disconnect"] = "disconnect"


@dataclass(frozen=True)
class JoinEvent(WebhookEvent):
    """A protocol-v2 connection joined `lobby` itself."""

    lobby: str = ""
    type: Literal["join"] = "join"


@dataclass(frozen=True)
class LeaveEvent(WebhookEvent):
    """A protocol-v2 connection left `lobby`."""

    lobby: str = ""
    type: Literal["leave"] = "leave"


@dataclass(frozen=True)
class MemberJoinedEvent(WebhookEvent):
    """A user's first connection joined `lobby` (users, not tabs)."""

    lobby: str = ""
    type: Literal["member_joined"] = "member_joined"


@dataclass(frozen=True)
class MemberLeftEvent(WebhookEvent):
    """A user's last connection left `lobby`."""

    lobby: str = ""
    type: Literal["member_left"] = "member_left"


@dataclass(frozen=True)
class MessageEvent(WebhookEvent):
    """An application message: the whole client frame in `message`."""

    message_type: str = ""
    message: dict[str, Any] = field(default_factory=dict)
    type: Literal["message"] = "message"


@dataclass(frozen=True)
class UnknownEvent(WebhookEvent):
    """An event type this package does not know yet (a newer server): kept, not refused."""

    type: str = ""


AnyEvent = (
    ConnectEvent
    | DisconnectEvent
    | JoinEvent
    | LeaveEvent
    | MemberJoinedEvent
    | MemberLeftEvent
    | MessageEvent
    | UnknownEvent
)


def _str(o: Mapping[str, Any], key: str) -> str:
    value = o.get(key)
    return value if isinstance(value, str) else ""


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _event(o: Mapping[str, Any]) -> AnyEvent:
    base: dict[str, Any] = {
        "id": _str(o, "id"),
        "time": _opt_int(o.get("time")) or 0,
        "node": _str(o, "node"),
        "connection_id": _str(o, "connection_id"),
        "user_id": _str(o, "user_id"),
        "ip": _str(o, "ip"),
        "raw": dict(o),
    }
    kind = _str(o, "type")
    if kind == "connect":
        lobbies = o.get("lobbies")
        return ConnectEvent(
            **base,
            protocol=_opt_int(o.get("protocol")) or 1,
            lobbies=[str(x) for x in lobbies] if isinstance(lobbies, list) else [],
        )
    if kind == "disconnect":
        lost = o.get("lost_node")
        return DisconnectEvent(
            **base,
            reason=_str(o, "reason"),
            code=_opt_int(o.get("code")),
            lost_node=lost if isinstance(lost, str) else None,
        )
    if kind in ("join", "leave", "member_joined", "member_left"):
        cls = {
            "join": JoinEvent,
            "leave": LeaveEvent,
            "member_joined": MemberJoinedEvent,
            "member_left": MemberLeftEvent,
        }[kind]
        event: AnyEvent = cls(**base, lobby=_str(o, "lobby"))
        return event
    if kind == "message":
        message = o.get("message")
        return MessageEvent(
            **base,
            message_type=_str(o, "message_type"),
            message=message if isinstance(message, dict) else {},
        )
    return UnknownEvent(**base, type=kind)


def parse_events(body: bytes | Mapping[str, Any]) -> list[AnyEvent]:
    """The typed events of a webhook batch `{"events":[...]}`, oldest first (no check of the
    signature: use `verify_webhook` on anything that came over the network)."""
    o = _json_object(body) if isinstance(body, bytes) else body
    events = o.get("events")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise WebhookVerificationError("invalid_body", "`events` is not a list of objects")
    return [_event(e) for e in events]


def verify_webhook(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> list[AnyEvent]:
    """Verifies a webhook POST (signature over the raw `body`, timestamp within
    `tolerance_s`) and returns its typed events, oldest first; raises
    `WebhookVerificationError` (with `code`) otherwise."""
    verify_signature(secrets, headers, body, tolerance_s, now)
    return parse_events(body)


async def read_asgi_body(
    scope: Mapping[str, Any],
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    max_bytes: int = 1 << 20,
) -> tuple[list[tuple[str, str]], bytes]:
    """The headers and whole raw body of an ASGI HTTP request, for any ASGI framework (or
    none): what `verify_webhook` and the other verifiers need. A body over `max_bytes` is
    refused (`invalid_body`): the server's batches are far smaller."""
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
    body = b""
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            raise WebhookVerificationError("invalid_body", "the client went away")
        body += message.get("body", b"")
        if len(body) > max_bytes:
            raise WebhookVerificationError("invalid_body", f"a body over {max_bytes} bytes")
        if not message.get("more_body", False):
            return headers, body


async def verify_asgi_webhook(
    scope: Mapping[str, Any],
    receive: Callable[[], Awaitable[Mapping[str, Any]]],
    secrets: str | bytes | Iterable[str | bytes],
    tolerance_s: float = 300,
) -> list[AnyEvent]:
    """`verify_webhook` on a plain ASGI request (scope and receive): the typed events, or
    `WebhookVerificationError`."""
    headers, body = await read_asgi_body(scope, receive)
    return verify_webhook(secrets, headers, body, tolerance_s)


@dataclass(frozen=True)
class ConnectAttempt:
    """A connect-proxy call (`auth.connect_url`): who is trying to connect. Answer a 2xx with
    `{"user_id":..,"lobbies":[..],"expires_at":..}` to admit, a 401/403 to refuse."""

    transport: str
    token: str | None
    headers: dict[str, str]
    ip: str
    lobby: str | None
    lobbies: list[str]

    def cookie(self, name: str) -> str | None:
        """A cookie of the forwarded `cookie` header (the browser's own session, say)."""
        for part in self.headers.get("cookie", "").split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                return value
        return None


@dataclass(frozen=True)
class JoinRequest:
    """A join-proxy call (`auth.join_url`): 2xx allows the join, 4xx refuses it."""

    connection_id: str
    user_id: str
    ip: str
    lobby: str


@dataclass(frozen=True)
class RpcRequest:
    """An RPC call (`webhook.rpc_url`): the 2xx JSON body answered becomes the client's
    `rpc_result` data; another status fails the call with `rpc_failed`."""

    connection_id: str
    user_id: str
    ip: str
    method: str
    data: Any


def verify_connect(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> ConnectAttempt:
    """Verifies and parses a connect-proxy call."""
    verify_signature(secrets, headers, body, tolerance_s, now)
    o = _json_object(body)
    raw_headers = o.get("headers")
    lobby = o.get("lobby")
    token = o.get("token")
    lobbies = o.get("lobbies")
    return ConnectAttempt(
        transport=_str(o, "transport"),
        token=token if isinstance(token, str) else None,
        headers={str(k): str(v) for k, v in raw_headers.items()}
        if isinstance(raw_headers, dict)
        else {},
        ip=_str(o, "ip"),
        lobby=lobby if isinstance(lobby, str) else None,
        lobbies=[str(x) for x in lobbies] if isinstance(lobbies, list) else [],
    )


def verify_join(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> JoinRequest:
    """Verifies and parses a join-proxy call."""
    verify_signature(secrets, headers, body, tolerance_s, now)
    o = _json_object(body)
    return JoinRequest(
        _str(o, "connection_id"), _str(o, "user_id"), _str(o, "ip"), _str(o, "lobby")
    )


def verify_rpc(
    secrets: str | bytes | Iterable[str | bytes],
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    tolerance_s: float = 300,
    now: float | None = None,
) -> RpcRequest:
    """Verifies and parses an RPC call."""
    verify_signature(secrets, headers, body, tolerance_s, now)
    o = _json_object(body)
    return RpcRequest(
        _str(o, "connection_id"),
        _str(o, "user_id"),
        _str(o, "ip"),
        _str(o, "method"),
        o.get("data"),
    )
