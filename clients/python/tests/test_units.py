"""Pure functions: the close-code table (checked against the TypeScript client's, row by
row), backoff, refresh timing, signatures."""

from __future__ import annotations

import re

import pytest

from switchboard_client import (
    CLOSE_CODES,
    Client,
    RequestError,
    WebhookVerificationError,
    close_code_info,
    reconnect_rule,
    sign,
    verify_signature,
)
from switchboard_client.closecodes import NO_RECONNECT_CODES
from switchboard_client.timing import (
    Backoff,
    backoff_cap,
    backoff_delay,
    refresh_delay,
    refresh_retry_delay,
)

from .conftest import REPO


def test_the_close_code_table_is_the_typescript_clients() -> None:
    source = (REPO / "clients/typescript/src/closeCodes.ts").read_text()
    rows = re.findall(
        r'\{ code: (\d+), reason: "(\w+)", retryAfterMs: (null|\[(\d+), (\d+)\]), '
        r'reconnect: "(\w+)"',
        source,
    )
    assert len(rows) == len(CLOSE_CODES)
    for (code, reason, _, low, high, rule), row in zip(rows, CLOSE_CODES, strict=True):
        retry = (int(low), int(high)) if low else None
        assert (int(code), reason, retry, rule) == (
            row.code,
            row.reason,
            row.retry_after_ms,
            row.reconnect,
        )


def test_reconnect_rules() -> None:
    assert NO_RECONNECT_CODES == {4001, 4003, 4009}
    assert [reconnect_rule(c) for c in (4001, 4003, 4009)] == ["never"] * 3
    assert reconnect_rule(4002) == "after_retry"
    assert reconnect_rule(4010) == "fresh_token"
    assert reconnect_rule(1006) == "backoff"  # not in the table: abnormal closure
    assert reconnect_rule(4000) == "backoff"  # the client's own liveness close
    info = close_code_info(4008, "slow_consumer")
    assert info is not None and info.reason == "slow_consumer"
    fallback = close_code_info(4008)
    assert fallback is not None and fallback.reason == "rate_limited"


def test_backoff_is_full_jitter_under_a_growing_cap() -> None:
    b = Backoff(initial_s=0.5, max_s=30, factor=2)
    assert [backoff_cap(n, b) for n in (1, 2, 3, 7, 100, 10_000)] == [0.5, 1, 2, 30, 30, 30]
    assert backoff_delay(3, b, random=lambda: 0.0) == 0.0
    assert backoff_delay(3, b, random=lambda: 0.5) == 1.0
    assert backoff_delay(3, b, random=lambda: 0.999) < 2.0


def test_refresh_timing() -> None:
    assert refresh_delay(3600) == 2880  # after 80 % of the time left
    assert refresh_delay(100) == 70  # but at least 30 s before the expiry
    assert refresh_delay(60) == 30
    assert refresh_delay(20) == 1  # the margin does not fit: soon, but not sooner than 1 s
    assert refresh_delay(3) == 1
    assert refresh_delay(0.5) == 0.4
    assert refresh_delay(0) == 0 and refresh_delay(-5) == 0
    assert refresh_retry_delay(100) == 5 and refresh_retry_delay(4) == 2
    assert refresh_retry_delay(0.1) == 1


def test_signatures_round_trip_and_header_names_are_case_insensitive() -> None:
    body = b'{"events":[]}'
    header = sign(["a", "b"], body, t=1_000)
    assert header.startswith("t=1000,v1=") and header.count("v1=") == 2
    for name in ("Switchboard-Signature", "switchboard-signature", "SWITCHBOARD-SIGNATURE"):
        verify_signature("b", {name: header}, body, now=1_000)
    verify_signature([b"a"], [("switchboard-signature", header)], body, now=1_200)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_signature("a", {"switchboard-signature": header}, body, now=1_000 + 301)
    assert caught.value.code == "timestamp_out_of_range"
    with pytest.raises(WebhookVerificationError) as caught:
        verify_signature("a", {"switchboard-signature": "t=x,v1=00"}, body)
    assert caught.value.code == "malformed_signature"


async def test_requests_before_connect_and_after_close_are_refused() -> None:
    client = Client("ws://127.0.0.1:9", token="t")
    with pytest.raises(RequestError) as caught:
        await client.rpc("add")
    assert caught.value.code == "closed"
