"""One job's steps, from message to stored audio; no Celery app or task here (only its
time-limit exception is let through).

validate -> content key -> lease -> cached? -> speech (the stored master, or synthesize and
store it: worker/master.py) -> render (worker/render.py) -> conditional upload -> record ->
metrics. Two cache levels: a rendition (format, rate, loudness, silence) under its content key,
and the speech it is made from under its synthesis key.
Bad input raises InvalidJob, an engine that fails on valid input EngineFailure (both
PermanentError: never retried); transient ones raise TransientError for the caller to retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from celery.exceptions import SoftTimeLimitExceeded

from core.batch_state import BatchState
from core.contract import (
    ROW_ID_PATTERN,
    JobMessage,
    build_message,
    content_key,
    object_key,
    parse_message,
)
from core.delivery import job_deadline_seconds
from core.errors import EngineFailure, InvalidJob, JobTimeout, StorageError
from core.settings import Settings
from core.storage import AudioStore, StoredObject
from worker import fault_points
from worker.batch_manifest import publish_if_finished
from worker.engine_gate import EngineGate
from worker.lease import ContentLease
from worker.master import speech_for
from worker.push import WorkerMetrics
from worker.render import Rendered, render
from worker.synth import Synthesizer
from worker.text.prepare import LexiconSource, engine_text, rules_language, text_rules


@dataclass
class WorkerContext:
    """What a worker process builds once and every job uses."""

    settings: Settings
    engine: Synthesizer
    store: AudioStore
    redis: redis.Redis
    metrics: WorkerMetrics
    worker_name: str
    leases: ContentLease
    # True where tasks run in the node's own process (batched mode, threads pool): Celery's time
    # limits do not apply there, so each job carries a deadline into the engine instead.
    deadlines: bool = False
    # The global lexicon (TTS_LEXICON) and the batch lexicons read from Redis; None: none.
    lexicons: LexiconSource | None = None
    gate: EngineGate = field(init=False)

    def __post_init__(self) -> None:
        self.gate = EngineGate(self.engine)

    def deadline(self, job: JobMessage, *, started: float) -> float | None:
        """The job's absolute deadline (time.monotonic()) for a job that started at `started`;
        None where Celery's soft and hard limits govern (prefork)."""
        if not self.deadlines:
            return None
        return started + job_deadline_seconds(self.settings, len(job.spec.text))

    def batch(self, batch_id: str) -> BatchState:
        return BatchState(self.redis, batch_id, ttl_seconds=self.settings.batch_ttl_seconds)


class OutcomeRecorder(Protocol):
    """What recording a failure needs: a task's WorkerContext, or the parent process's
    recorder (worker/parent/outcomes.py) for jobs whose pool process was killed."""

    worker_name: str
    metrics: WorkerMetrics

    # Where the manifest of a batch that this outcome finishes is written.
    @property
    def store(self) -> AudioStore: ...

    def batch(self, batch_id: str) -> BatchState: ...


def parse(ctx: WorkerContext, message: Any) -> JobMessage:
    """Validate a message against the contract and this engine's own speakers."""
    speakers = frozenset(ctx.settings.speakers) & ctx.engine.speakers()
    return parse_message(message, speakers=speakers, max_chars=ctx.settings.max_chars)


def run_job(
    ctx: WorkerContext, job: JobMessage, *, attempt: int, deadline: float | None = None
) -> dict[str, Any]:
    """Produce (or find) the audio of a validated job and record the result in its batch.
    Past `deadline` (time.monotonic(); None: no deadline) the engine raises JobTimeout."""
    check_engine_options(ctx, job)
    lexicons = ctx.lexicons.for_job(job.spec.lexicon) if ctx.lexicons else []
    if job.spec.lexicon and not ctx.lexicons:
        raise InvalidJob("this worker reads no batch lexicons", field="lexicon")
    lang = rules_language(job.spec.lang, job.spec.speaker)
    spoken = engine_text(job.spec.text, lang=lang, lexicons=lexicons, engine=ctx.engine.name)
    # The text rules (number rules' version, lexicon digests) change the audio: they are part
    # of the key, beside the engine's identity.
    identity = {**ctx.engine.identity(), "text_rules": text_rules(lexicons)}
    key = content_key(identity, job.spec)
    okey = object_key(key, job.spec.fmt)
    fault_points.reached(ctx.settings, fault_points.LOOKUP)
    # One lookup, made under the content key's lease: a holder that stored the object released
    # the lease only after its upload, so a job that takes the lease and finds nothing is the
    # one to make it (two S3 round trips on this key for a new job, lookup and upload, and two
    # on the master's; one for a cached one). A job that finds the lease taken waits for the
    # object (each look is one lookup).
    seen: list[StoredObject] = []

    def found() -> bool:
        existing = _lookup(ctx, okey)
        if existing is not None:
            seen.append(existing)
        return existing is not None

    with ctx.leases.exclusive(key, done=found) as mine:
        if mine and not found():
            return _synthesize_and_record(
                ctx,
                job,
                okey,
                identity=identity,
                spoken=spoken,
                attempt=attempt,
                deadline=deadline,
            )
    return _cached(ctx, job, seen[-1], attempt=attempt)


def _cached(
    ctx: WorkerContext, job: JobMessage, existing: StoredObject, *, attempt: int
) -> dict[str, Any]:
    audio_seconds = _float(existing.metadata.get("duration-seconds"))
    return _record(
        ctx, job, existing.key, status="cached", audio_seconds=audio_seconds, attempt=attempt
    )


def _lookup(ctx: WorkerContext, okey: str) -> StoredObject | None:
    started = time.perf_counter()
    existing = ctx.store.head(okey)
    ctx.metrics.storage.labels(op="lookup").observe(time.perf_counter() - started)
    return existing


def check_engine_options(ctx: WorkerContext, job: JobMessage) -> None:
    """Refuse a speed this engine cannot honour (InvalidJob naming the field)."""
    if job.spec.speed is not None and not getattr(ctx.engine, "supports_speed", False):
        raise InvalidJob(
            f"speed is not supported by the {ctx.engine.name} engine"
            " (espeak and cosyvoice have it)",
            reason="unsupported_format",
            field="speed",
        )


def _synthesize_and_record(
    ctx: WorkerContext,
    job: JobMessage,
    okey: str,
    *,
    identity: dict[str, str | int],
    spoken: str,
    attempt: int,
    deadline: float | None,
) -> dict[str, Any]:
    spec = job.spec
    # The second cache level: this rendition is new, but its speech may be stored already.
    speech = speech_for(ctx, job, identity=identity, spoken=spoken, deadline=deadline)
    try:
        rendered = render(speech.samples, source_rate=ctx.engine.sample_rate, spec=spec)
    except (InvalidJob, JobTimeout, SoftTimeLimitExceeded):
        raise
    except Exception as exc:
        raise EngineFailure(f"rendition: {type(exc).__name__}: {exc}") from exc
    audio_seconds = rendered.seconds
    data = rendered.data
    started = time.perf_counter()
    written = ctx.store.put(okey, data, fmt=spec.fmt, metadata=_metadata(ctx, job, rendered))
    ctx.metrics.storage.labels(op="upload").observe(time.perf_counter() - started)
    if not written:
        # The upload is conditional: another writer stored this key first (our lease lapsed
        # while we worked, e.g. a process stalled past TTS_LEASE_SECONDS). Its object stays,
        # and this job is served from it.
        existing = _lookup(ctx, okey)
        if existing is None:
            raise StorageError(f"{okey} was refused as existing, then not found")
        return _cached(ctx, job, existing, attempt=attempt)
    ctx.metrics.rendered(fmt=spec.fmt, source=speech.source)
    fault_points.reached(ctx.settings, fault_points.RECORD)
    return _record(ctx, job, okey, status="succeeded", audio_seconds=audio_seconds, attempt=attempt)


def _record(
    ctx: WorkerContext,
    job: JobMessage,
    okey: str,
    *,
    status: str,
    audio_seconds: float | None,
    attempt: int,
) -> dict[str, Any]:
    result = {
        "job_id": job.job_id,
        "batch_id": job.batch_id,
        "status": status,
        "key": okey,
        "uri": ctx.store.uri(okey),
        "audio_seconds": audio_seconds,
        "cached": status == "cached",
        "engine": ctx.engine.name,
        "worker": ctx.worker_name,
        # Which pool process ran it: tests prove a process survives hostile input.
        "pid": os.getpid(),
        "attempts": attempt,
        # When the outcome was recorded: the order jobs finished in (priorities are tested so).
        "finished_at": time.time(),
    }
    # The record keeps the message it ran from (as a failure's does), so that `tts-batch
    # verify --repair` can enqueue the job again if its object vanishes; the returned result
    # does not carry the text.
    message = build_message(
        job_id=job.job_id, batch_id=job.batch_id, spec=job.spec, enqueued_at=job.enqueued_at or 0.0
    )
    state = ctx.batch(job.batch_id)
    first = state.record(job.job_id, {**result, "message": message})
    # A redelivered job whose first run already recorded an outcome is not counted again.
    if first:
        ctx.metrics.outcome(status)
        publish_if_finished(ctx, state)
    return result


def record_failure(
    ctx: OutcomeRecorder,
    message: Any,
    *,
    reason: str,
    error: str,
    attempts: int,
) -> None:
    """Record a job's terminal failure in its batch (when the message names one) and count it."""
    job_id, batch_id = message_ids(message)
    first = True
    if job_id and batch_id:
        record = {
            "job_id": job_id,
            "batch_id": batch_id,
            "status": "failed",
            "cached": False,
            "reason": reason,
            "error": error[:500],
            "attempts": attempts,
            "worker": ctx.worker_name,
            "pid": os.getpid(),
            # Kept so that `tts-batch retry` can enqueue the job again as it was.
            "message": _storable(message) if isinstance(message, dict) else None,
            "failed_at": time.time(),
        }
        state = ctx.batch(batch_id)
        first = state.record(job_id, record)
        if first:
            publish_if_finished(ctx, state)
    if first:
        ctx.metrics.outcome("failed")


def _storable(message: dict[str, Any]) -> dict[str, Any]:
    """The message as JSON that encodes to UTF-8: a hostile one may hold lone surrogates
    (valid in JSON as escapes, not in UTF-8), which Redis cannot take; they become '?'."""
    text = json.dumps(message, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def message_ids(message: Any) -> tuple[str | None, str | None]:
    if not isinstance(message, dict):
        return None, None
    job_id, batch_id = message.get("job_id"), message.get("batch_id")

    def ok(value: Any) -> bool:
        return isinstance(value, str) and ROW_ID_PATTERN.fullmatch(value) is not None

    return (job_id if ok(job_id) else None, batch_id if ok(batch_id) else None)


def _metadata(ctx: WorkerContext, job: JobMessage, rendered: Rendered) -> dict[str, str]:
    # S3 metadata must be ASCII: the speaker id is percent-free hex-encoded UTF-8 when needed.
    speaker = job.spec.speaker
    extra = {} if rendered.loudness is None else {"loudness-lufs": f"{rendered.loudness:.2f}"}
    return {
        "engine": ctx.engine.name,
        "model": ctx.engine.model_id,
        "speaker": speaker if speaker.isascii() else speaker.encode("utf-8").hex(),
        "speaker-encoding": "ascii" if speaker.isascii() else "utf-8-hex",
        "lang": job.spec.lang or "",
        "sample-rate": str(rendered.sample_rate),
        "duration-seconds": f"{rendered.seconds:.3f}",
        "text-sha256": hashlib.sha256(job.spec.text.encode("utf-8")).hexdigest(),
        **extra,
    }


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
