"""Switchboard for Python: the server's HTTP API (sync and async), verification of its signed
webhook / connect-proxy / RPC calls, and an asyncio protocol-v2 client.

The FastAPI / Starlette helpers live in `switchboard_client.asgi` (the `fastapi` extra), so
that importing this package never needs a web framework.
"""

from .api import (
    AsyncSwitchboardAPI,
    Closed,
    ConnectionInfo,
    Delivered,
    Health,
    Joined,
    LobbyInfo,
    Presence,
    Removed,
    Stats,
    SwitchboardAPI,
)
from .client import Client, EventStream, Room
from .closecodes import CLOSE_CODES, CloseCodeInfo, close_code_info, reconnect_rule
from .errors import (
    ApiError,
    ConnectionClosedError,
    RequestError,
    SwitchboardError,
    WebhookVerificationError,
)
from .timing import Backoff
from .webhooks import (
    AnyEvent,
    ConnectAttempt,
    ConnectEvent,
    DisconnectEvent,
    JoinEvent,
    JoinRequest,
    LeaveEvent,
    MemberJoinedEvent,
    MemberLeftEvent,
    MessageEvent,
    RpcRequest,
    UnknownEvent,
    WebhookEvent,
    parse_events,
    sign,
    verify_connect,
    verify_join,
    verify_rpc,
    verify_signature,
    verify_webhook,
)

__version__ = "0.1.0"

__all__ = [
    "CLOSE_CODES",
    "AnyEvent",
    "ApiError",
    "AsyncSwitchboardAPI",
    "Backoff",
    "Client",
    "CloseCodeInfo",
    "Closed",
    "ConnectAttempt",
    "ConnectEvent",
    "ConnectionClosedError",
    "ConnectionInfo",
    "Delivered",
    "DisconnectEvent",
    "EventStream",
    "Health",
    "JoinEvent",
    "JoinRequest",
    "Joined",
    "LeaveEvent",
    "LobbyInfo",
    "MemberJoinedEvent",
    "MemberLeftEvent",
    "MessageEvent",
    "Presence",
    "Removed",
    "RequestError",
    "Room",
    "RpcRequest",
    "Stats",
    "SwitchboardAPI",
    "SwitchboardError",
    "UnknownEvent",
    "WebhookEvent",
    "WebhookVerificationError",
    "close_code_info",
    "parse_events",
    "reconnect_rule",
    "sign",
    "verify_connect",
    "verify_join",
    "verify_rpc",
    "verify_signature",
    "verify_webhook",
]
