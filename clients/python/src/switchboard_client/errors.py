"""Typed exceptions.

Every failure the server reports carries a machine-readable code (`not_found`, `lobby_full`,
`rpc_failed`...). The exceptions keep that code as an attribute so that callers branch on it
instead of parsing messages, the same codes the server documents in docs/protocol.md and the
README's HTTP API section.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "ConnectionClosedError",
    "RequestError",
    "SwitchboardError",
    "WebhookVerificationError",
]


class SwitchboardError(Exception):
    """The base of every error this package raises, with the server's (or our own) `code`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ApiError(SwitchboardError):
    """An HTTP API call failed: `{"error":{"code","message"}}` with `status`.

    `retry_after` (seconds) is set when the server sent `Retry-After` (cluster mode's
    `overloaded` 503: the message was delivered nowhere and may be retried).
    """

    def __init__(
        self, status: int, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.retry_after = retry_after


class WebhookVerificationError(SwitchboardError):
    """A signed call from the server did not verify.

    `code` says why: `missing_signature`, `malformed_signature`, `timestamp_out_of_range`,
    `bad_signature`, or `invalid_body` (signed, but not the JSON the server sends).
    """


class RequestError(SwitchboardError):
    """A client request (join, broadcast, rpc...) failed.

    `code` is the server's `error` code (`lobby_full`, `not_allowed`, `rpc_failed`,
    `rate_limited`, `unknown_type`...) or one of the client's own: `timeout` (no answer in
    time), `connection_lost` (the connection closed after the request was sent: it may or may
    not have been applied), `closed` (the client is closed), `dropped` (the outgoing queue was
    full). `id` is the request's frame id.
    """

    def __init__(self, code: str, message: str, id: Any = None) -> None:
        super().__init__(code, message)
        self.id = id


class ConnectionClosedError(SwitchboardError):
    """The client stopped for good: `close()`, or a close code that forbids reconnecting
    (4001 unauthorized, 4003 replaced, 4009 kicked). `close_code` is the WebSocket code."""

    def __init__(self, code: str, message: str, close_code: int | None = None) -> None:
        super().__init__(code, message)
        self.close_code = close_code
