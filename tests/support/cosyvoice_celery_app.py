"""A minimal Celery app wired the way the worker glue must be (see worker/engine_host.py):
the engine loads in the worker's parent on `worker_init`, each pool process gets its
per-process setup on `worker_process_init`, tasks use the inherited engine.

Broker and results are folders (kombu's filesystem transport, Celery's file backend), so the
start-up path is tested with real worker processes and no Redis. The folder is named by
COSYVOICE_TEST_QUEUE_DIR, read when the app module is imported (a test-only module).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery, signals

from core.settings import Settings
from worker import engine_host


def make_app(root: Path) -> Celery:
    """A Celery app (the worker's, or a test's client) on the broker folders under `root`."""
    app = Celery("cosyvoice_test")
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
            "store_processed": False,
        },
        result_backend=f"file://{root / 'results'}",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_app(Path(os.environ.get("COSYVOICE_TEST_QUEUE_DIR", "/nonexistent")))
_loaded_in = {"pid": 0}


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    engine_host.preload(Settings.from_env())
    _loaded_in["pid"] = os.getpid()


@signals.worker_process_init.connect
def _init_process(**_: Any) -> None:
    engine_host.init_pool_process()


@app.task(name="cosyvoice_test.say")
def say(text: str, speaker: str, lang: str | None) -> dict[str, Any]:
    import torch

    engine = engine_host.current()
    audio = engine.synthesize(text, speaker=speaker, lang=lang)
    return {
        "pid": os.getpid(),
        "loaded_in": _loaded_in["pid"],
        "threads": torch.get_num_threads(),
        "samples": int(audio.size),
        "sample_rate": engine.sample_rate,
        "finite": bool(np.isfinite(audio).all()),
        "sha256": hashlib.sha256(audio.tobytes()).hexdigest(),
    }
