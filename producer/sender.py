"""Sending job messages to the broker without importing the worker.

A light Celery app that knows only the broker and the task's name: no engine, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from core.contract import TASK_NAME
from core.redis_conn import celery_tls_options
from core.settings import Settings

QUEUE = "tts"


def time_limits(settings: Settings, text_chars: int) -> tuple[float, float]:
    """(soft, hard) time limit of one job, scaled to its text length."""
    soft = settings.task_time_base_seconds + settings.task_time_per_char_seconds * text_chars
    return soft, soft + settings.task_time_grace_seconds


def client_app(settings: Settings) -> Celery:
    # No result backend: the producer reads outcomes from the batch state. With the Redis one,
    # every send_task SUBSCRIBEs to that task's result channel (Celery's async result
    # consumer): 100,000 jobs meant 100,000 subscriptions held by the producer and by Redis.
    # The workers still store results with their own backend (celeryconfig).
    app = Celery("tts_batch_producer", broker=settings.broker_url)
    app.conf.update(
        broker_use_ssl=celery_tls_options(settings, settings.broker_url),
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
    )
    return app


class JobSender:
    """Enqueues job messages, reusing one broker connection per call of `send`."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings

    def send(self, messages: Sequence[dict[str, Any]]) -> None:
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
                )
