"""Reconnect backoff and token-refresh timing, the same formulas as the TypeScript client's
backoff.ts and refresh.ts, so that a fleet of mixed clients behaves alike."""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_BACKOFF",
    "Backoff",
    "backoff_cap",
    "backoff_delay",
    "refresh_delay",
    "refresh_retry_delay",
]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
    Jitter"): retry n waits uniformly in [0, min(max_s, initial_s * factor**(n-1))), so that
    clients dropped together do not come back together."""

    initial_s: float = 0.5
    max_s: float = 30.0
    factor: float = 2.0


DEFAULT_BACKOFF = Backoff()
"""500 ms, doubling, at most 30 s: the TypeScript client's defaults."""


def backoff_cap(attempt: int, backoff: Backoff = DEFAULT_BACKOFF) -> float:
    """The cap of retry number `attempt` (1-based)."""
    n = max(1, attempt)
    try:
        cap = backoff.initial_s * backoff.factor ** (n - 1)
    except OverflowError:
        return backoff.max_s
    return min(backoff.max_s, cap if math.isfinite(cap) else backoff.max_s)


def backoff_delay(
    attempt: int,
    backoff: Backoff = DEFAULT_BACKOFF,
    random: Callable[[], float] = _random.random,
) -> float:
    """The delay before retry number `attempt`: uniform in [0, cap) ("full jitter")."""
    r = min(max(random(), 0.0), 1.0)
    cap = backoff_cap(attempt, backoff)
    return min(r * cap, cap)


REFRESH_MARGIN_S = 30.0
"""Refresh no later than this long before the expiry."""
REFRESH_FRACTION = 0.8
"""Of the time remaining, refresh after this fraction (when that is earlier than the margin)."""
REFRESH_MIN_DELAY_S = 1.0
"""Never refresh sooner than this (a token that keeps coming back short-lived)."""


def refresh_delay(remaining_s: float) -> float:
    """The delay before refreshing a token that expires in `remaining_s`: 80 % of the time
    left, but never later than 30 s before the expiry; at least 1 s (or 80 % of the time left
    when less than that is left); never negative."""
    if not math.isfinite(remaining_s) or remaining_s <= 0:
        return 0.0
    wanted = min(REFRESH_FRACTION * remaining_s, remaining_s - REFRESH_MARGIN_S)
    floor = min(REFRESH_MIN_DELAY_S, REFRESH_FRACTION * remaining_s)
    return max(0.0, wanted, floor)


def refresh_retry_delay(remaining_s: float) -> float:
    """After a failed refresh: half of the time left, between 1 s and 5 s (if the token
    expires meanwhile, the server closes with 4010 and the reconnect gets a fresh token)."""
    half = remaining_s / 2 if math.isfinite(remaining_s) else 5.0
    return min(5.0, max(1.0, half))
