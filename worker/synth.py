"""The `Synthesizer` protocol and `load_engine`. Engines live in `worker/engines/`; no Celery here.

An engine is built once per worker process by `load_engine(settings)` and then asked for
float32 mono PCM in [-1, 1] at its own sample rate. `identity` names everything about the
engine that changes the audio; it goes into the content key.

Batching (optional, read with getattr): an engine whose `max_batch` is above 1 decodes the
steps of several jobs together, and its `synthesize` is thread-safe: each task thread calls it
and blocks until its own job's audio is ready. Other engines are called by one thread at a time
(worker.engine_gate). `set_step_observer(fn)` asks a batching engine to call `fn(rows)` after
every decoding step with the number of jobs in that step (the worker counts them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from core.errors import ConfigError
from core.settings import Settings

ENGINES = ("espeak", "fake", "cosyvoice")


class Synthesizer(Protocol):
    name: str
    model_id: str
    sample_rate: int

    def speakers(self) -> frozenset[str]:
        """The speaker ids this engine can voice."""
        ...

    def identity(self) -> dict[str, str | int]:
        """Everything about the engine that changes the audio (goes into the content key)."""
        ...

    def synthesize(
        self, text: str, *, speaker: str, lang: str | None, deadline: float | None = None
    ) -> np.ndarray:
        """Speak normalized `text`; float32 mono samples at `sample_rate`.

        `deadline` is an absolute `time.monotonic()` value or None: past it the engine gives
        the job up and raises core.errors.JobTimeout."""
        ...


# What a batching engine calls after each decoding step with the number of rows (jobs) in it.
StepObserver = Callable[[int], None]


def max_batch(engine: Synthesizer) -> int:
    """Jobs the engine decodes together (1 for an engine without `max_batch`)."""
    return int(getattr(engine, "max_batch", 1))


def load_engine(settings: Settings) -> Synthesizer:
    """Build the engine named by settings. Heavy engines are imported only here."""
    if settings.engine == "espeak":
        from worker.engines.espeak import EspeakSynthesizer

        return EspeakSynthesizer()
    if settings.engine == "fake":
        from worker.engines.fake import FakeSynthesizer

        return FakeSynthesizer(
            delay=settings.fake_delay,
            marker_dir=settings.fake_marker_dir,
            max_batch=settings.effective_engine_batch,
        )
    if settings.engine == "cosyvoice":
        from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

        engine: Synthesizer = CosyVoiceSynthesizer.from_settings(settings)
        return engine
    raise ConfigError(
        f"TTS_ENGINE: unknown engine {settings.engine!r}; known: {', '.join(ENGINES)}"
    )
