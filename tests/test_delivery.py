"""Backoff grows exponentially, is capped, and jittered."""

from __future__ import annotations

import random

from core.delivery import backoff_seconds


def test_backoff_grows_and_caps() -> None:
    rng = random.Random(1)
    delays = [backoff_seconds(n, base=1.0, cap=20.0, rng=rng) for n in range(8)]
    for n, delay in enumerate(delays):
        nominal = min(20.0, 2.0**n)
        assert 0.5 * nominal <= delay < 1.5 * nominal


def test_jitter_spreads_retries() -> None:
    rng = random.Random(2)
    assert len({round(backoff_seconds(3, rng=rng), 6) for _ in range(20)}) > 10
