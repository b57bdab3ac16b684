"""A trivial Celery app for the local-stack tests: Flower and workers without worker/app.py."""

from __future__ import annotations

import os

from celery import Celery

from core.delivery import QUEUE

app = Celery("localstack_test", broker=os.environ.get("TTS_BROKER_URL", "redis://127.0.0.1:1/0"))
app.conf.task_default_queue = QUEUE


@app.task(name="tts.ping")  # type: ignore[untyped-decorator]
def ping() -> str:
    return "pong"
