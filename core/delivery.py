"""Delivery rules, shared by producer and worker: the queue, the Celery app's module, time
limits, retry backoff and its cap, the broker's visibility timeout (and its check), and the
Celery options both sides must agree on.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.redis_conn import celery_tls_options

if TYPE_CHECKING:
    from core.settings import Settings

# The one queue jobs go to (Celery's routing key and the Redis list's name).
QUEUE = "tts"
# The worker's Celery app, as `celery -A` names it.
CELERY_APP = "worker.app"
# The longest pause before a retry, before jitter.
RETRY_CAP_SECONDS = 120.0
# The jitter factor of a retry's countdown lies in [JITTER_LOW, JITTER_HIGH).
JITTER_LOW, JITTER_HIGH = 0.5, 1.5


def backoff_seconds(
    retries: int,
    *,
    base: float = 2.0,
    cap: float = RETRY_CAP_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `retries + 1`: base * 2^retries, capped, times a jitter in
    [0.5, 1.5) so that jobs failing together do not retry together."""
    jitter: float = (rng or random).uniform(JITTER_LOW, JITTER_HIGH)
    return min(cap, base * 2.0**retries) * jitter


def time_limits(settings: Settings, text_chars: int) -> tuple[float, float]:
    """(soft, hard) time limit of one job, scaled to its text length."""
    soft = settings.task_time_base_seconds + settings.task_time_per_char_seconds * text_chars
    return soft, soft + settings.task_time_grace_seconds


def longest_job_seconds(settings: Settings) -> float:
    """The hard time limit of a job of `max_chars` characters."""
    return time_limits(settings, settings.max_chars)[1]


def longest_retry_wait_seconds(settings: Settings) -> float:
    """The longest countdown before a retry: a worker holds the retried message, unacked, that
    long before running it (capped backoff times the highest jitter)."""
    if not settings.max_retries:
        return 0.0
    backoff = settings.retry_base_seconds * 2.0 ** (settings.max_retries - 1)
    return min(RETRY_CAP_SECONDS, backoff) * JITTER_HIGH


def visibility_timeout_seconds(settings: Settings) -> int:
    """The broker's visibility timeout: above the longest allowed job plus retry wait, or a slow
    job would be handed to a second worker while the first still runs it."""
    if settings.visibility_timeout:
        return settings.visibility_timeout
    return int(longest_job_seconds(settings) * 1.25 + longest_retry_wait_seconds(settings)) + 60


def check_visibility_timeout(settings: Settings) -> None:
    """Refuse a configured visibility timeout at or below the longest job plus retry wait: the
    broker would hand every slow job, or one waiting for its retry, to a second worker."""
    needed = longest_job_seconds(settings) + longest_retry_wait_seconds(settings)
    if settings.visibility_timeout and settings.visibility_timeout <= needed:
        raise ConfigError(
            f"TTS_VISIBILITY_TIMEOUT: {settings.visibility_timeout} s is not above the longest "
            f"allowed job plus retry wait ({needed:.0f} s); raise it, or set 0 to derive it"
        )


def celery_options(settings: Settings) -> dict[str, Any]:
    """The Celery options producer and worker must agree on (worker-only ones: celeryconfig)."""
    return {
        "broker_url": settings.broker_url,
        # rediss:// URLs: certificates verified (against TTS_REDIS_TLS_CA_FILE if set).
        "broker_use_ssl": celery_tls_options(settings, settings.broker_url),
        # JSON only: a pickled message could run code in the worker.
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": QUEUE,
        "broker_transport_options": {"visibility_timeout": visibility_timeout_seconds(settings)},
        "broker_connection_retry_on_startup": True,
    }
