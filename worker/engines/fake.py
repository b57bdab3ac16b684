"""The fake engine: a deterministic tone for plumbing tests and benchmarks (the test double)."""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np

from core.errors import JobTimeout
from core.settings import COSYVOICE_SFT_SPEAKERS


class FakeSynthesizer:
    """A deterministic tone whose length follows the text: plumbing tests and benchmarks.

    `delay` seconds of sleep per call stand in for a slow engine. Calls are independent, so
    it stands in for a batching engine too: `max_batch` jobs (TTS_ENGINE_BATCH) may be inside
    it at once, each taking `delay` as if alone.
    """

    name = "fake"
    model_id = "fake-tone-1"
    sample_rate = 16000

    def __init__(self, *, delay: float = 0.0, marker_dir: str = "", max_batch: int = 1) -> None:
        self._delay = delay
        self._marker_dir = Path(marker_dir) if marker_dir else None
        self.max_batch = max_batch

    def speakers(self) -> frozenset[str]:
        return frozenset(COSYVOICE_SFT_SPEAKERS)

    def identity(self) -> dict[str, str | int]:
        return {"engine": self.name, "model": self.model_id, "sample_rate": self.sample_rate}

    def synthesize(
        self, text: str, *, speaker: str, lang: str | None, deadline: float | None = None
    ) -> np.ndarray:
        if self._marker_dir is not None:
            # Lets a fault test know that this process is inside a synthesis right now.
            marker = self._marker_dir / f"{os.getpid()}-{time.time_ns()}"
            marker.write_text(text, encoding="utf-8")
        if self._delay:
            self._sleep(self._delay, deadline)
        seconds = min(0.3 + 0.06 * len(text), 60.0)
        digest = hashlib.sha256(f"{speaker}|{lang}|{text}".encode()).digest()
        freq = 180.0 + digest[0] * 2.0
        t = np.arange(int(seconds * self.sample_rate), dtype=np.float32) / self.sample_rate
        envelope = np.minimum(1.0, np.minimum(t, seconds - t) * 20.0)
        return (0.4 * envelope * np.sin(2 * math.pi * freq * t)).astype(np.float32)

    @staticmethod
    def _sleep(seconds: float, deadline: float | None) -> None:
        """Sleep `seconds`; if that would pass the deadline, sleep until it, then time out
        (as a real engine would, working until it notices)."""
        if deadline is not None and time.monotonic() + seconds > deadline:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise JobTimeout(f"fake engine: past the job's deadline ({seconds:g} s of work)")
        time.sleep(seconds)
