"""The Celery app: `celery -A worker.app worker`. Configured by celeryconfig.py."""

from __future__ import annotations

from celery import Celery

app = Celery("tts_batch", include=["worker.tasks"])
app.config_from_object("celeryconfig")
