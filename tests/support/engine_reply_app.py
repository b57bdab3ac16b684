"""A trivial Celery app whose workers answer the `tts_engine` remote-control command with a
fixed reply, for `tts-batch doctor`'s worker check (the real command is the worker's own)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.worker.control import inspect_command

from core.delivery import QUEUE

app = Celery("engine_reply_test", broker=os.environ.get("TTS_BROKER_URL", "redis://127.0.0.1:1/0"))
app.conf.task_default_queue = QUEUE

REPLY = {
    "engine": "fake",
    "model": "fake-tone-1",
    "speakers": ["中文女", "英文女"],
    "aliases": ["zh-female", "en-female"],
}


@inspect_command()  # type: ignore[untyped-decorator]
def tts_engine(state: Any) -> dict[str, Any]:
    return REPLY
