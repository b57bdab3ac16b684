"""The Celery parent process's side of metrics: the node's one Pushgateway group.

The parent pushes the sum of every process of its node (worker/node_metrics.py) under
{job="tts_worker", worker=<node>}, at least every `TTS_METRICS_PUSH_SECONDS`. Its own counts
join that sum: messages that fail before any task code runs (a body that is not JSON or not
UTF-8, a pickled body, an unknown task) are counted here as tts_errors_total{reason=
"bad_message"}, and the failures the parent records for its pool (worker/parent/outcomes.py).
In batched mode the parent is the only process and runs the tasks too; it and its task threads
share the process's one WorkerMetrics (worker.push.node_process_metrics).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer

from worker import node_metrics
from worker.push import BackgroundPusher, WorkerMetrics, process_metrics, start_pusher
from worker.synth import Synthesizer

log = logging.getLogger(__name__)

_parent: dict[str, Any] = {}


def start_parent(
    *,
    worker: str,
    pushgateway_url: str,
    push_seconds: float,
    engine: Synthesizer,
    load_seconds: float,
) -> None:
    """The parent's metrics and the node's pusher; called once the worker is ready (after the
    pool forked). The parent loaded the engine (engine_host.preload), so it reports the load
    time. (In batched mode these metrics are the task threads' too: one per process.)"""
    metrics = process_metrics(engine, load_seconds=load_seconds)
    metrics.up.set(1)
    path = node_metrics.enabled_dir()
    if path is None:  # counting in memory (not started as a node): this process alone
        pusher = start_pusher(
            metrics.registry, worker=worker, pushgateway_url=pushgateway_url, heartbeat=push_seconds
        )
    else:
        pusher = start_pusher(
            node_metrics.node_registry(path),
            worker=worker,
            pushgateway_url=pushgateway_url,
            heartbeat=push_seconds,
            before_push=lambda: node_metrics.forget_dead_processes(path),
        )
    _parent.update(pid=os.getpid(), metrics=metrics, pusher=pusher)


def stop_parent() -> None:
    """A clean stop: `tts_worker_up` 0 and a final push. The group stays, with the node's final
    counts (a sum over groups must not drop when a node stops); a node restarted under its name
    pushes into it again."""
    if _parent.get("pid") != os.getpid():
        return
    metrics, pusher = _parent.get("metrics"), _parent.pop("pusher", None)
    if isinstance(metrics, WorkerMetrics):
        metrics.up.set(0)
    if isinstance(pusher, BackgroundPusher):
        pusher.close()


def parent_metrics() -> WorkerMetrics | None:
    """The parent's registry, once the worker is ready (None before, and in pool children)."""
    metrics = _parent.get("metrics") if _parent.get("pid") == os.getpid() else None
    return metrics if isinstance(metrics, WorkerMetrics) else None


def push_soon() -> None:
    """Ask the parent's pusher to push what changed (no-op without one)."""
    pusher = _parent.get("pusher") if _parent.get("pid") == os.getpid() else None
    if isinstance(pusher, BackgroundPusher):
        pusher.notify()


def count_bad_message() -> None:
    metrics = parent_metrics()
    if metrics is not None:
        metrics.error("bad_message")
        push_soon()


class CountingConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, counting the messages it has to drop before any task runs."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors or ())

        def on_task_received(message: Any) -> Any:
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:
                # A body that is JSON but not a task's shape (`42`) raises TypeError inside
                # Celery's strategy; unhandled, it stops the whole worker ("Unrecoverable
                # error") and the restored message then stops the next one. Drop it instead.
                return self.on_invalid_task(None, message, exc)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        count_bad_message()
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        count_bad_message()
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        count_bad_message()
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        count_bad_message()
        super().on_invalid_task(body, message, exc)
