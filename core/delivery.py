"""Delivery rules, shared by producer and worker: the queue, the Celery app's module, the
worker's pool (one job per process, or a batch of jobs per process), time limits and per-job
deadlines, retry backoff and its cap, the broker's visibility timeout (and its check), and the
Celery options both sides must agree on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError
from core.redis_conn import celery_tls_options

if TYPE_CHECKING:
    from core.settings import Settings

# The one queue jobs go to (Celery's routing key and the Redis list's name).
QUEUE = "tts"
# The worker's Celery app, as `celery -A` names it.
CELERY_APP = "worker.app"
# kombu's Redis transport: the hash of delivered, unacknowledged messages (late ack: every job
# in hand), and the lists of a queue's priorities: priority p > 0 of queue q is the list
# q + "\x06\x16" + str(p) (priority_steps 0..9); priority 0 is the list q itself.
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = range(1, 10)
# A submission's priority -> the Celery message priority it is sent with. kombu's Redis
# transport keeps one list per priority step (default steps 0, 3, 6, 9; the project does not
# change them) and its BRPOP names the lists in ascending order, so the LOWEST number is served
# first. Each value is a default step itself, so a producer and a worker agree on the list
# whatever steps either rounds to. Jobs of one priority stay first in, first out.
PRIORITIES = {"high": 0, "normal": 3, "low": 9}
DEFAULT_PRIORITY = "normal"
# The longest pause before a retry, before jitter.
RETRY_CAP_SECONDS = 120.0
# The jitter factor of a retry's countdown lies in [JITTER_LOW, JITTER_HIGH).
JITTER_LOW, JITTER_HIGH = 0.5, 1.5
# Jobs per worker process when TTS_ENGINE_BATCH is 0 (auto). CosyVoice decodes the steps of
# all jobs in flight together; on 2 cores 4 jobs gave the most audio per second (x1.20 exact,
# x1.55 fast against one job; 8 no more, with twice the latency: docs/performance.md). Every
# other engine takes one job per process.
AUTO_ENGINE_BATCH = {"cosyvoice": 4}
# Past these a setting is a typo, not a plan: the dashboard's batch-size buckets end at 32.
MAX_ENGINE_BATCH = 64
MAX_ENGINE_BATCH_WAIT_MS = 10_000


@dataclass(frozen=True)
class WorkerPool:
    """The Celery pool of one worker node: `prefork` (one job per process, Celery's time
    limits) or `threads` (one process holding `concurrency` jobs for a batching engine)."""

    name: str
    concurrency: int

    @property
    def processes(self) -> int:
        return self.concurrency if self.name == "prefork" else 1


def queue_keys(queue: str = QUEUE) -> list[str]:
    """The Redis list names holding `queue`'s waiting messages, all priorities."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def message_priority(name: str) -> int:
    """The Celery message priority of a submission's priority name (high, normal, low)."""
    try:
        return PRIORITIES[name]
    except KeyError:
        choices = ", ".join(PRIORITIES)
        raise ConfigError(f"priority {name!r} is not one of {choices}") from None


def queue_key(priority: str = DEFAULT_PRIORITY, queue: str = QUEUE) -> str:
    """The Redis list that holds `queue`'s waiting messages of `priority` (kombu's naming)."""
    level = message_priority(priority)
    return f"{queue}{PRIORITY_SEP}{level}" if level else queue


def effective_engine_batch(settings: Settings) -> int:
    """Jobs one worker process holds and runs at once: TTS_ENGINE_BATCH, or the engine's
    default when it is 0."""
    return settings.engine_batch or AUTO_ENGINE_BATCH.get(settings.engine, 1)


def worker_pool(settings: Settings, *, processes: int | None = None) -> WorkerPool:
    """Batched mode (effective batch B > 1): Celery's threads pool with B threads, each task
    thread handing its job to the engine and waiting. Otherwise prefork, with `processes`
    (default TTS_CONCURRENCY) processes, exactly as before batching existed."""
    batch = effective_engine_batch(settings)
    if batch > 1:
        return WorkerPool("threads", batch)
    return WorkerPool("prefork", processes or settings.concurrency)


def worker_arguments(
    *, app: str, queue: str, pool: WorkerPool, hostname: str, loglevel: str = "INFO"
) -> list[str]:
    """`celery` arguments of a worker node: task events on (Flower, the reconciler's view),
    the one queue, the pool `worker_pool` chose. `tts-batch worker` and the local stack both
    start nodes with them."""
    return [
        "-A", app, "worker", "-E", "-Q", queue,
        "--pool", pool.name, "--concurrency", str(pool.concurrency),
        "--hostname", hostname, "--loglevel", loglevel,
    ]  # fmt: skip


def check_engine_batch(settings: Settings) -> None:
    """Refuse batching settings that cannot be meant."""
    if settings.engine_batch > MAX_ENGINE_BATCH:
        raise ConfigError(
            f"TTS_ENGINE_BATCH: {settings.engine_batch} jobs per process is above "
            f"{MAX_ENGINE_BATCH}; use more worker processes instead (0 = the engine's default)"
        )
    if settings.engine_batch_wait_ms > MAX_ENGINE_BATCH_WAIT_MS:
        raise ConfigError(
            f"TTS_ENGINE_BATCH_WAIT_MS: {settings.engine_batch_wait_ms} ms is above "
            f"{MAX_ENGINE_BATCH_WAIT_MS} ms; a step should not wait seconds for a batch to fill"
        )


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


def job_time_scale(settings: Settings) -> int:
    """How many times its time limit a job may take because it shares its process.

    In batched mode a job shares every decoding step with up to B - 1 others. Batched mode is
    only worth running when the engine's aggregate speed with B jobs is at least its speed
    with one, so a job among B takes at most B times as long as alone (measured: ~1.8x at 8
    jobs, ~3x at 16; B is the bound that needs no benchmark). 1 in prefork mode."""
    return effective_engine_batch(settings)


def job_deadline_seconds(settings: Settings, text_chars: int) -> float:
    """Seconds from the start of a job to its deadline in batched mode: its soft limit,
    scaled by `job_time_scale`. Past it the engine drops the job (reason `timeout`)."""
    return time_limits(settings, text_chars)[0] * job_time_scale(settings)


def longest_job_seconds(settings: Settings) -> float:
    """The longest a job of `max_chars` characters holds its message while it runs.

    Prefork: its hard limit (Celery kills the process there). Batched: its deadline plus the
    grace: the engine notices a deadline only between steps, and the job still encodes,
    uploads and records; nothing kills a thread, so the grace bounds what follows."""
    return job_deadline_seconds(settings, settings.max_chars) + settings.task_time_grace_seconds


def longest_retry_wait_seconds(settings: Settings) -> float:
    """The longest countdown before a retry: a worker holds the retried message, unacked, that
    long before running it (capped backoff times the highest jitter)."""
    if not settings.max_retries:
        return 0.0
    backoff = settings.retry_base_seconds * 2.0 ** (settings.max_retries - 1)
    return min(RETRY_CAP_SECONDS, backoff) * JITTER_HIGH


def visibility_timeout_seconds(settings: Settings) -> int:
    """The broker's visibility timeout: above the longest allowed job plus retry wait, or a slow
    job would be handed to a second worker while the first still runs it. In batched mode a
    process holds B messages (prefetch B, late ack), each for at most `longest_job_seconds`
    (deadline B x soft, plus grace), all at once rather than one after another: the timeout
    needs the longest single job, not B of them."""
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
