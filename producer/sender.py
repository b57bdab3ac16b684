"""Sending job messages to the broker without importing the worker.

A light Celery app that knows only the broker and the task's name: no engine, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from core.contract import TASK_NAME, task_label
from core.delivery import DEFAULT_PRIORITY, QUEUE, celery_options, message_priority, time_limits
from core.settings import Settings


def client_app(settings: Settings) -> Celery:
    # No result backend: the producer reads outcomes from the batch state. With the Redis one,
    # every send_task SUBSCRIBEs to that task's result channel (Celery's async result
    # consumer): 100,000 jobs meant 100,000 subscriptions held by the producer and by Redis.
    # The workers still store results with their own backend (celeryconfig).
    app = Celery("tts_batch_producer", broker=settings.broker_url)
    app.conf.update(**celery_options(settings))
    return app


class JobSender:
    """Enqueues job messages, reusing one broker connection per call of `send`."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings

    def send(self, messages: Sequence[dict[str, Any]], *, priority: str = DEFAULT_PRIORITY) -> None:
        """Send `messages` at `priority` (high, normal, low: core.delivery.PRIORITIES)."""
        level = message_priority(priority)
        with self._app.producer_or_acquire() as producer:
            for message in messages:
                soft, hard = time_limits(self._settings, len(message["text"]))
                self._app.send_task(
                    TASK_NAME,
                    args=[message],
                    task_id=message["job_id"],
                    queue=QUEUE,
                    soft_time_limit=soft,
                    time_limit=hard,
                    producer=producer,
                    priority=level,
                    # Flower and the task events show this, not the message: batch, row,
                    # speaker and the text's start (core.contract.task_label).
                    argsrepr=task_label(message),
                    kwargsrepr="{}",
                )
