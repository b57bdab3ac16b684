"""How task threads enter the engine: all together when it batches, one at a time when not.

In batched mode a worker process runs B task threads. An engine with `max_batch` above 1 is
thread-safe and wants them all inside at once (its scheduler decodes their steps together).
Any other engine was never promised thread-safety: its jobs take turns, each waiting at most
until its own deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import JobTimeout
from worker.synth import Synthesizer, max_batch


class EngineGate:
    """Admits task threads into one engine."""

    def __init__(self, engine: Synthesizer) -> None:
        self.batches = max_batch(engine) > 1
        self._turn = threading.Lock()

    @contextmanager
    def enter(self, *, deadline: float | None) -> Iterator[None]:
        """Hold the engine for one synthesis; JobTimeout if the deadline passes first."""
        if self.batches:
            yield
            return
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._turn.acquire(timeout=wait):
            raise JobTimeout("past the job's deadline while waiting for the engine")
        try:
            yield
        finally:
            self._turn.release()
