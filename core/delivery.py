"""Retry timing for transient errors: exponential backoff with jitter."""

from __future__ import annotations

import random

from core.settings import RETRY_CAP_SECONDS


def backoff_seconds(
    retries: int,
    *,
    base: float = 2.0,
    cap: float = RETRY_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `retries + 1`: base * 2^retries, capped, times a jitter in
    [0.5, 1.5) so that jobs failing together do not retry together."""
    jitter: float = (rng or random).uniform(0.5, 1.5)
    return min(cap, base * 2.0**retries) * jitter
