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

# The shape of the worker's reply (worker/engine_info.py on the voices branch).
REPLY = {
    "engine": "fake",
    "model": None,
    "model_id": "fake-tone-1",
    "speakers": ["中文女", "英文女", "日语男"],
    "aliases": {"zh-female": "中文女", "en-female": "英文女"},
}


@inspect_command()  # type: ignore[untyped-decorator]
def tts_engine(state: Any) -> dict[str, Any]:
    return REPLY
