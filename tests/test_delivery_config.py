"""Delivery settings are coherent: late ack, re-queue on a lost worker, prefetch 1 per job a
process runs, the pool that fits the engine (prefork, or threads for a batching engine), and a
visibility timeout above the longest allowed job, whatever the environment says."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from types import ModuleType

import pytest

from core.delivery import (
    MAX_ENGINE_BATCH,
    WorkerPool,
    backoff_seconds,
    effective_engine_batch,
    job_deadline_seconds,
    time_limits,
    worker_pool,
)
from core.errors import ConfigError
from core.settings import Settings

CELERYCONFIG = Path(__file__).resolve().parent.parent / "celeryconfig.py"

ENVIRONMENTS = {
    "defaults": {},
    "long texts, slow engine": {
        "TTS_MAX_CHARS": "2000",
        "TTS_TASK_TIME_PER_CHAR_SECONDS": "10",
        "TTS_TASK_TIME_GRACE_SECONDS": "300",
    },
    "many slow retries": {
        "TTS_TASK_TIME_BASE_SECONDS": "1",
        "TTS_TASK_TIME_PER_CHAR_SECONDS": "0",
        "TTS_TASK_TIME_GRACE_SECONDS": "0",
        "TTS_MAX_RETRIES": "12",
        "TTS_RETRY_BASE_SECONDS": "5",
    },
    "short explicit timeout, short jobs": {
        "TTS_VISIBILITY_TIMEOUT": "10",
        "TTS_TASK_TIME_BASE_SECONDS": "6",
        "TTS_TASK_TIME_PER_CHAR_SECONDS": "0",
        "TTS_TASK_TIME_GRACE_SECONDS": "1",
        "TTS_MAX_RETRIES": "3",
        "TTS_RETRY_BASE_SECONDS": "0.2",
    },
    "cosyvoice, batched by default": {"TTS_ENGINE": "cosyvoice"},
    "fake engine, batch 4, test-sized limits": {
        "TTS_ENGINE": "fake",
        "TTS_ENGINE_BATCH": "4",
        "TTS_VISIBILITY_TIMEOUT": "20",
        "TTS_TASK_TIME_BASE_SECONDS": "4",
        "TTS_TASK_TIME_PER_CHAR_SECONDS": "0",
        "TTS_TASK_TIME_GRACE_SECONDS": "1",
        "TTS_MAX_RETRIES": "3",
        "TTS_RETRY_BASE_SECONDS": "0.2",
    },
    "cosyvoice forced to one job per process": {"TTS_ENGINE": "cosyvoice", "TTS_ENGINE_BATCH": "1"},
}


def load_celeryconfig(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ModuleType:
    """celeryconfig.py executed afresh under exactly `env` (plus a private stack dir), without
    replacing the module other tests may have imported."""
    for key in list(os.environ):
        if key.startswith("TTS_"):
            monkeypatch.delenv(key)
    for key, value in {"TTS_STACK_DIR": str(tmp_path), **env}.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("celeryconfig_under_test", CELERYCONFIG)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("env", ENVIRONMENTS.values(), ids=list(ENVIRONMENTS))
def test_delivery_settings_are_coherent(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = load_celeryconfig(env, monkeypatch, tmp_path)
    settings = Settings.from_env({"TTS_STACK_DIR": str(tmp_path), **env})
    assert config.task_acks_late is True
    assert config.task_reject_on_worker_lost is True
    assert config.worker_prefetch_multiplier == 1
    assert config.accept_content == ["json"]

    batch = effective_engine_batch(settings)
    assert (config.worker_pool, config.worker_concurrency) == (
        ("threads", batch) if batch > 1 else ("prefork", settings.concurrency)
    )

    options = config.broker_transport_options
    visibility = options["visibility_timeout"]
    soft, hard = time_limits(settings, settings.max_chars)
    if batch > 1:
        # No thread is killed at a hard limit: a batched job holds its message until its
        # deadline (B x its soft limit: it shares each step with B - 1 others) plus the grace.
        hard = soft * batch + settings.task_time_grace_seconds
    # A retried message waits, unacked, in the worker for its countdown before it runs.
    longest_wait = backoff_seconds(
        settings.max_retries - 1,
        base=settings.retry_base_seconds,
        rng=_MaxJitter(),
    )
    assert visibility > hard + longest_wait, (visibility, hard, longest_wait)
    assert config.result_backend_transport_options["visibility_timeout"] == visibility
    # Lost jobs are swept back within a fraction of the timeout, not kombu's ~100 s default.
    sweep = options["unacked_restore_interval"] * options["unacked_restore_throttle"]
    assert 1 <= sweep <= max(1, visibility // 4)


def test_a_visibility_timeout_below_the_longest_job_is_refused(tmp_path: Path) -> None:
    env = {"TTS_STACK_DIR": str(tmp_path), "TTS_VISIBILITY_TIMEOUT": "600"}
    with pytest.raises(ConfigError, match="TTS_VISIBILITY_TIMEOUT"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, WorkerPool("prefork", 2)),
        ({"TTS_ENGINE": "fake"}, WorkerPool("prefork", 2)),
        ({"TTS_ENGINE": "espeak", "TTS_CONCURRENCY": "3"}, WorkerPool("prefork", 3)),
        ({"TTS_ENGINE": "cosyvoice"}, WorkerPool("threads", 4)),
        ({"TTS_ENGINE": "cosyvoice", "TTS_ENGINE_BATCH": "16"}, WorkerPool("threads", 16)),
        ({"TTS_ENGINE": "cosyvoice", "TTS_ENGINE_BATCH": "1"}, WorkerPool("prefork", 2)),
        ({"TTS_ENGINE": "fake", "TTS_ENGINE_BATCH": "4"}, WorkerPool("threads", 4)),
        ({"TTS_ENGINE": "espeak", "TTS_ENGINE_BATCH": "2"}, WorkerPool("threads", 2)),
    ],
)
def test_the_pool_follows_the_effective_engine_batch(
    env: dict[str, str], expected: WorkerPool
) -> None:
    settings = Settings.from_env(env)
    assert worker_pool(settings) == expected
    batched = expected.name == "threads"
    assert settings.effective_engine_batch == (expected.concurrency if batched else 1)
    # A batched node is one process however many prefork processes were asked for.
    assert worker_pool(settings, processes=5).processes == (1 if batched else 5)


def test_batched_jobs_get_b_times_their_limit_and_the_timeout_covers_it() -> None:
    alone = Settings.from_env({"TTS_ENGINE": "cosyvoice", "TTS_ENGINE_BATCH": "1"})
    batched = Settings.from_env({"TTS_ENGINE": "cosyvoice", "TTS_ENGINE_BATCH": "8"})
    soft, hard = time_limits(batched, 100)
    assert time_limits(alone, 100) == (soft, hard)  # Celery's limits are never scaled
    assert job_deadline_seconds(batched, 100) == 8 * soft
    assert job_deadline_seconds(alone, 100) == soft
    # Defaults: 1.25 x (8 x 3120 + 60) + 48 + 60 (prefork: 1.25 x 3180 + 48 + 60 = 4083).
    assert alone.visibility_timeout_seconds == 4083
    assert batched.visibility_timeout_seconds == 31383
    longest = 8 * time_limits(batched, batched.max_chars)[0] + batched.task_time_grace_seconds
    assert batched.visibility_timeout_seconds > longest


def test_a_visibility_timeout_set_for_one_job_per_process_is_refused_when_batched() -> None:
    env = {
        "TTS_VISIBILITY_TIMEOUT": "5000",
        "TTS_ENGINE": "cosyvoice",
        "TTS_ENGINE_BATCH": "1",
    }
    Settings.from_env(env)
    with pytest.raises(ConfigError, match="TTS_VISIBILITY_TIMEOUT"):
        Settings.from_env({**env, "TTS_ENGINE_BATCH": "2"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TTS_ENGINE_BATCH", str(MAX_ENGINE_BATCH + 1)),
        ("TTS_ENGINE_BATCH", "-1"),
        ("TTS_ENGINE_BATCH", "eight"),
        ("TTS_ENGINE_BATCH_WAIT_MS", "60000"),
        ("TTS_ENGINE_RSS_BUDGET_MB", "-5"),
    ],
)
def test_bad_batching_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_the_worker_task_acks_late_and_rejects_on_a_lost_worker() -> None:
    from worker.tasks import synthesize

    assert synthesize.acks_late is True
    assert synthesize.reject_on_worker_lost is True


class _MaxJitter(random.Random):
    """The largest jitter backoff_seconds can draw."""

    def uniform(self, a: float, b: float) -> float:
        return b
