"""The worker's own remote-control command, `tts_engine`: what engine this node loaded, its
model and the speakers (with aliases) it offers, so that `tts-batch speakers` and `tts-batch
doctor` can ask every running node at once:

    app.control.broadcast("tts_engine", reply=True, timeout=2.0)
    -> [{"worker-1@host": {"engine": "espeak", "model": None, "speakers": [...], ...}}]

Registered by importing this module (worker/tasks.py does); answered by the node's parent,
which holds the engine it preloaded (worker/engine_host.py).
"""

from __future__ import annotations

from typing import Any

from celery.worker.control import inspect_command

from core.settings import Settings
from worker import engine_host
from worker.engine_info import engine_info


@inspect_command()  # type: ignore[untyped-decorator]
def tts_engine(state: Any, **_: Any) -> dict[str, Any]:
    """Engine, model, speakers and aliases of this worker node."""
    try:
        engine = engine_host.current()
    except RuntimeError as exc:
        return {"error": str(exc)}
    return engine_info(engine, Settings.from_env())
