"""Outcomes recorded by a worker node's parent process, for jobs whose own process cannot.

A pool process that Celery kills at the job's hard time limit (frozen, or stuck in a native
call that never returns) records nothing: Celery acks the message and calls the task's
`on_failure` in the parent with TimeLimitExceeded. The parent records the failure (reason
`timeout`, with the message, so `tts-batch retry` can run it again). The reconciler
(worker/parent/reconciler.py) records through the same recorder.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import redis

from core.batch_state import BatchState
from core.redis_conn import connect
from core.settings import Settings
from core.storage import AudioStore
from worker import runtime
from worker.parent.consumer import parent_metrics, push_soon
from worker.pipeline import message_ids, record_failure
from worker.push import WorkerMetrics, node_process_metrics

log = logging.getLogger(__name__)


@dataclass
class ParentRecorder:
    """Redis, metrics and node name of the parent: enough to record a failure
    (worker.pipeline.OutcomeRecorder)."""

    settings: Settings
    redis: redis.Redis
    metrics: WorkerMetrics
    worker_name: str
    _store: AudioStore | None = None

    @property
    def store(self) -> AudioStore:
        """The bucket, for the manifest of a batch whose last outcome the parent records
        (built on first use: most parents never need it)."""
        if self._store is None:
            self._store = AudioStore.from_settings(self.settings)
        return self._store

    def batch(self, batch_id: str) -> BatchState:
        return BatchState(self.redis, batch_id, ttl_seconds=self.settings.batch_ttl_seconds)

    def deliveries(self, message: Any) -> int:
        """Deliveries of the message's job started so far (at least 1)."""
        job_id, batch_id = message_ids(message)
        if not (job_id and batch_id):
            return 1
        raw = self.redis.hget(self.batch(batch_id).key("attempts"), job_id)
        return max(int(raw or 0), 1)

    def fail(self, message: Any, *, reason: str, error: str) -> None:
        """Record the job's failure (once) and count it; push soon."""
        self.metrics.error(reason)
        record_failure(self, message, reason=reason, error=error, attempts=self.deliveries(message))
        push_soon()


_lock = threading.Lock()
_recorder: dict[int, ParentRecorder] = {}


def recorder() -> ParentRecorder:
    """This process's recorder, built on first use."""
    with _lock:
        current = _recorder.get(os.getpid())
        if current is None:
            settings = Settings.from_env()
            metrics = parent_metrics() or node_process_metrics(settings.engine)
            client = connect(settings, retry=runtime.patient_redis_retry())
            current = ParentRecorder(settings, client, metrics, runtime.worker_name())
            _recorder.clear()
            _recorder[os.getpid()] = current
        return current


def record_hard_timeout(message: Any, *, limit: Any) -> None:
    """Record a job whose pool process Celery killed at its hard time limit."""
    try:
        recorder().fail(
            message,
            reason="timeout",
            error=f"killed at its hard time limit ({limit} s): the job never returned",
        )
    except Exception:  # never let a recording error reach Celery's event loop
        # The reconciler finds the job later: no outcome and no message left.
        log.exception("could not record a hard time-limit kill; the reconciler will")
