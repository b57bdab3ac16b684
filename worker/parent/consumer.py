"""The Celery parent process's side of metrics.

Messages that fail before any task code runs (a body that is not JSON or not UTF-8, a pickled
body, an unknown task) are handled by the consumer in the parent: they are counted here as
tts_errors_total{reason="bad_message"}, pushed under the parent's own {worker, process} group.
The parent also runs the janitor that removes its dead children's groups. In batched mode the
parent is the only process and runs the tasks too: it adopts the task side's metrics and pusher
(`SharedMetrics`), since two registries PUT under one {worker, process} group would overwrite
each other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from celery.worker.consumer import Consumer

from worker.parent.janitor import Janitor
from worker.push import BackgroundPusher, WorkerMetrics, start_metrics
from worker.synth import Synthesizer

log = logging.getLogger(__name__)

_parent: dict[str, Any] = {}


class SharedMetrics(NamedTuple):
    """The registry and pusher the parent adopts when it runs the tasks itself."""

    metrics: WorkerMetrics
    pusher: BackgroundPusher | None


def start_parent(
    *,
    worker: str,
    pushgateway_url: str,
    engine: Synthesizer,
    load_seconds: float,
    shared: SharedMetrics | None = None,
) -> None:
    """Parent metrics and janitor; called once the worker is ready (after the pool forked).
    The parent loaded the engine (engine_host.preload), so its group reports the load time."""
    if shared is None:
        metrics, pusher = start_metrics(
            engine, load_seconds=load_seconds, worker=worker, pushgateway_url=pushgateway_url
        )
    else:
        metrics, pusher = shared
    _parent.update(pid=os.getpid(), metrics=metrics)
    if pusher is not None:
        janitor = Janitor(pushgateway_url, worker=worker).start()
        _parent.update(pusher=pusher, janitor=janitor)


def stop_parent() -> None:
    """Final push and removal of the parent's group, then one last sweep for dead children."""
    if _parent.get("pid") != os.getpid():
        return
    janitor, pusher = _parent.pop("janitor", None), _parent.pop("pusher", None)
    if janitor is not None:
        janitor.stop()
    if pusher is not None:
        pusher.close()
    if janitor is not None:
        janitor.sweep()


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
