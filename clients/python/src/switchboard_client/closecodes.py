"""The close-code table of docs/protocol.md ("Close codes"), row by row.

It mirrors clients/typescript/src/closeCodes.ts so that both clients decide the same way
whether (and how) to reconnect after a close: a client that reconnected after `kicked` or
`replaced` would fight the backend or the user's newer tab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ReconnectRule = Literal["never", "after_retry", "fresh_token", "backoff"]
"""`never`: stop. `after_retry`: after the goodbye's `retry_after_ms` (and at least the backoff).
`fresh_token`: the same, asking the token callback again. `backoff`: exponential backoff."""


@dataclass(frozen=True)
class CloseCodeInfo:
    """One row: the code, its reason word, the goodbye's `retry_after_ms` range [min, max) in
    ms (None: no goodbye), and what a client does after it."""

    code: int
    reason: str
    retry_after_ms: tuple[int, int] | None
    reconnect: ReconnectRule
    meaning: str


CLOSE_CODES: tuple[CloseCodeInfo, ...] = (
    CloseCodeInfo(4001, "unauthorized", None, "never", "missing, invalid or expired token"),
    CloseCodeInfo(4002, "server_full", (2000, 10000), "after_retry", "the global connection limit"),
    CloseCodeInfo(4002, "lobby_full", (2000, 10000), "after_retry", "the per-lobby limit"),
    CloseCodeInfo(4002, "user_limit", (2000, 10000), "after_retry", "the per-user limit"),
    CloseCodeInfo(4002, "ip_limit", (2000, 10000), "after_retry", "the per-IP limit"),
    CloseCodeInfo(4003, "replaced", None, "never", "a newer connection of the same user took over"),
    CloseCodeInfo(4004, "stale", (0, 2000), "after_retry", "nothing arrived in time"),
    CloseCodeInfo(4008, "rate_limited", (1000, 5000), "after_retry", "too many messages in"),
    CloseCodeInfo(
        4008, "slow_consumer", (1000, 5000), "after_retry", "the outbound queue overflowed"
    ),
    CloseCodeInfo(4009, "kicked", None, "never", "disconnected by the backend"),
    CloseCodeInfo(4010, "token_expired", (0, 1000), "fresh_token", "the token's expiry passed"),
    CloseCodeInfo(1001, "server_shutdown", (1000, 10000), "after_retry", "graceful shutdown"),
    CloseCodeInfo(1002, "protocol_error", None, "backoff", "the client broke the protocol"),
    CloseCodeInfo(1003, "unsupported_data", None, "backoff", "a binary data frame"),
    CloseCodeInfo(1007, "invalid_utf8", None, "backoff", "a text frame that is not UTF-8"),
    CloseCodeInfo(1009, "message_too_big", None, "backoff", "a frame over max_message_bytes"),
    CloseCodeInfo(
        1013, "backend_unavailable", (1000, 5000), "after_retry", "the connect proxy did not decide"
    ),
)

NO_RECONNECT_CODES: frozenset[int] = frozenset(
    row.code for row in CLOSE_CODES if row.reconnect == "never"
)
"""Codes after which a client never reconnects: 4001, 4003, 4009."""

CLIENT_LIVENESS_CODE = 4000
"""The code the client closes with itself when the server went silent (private-use range)."""


def close_code_info(code: int, reason: str | None = None) -> CloseCodeInfo | None:
    """The row for a close, by code and (when the code has several rows) reason word."""
    rows = [row for row in CLOSE_CODES if row.code == code]
    for row in rows:
        if row.reason == reason:
            return row
    return rows[0] if rows else None


def reconnect_rule(code: int) -> ReconnectRule:
    """What to do after a close with `code`. Codes not in the table (1000, 1006 abnormal,
    1011, the client's own liveness close) are retried with backoff."""
    info = close_code_info(code)
    return info.reconnect if info is not None else "backoff"
