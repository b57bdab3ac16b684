"""The first cache level: one synthesis per synthesis key, stored as a lossless master.

A job whose rendition is not stored yet asks here for the speech: the master is read from the
bucket if some job made it before (no engine call), else synthesized and stored. The synthesis
key's lease makes jobs wanting the same speech at once (say, an MP3 and an 8 kHz WAV of one
announcement) synthesize it once: the others wait for the master and render from it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from core.contract import JobMessage, master_key, synthesis_key
from core.errors import EngineFailure, InvalidJob, JobTimeout, ObjectMissing, StorageError
from worker.audio import decode_master, duration_seconds, encode_master

if TYPE_CHECKING:
    from worker.pipeline import WorkerContext

# tts_renditions_total{source}: made right after a synthesis, or from a stored master.
FROM_SYNTHESIS = "synthesis"
FROM_MASTER = "master"


@dataclass(frozen=True)
class Speech:
    """The engine's float samples of one job, at the engine's rate, and where they came from."""

    samples: np.ndarray
    source: str


def speech_for(
    ctx: WorkerContext,
    job: JobMessage,
    *,
    identity: dict[str, str | int],
    spoken: str,
    deadline: float | None,
) -> Speech:
    """The job's speech: from its stored master, or synthesized (and stored as the master).
    `identity` is the engine's with the text rules applied (as the content key has it);
    `spoken` the text the engine is given (lexicons and number rules applied)."""
    skey = synthesis_key(identity, job.spec)
    mkey = master_key(skey)

    def found() -> bool:
        started = time.perf_counter()
        existing = ctx.store.head(mkey)
        ctx.metrics.storage.labels(op="lookup").observe(time.perf_counter() - started)
        return existing is not None

    # The content lease, on the synthesis key: one synthesis of this speech at a time.
    with ctx.leases.exclusive(skey, done=found) as mine:
        if mine and not found():
            samples = _synthesize(ctx, job, spoken, deadline=deadline)
            _store_master(ctx, job, mkey, samples)
            return Speech(samples, FROM_SYNTHESIS)
    return Speech(_read_master(ctx, mkey), FROM_MASTER)


def _synthesize(
    ctx: WorkerContext, job: JobMessage, spoken: str, *, deadline: float | None
) -> np.ndarray:
    spec = job.spec
    # Engines without a speed are called exactly as before (no new keyword).
    speed = {} if spec.speed is None else {"speed": spec.speed}
    try:
        with ctx.gate.enter(deadline=deadline):
            # Engine time, not the turn waited for an engine that takes one job at a time.
            started = time.perf_counter()
            samples = ctx.engine.synthesize(
                spoken, speaker=spec.speaker, lang=spec.lang, deadline=deadline, **speed
            )
        inference_seconds = time.perf_counter() - started
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0 or not np.isfinite(samples).all():
            raise ValueError("the engine returned empty or non-finite audio")
    except (InvalidJob, JobTimeout, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        raise EngineFailure(f"{type(exc).__name__}: {exc}") from exc
    ctx.metrics.synthesized(
        seconds=inference_seconds,
        audio_seconds=duration_seconds(samples, ctx.engine.sample_rate),
        characters=len(spec.text),
    )
    return samples


def _store_master(ctx: WorkerContext, job: JobMessage, mkey: str, samples: np.ndarray) -> None:
    rate = ctx.engine.sample_rate
    speaker = job.spec.speaker
    metadata = {
        "engine": ctx.engine.name,
        "model": ctx.engine.model_id,
        "speaker": speaker if speaker.isascii() else speaker.encode("utf-8").hex(),
        "speaker-encoding": "ascii" if speaker.isascii() else "utf-8-hex",
        "lang": job.spec.lang or "",
        "sample-rate": str(rate),
        "duration-seconds": f"{duration_seconds(samples, rate):.3f}",
        "text-sha256": hashlib.sha256(job.spec.text.encode("utf-8")).hexdigest(),
    }
    started = time.perf_counter()
    # Conditional: a master some other writer stored first is the same speech; it stays.
    ctx.store.put(mkey, encode_master(samples, sample_rate=rate), fmt="flac", metadata=metadata)
    ctx.metrics.storage.labels(op="upload").observe(time.perf_counter() - started)


def _read_master(ctx: WorkerContext, mkey: str) -> np.ndarray:
    try:
        data = ctx.store.get(mkey)
    except ObjectMissing:
        # Seen, then gone (deleted by hand, a lifecycle rule): a retry synthesizes it again.
        raise StorageError(f"master {mkey} vanished while being read") from None
    samples, rate = decode_master(data)
    if rate != ctx.engine.sample_rate:
        raise StorageError(f"master {mkey} is at {rate} Hz, the engine's rate is not")
    return samples
