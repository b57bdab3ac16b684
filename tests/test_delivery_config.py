"""Delivery settings are coherent: late ack, re-queue on a lost worker, prefetch 1, and a
visibility timeout above the longest allowed job, whatever the environment says."""

from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path
from types import ModuleType

import pytest

from core.delivery import backoff_seconds, time_limits
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

    options = config.broker_transport_options
    visibility = options["visibility_timeout"]
    _, hard = time_limits(settings, settings.max_chars)
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


def test_the_worker_task_acks_late_and_rejects_on_a_lost_worker() -> None:
    from worker.tasks import synthesize

    assert synthesize.acks_late is True
    assert synthesize.reject_on_worker_lost is True


class _MaxJitter(random.Random):
    """The largest jitter backoff_seconds can draw."""

    def uniform(self, a: float, b: float) -> float:
        return b
