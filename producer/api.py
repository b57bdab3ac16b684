"""The producer API: validate rows, record the batch, enqueue one job per distinct request.

    producer = Producer.from_env()
    batch = producer.submit_batch([{"id": "a1", "text": "...", "speaker": "en-female"}])
    for result in batch.wait(timeout=600):
        print(result.row_id, result.status, result.uri)
        if result.ok:  # succeeded or cached: it has audio
            result.download("out/", store=batch.store)  # out/a1.wav; kept if already there
            print(result.presigned_url(3600, store=batch.store))
    producer.submit_batch(rows, priority="high")  # taken before normal and low jobs
    producer.batches(limit=5)                     # newest first, with their counts
    producer.cancel(batch.batch_id)               # jobs not started never run
    producer.retry(batch.batch_id)                # failures a retry can fix, run again

A speaker is named by its id (英文女) or its ASCII alias (en-female; core/speakers.py): the
same job either way. `batch.report.warnings` names rows whose `lang` disagrees with their
speaker's language (enqueued all the same).

Imports no torch and no engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from core.batch_state import (
    DONE,
    IN_FLIGHT,
    RETRIED,
    TAKEN_OVER,
    BatchState,
    Progress,
    list_batches,
)
from core.contract import (
    BATCH_ID_PATTERN,
    SUCCESS_STATUSES,
    JobSpec,
    build_message,
    resend,
    task_id_for,
    validate_row_id,
    validate_spec,
)
from core.delivery import DEFAULT_PRIORITY, message_priority
from core.errors import INPUT_REASONS, InvalidBatch, InvalidJob
from core.lexicon import REDIS_PREFIX as LEXICON_PREFIX
from core.lexicon import Lexicon, load_lexicon
from core.redis_conn import connect
from core.settings import Settings
from core.speakers import language_mismatch
from producer.rows import Row, read_rows
from producer.send_lease import SendLease
from producer.sender import JobSender, client_app
from producer.verify import MissingRow, Vanished, VerifyReport, find_vanished

if TYPE_CHECKING:
    from core.storage import AudioStore

# Called with (rows enqueued so far, rows to enqueue) while a submission is sent.
EnqueueProgress = Callable[[int, int], None]
# How many rows are validated, recorded and sent per round trip.
_CHUNK = 500
# How many row errors an InvalidBatch keeps (the first ones; the count is always exact).
_MAX_REPORTED_ERRORS = 50
# How many warnings a SubmitReport keeps (the first ones; the count is always exact).
_MAX_REPORTED_WARNINGS = 20


@dataclass(frozen=True)
class JobResult:
    """The outcome of one row. `status` is succeeded, cached, failed, cancelled (its batch
    was cancelled before the job started) or pending (or any other status the batch records).
    A plain value: the methods that reach the bucket take the store (`BatchHandle.store`)."""

    row_id: str
    job_id: str
    status: str
    key: str | None = None
    uri: str | None = None
    audio_seconds: float | None = None
    cached: bool = False
    reason: str | None = None
    error: str | None = None
    attempts: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.row_id,
            "job_id": self.job_id,
            "status": self.status,
            "key": self.key,
            "uri": self.uri,
            "audio_seconds": self.audio_seconds,
            "cached": self.cached,
            "reason": self.reason,
            "error": self.error,
        }

    def download(self, directory: Path | str, *, store: AudioStore) -> Path:
        """Write this row's audio into `directory` (created if needed) as `<row id>.<format>`
        and return its path; a file with the same size and MD5 there already is kept as it is.
        ValueError when the row has no audio (not ok), ObjectMissing when the object is gone."""
        from core.errors import ObjectMissing
        from producer.results import MISSING, fetch, file_name

        folder = Path(directory)
        file_name(self)  # a row without audio is refused before any folder is made
        folder.mkdir(parents=True, exist_ok=True)
        fetched = fetch(store, self, folder)
        if fetched.action == MISSING or fetched.path is None:
            raise ObjectMissing(str(self.key))
        return fetched.path

    def presigned_url(self, seconds: int, *, store: AudioStore) -> str:
        """A URL that GETs this row's audio without credentials for `seconds` (at most 7
        days); ValueError when the row has no audio."""
        from producer.results import presigned_url

        return presigned_url(store, self, seconds)

    @classmethod
    def from_record(cls, row_id: str, job_id: str, record: Mapping[str, Any] | None) -> JobResult:
        if record is None:
            return cls(row_id=row_id, job_id=job_id, status="pending")
        return cls(
            row_id=row_id,
            job_id=job_id,
            status=str(record["status"]),
            key=record.get("key"),
            uri=record.get("uri"),
            audio_seconds=record.get("audio_seconds"),
            cached=bool(record.get("cached")),
            reason=record.get("reason"),
            error=record.get("error"),
            attempts=record.get("attempts"),
        )


@dataclass(frozen=True)
class BatchSummary:
    """One batch as `Producer.batches()` lists it."""

    batch_id: str
    created_at: float
    progress: Progress
    cancelled_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "batch_id": self.batch_id,
            "created_at": self.created_at,
            "total": p.total,
            "succeeded": p.succeeded,
            "cached": p.cached,
            "failed": p.failed,
            "pending": p.pending,
            "cancelled": p.cancelled,
            "rejected": p.rejected,
            "cancelled_at": self.cancelled_at,
        }


@dataclass(frozen=True)
class CancelReport:
    """What `Producer.cancel` did: jobs (and their rows) recorded cancelled, rows still running."""

    jobs_cancelled: int
    rows_cancelled: int
    rows_running: int


@dataclass
class RetryReport:
    """What `Producer.retry` did: jobs enqueued again, failed jobs skipped by reason."""

    jobs_sent: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass
class SubmitReport:
    """What one submission did: rows accepted, jobs sent, what was already done or skipped."""

    rows: int = 0
    new_rows: int = 0
    jobs_sent: int = 0
    jobs_already_done: int = 0
    jobs_in_flight: int = 0
    jobs_retried: int = 0
    # Sent again because the producer that claimed them died before confirming its send.
    jobs_taken_over: int = 0
    rejected: list[InvalidJob] = field(default_factory=list)
    rejected_count: int = 0
    # Rows enqueued although their speaker's language and their `lang` disagree (e.g.
    # en-female with lang=zh): the first _MAX_REPORTED_WARNINGS lines; the count is exact.
    warnings: list[str] = field(default_factory=list)
    warnings_count: int = 0


class BatchHandle:
    """A submitted batch: its progress and its results, read from Redis."""

    def __init__(
        self,
        state: BatchState,
        report: SubmitReport | None = None,
        *,
        settings: Settings | None = None,
    ) -> None:
        self._state = state
        self.batch_id = state.batch_id
        self.report = report or SubmitReport()
        self._settings = settings
        self._store: AudioStore | None = None

    @property
    def store(self) -> AudioStore:
        """The bucket of the batch's audio (built on first use), for JobResult.download and
        JobResult.presigned_url."""
        if self._store is None:
            from core.storage import AudioStore  # boto3: only for what reaches the bucket

            self._store = AudioStore.from_settings(self._settings or Settings.from_env())
        return self._store

    def exists(self) -> bool:
        """False for a batch never submitted or expired."""
        return self._state.exists()

    def manifest(self) -> Iterator[dict[str, Any]]:
        """The manifest: one line per row in submission order, every status, each with the
        batch id (core/manifest.py)."""
        from core.manifest import manifest_lines

        return manifest_lines(self._state)

    def upload_manifest(self) -> str:
        """Write the manifest object (`batches/<id>/manifest.json`, core/manifest.py) now and
        return its URI. Workers write it when the batch ends; this is for any other time."""
        from core.manifest import manifest_document, manifest_key

        key = manifest_key(self.batch_id)
        self.store.put_document(
            key, manifest_document(self._state), content_type="application/json"
        )
        return self.store.uri(key)

    def progress(self) -> Progress:
        """Rows of the batch: total, succeeded (incl. cached), failed, pending."""
        return self._state.progress()

    def results(self) -> Iterator[JobResult]:
        """One result per row, in submission order (pending rows say so)."""
        for row_id, job_id, record in self._state.iter_rows():
            yield JobResult.from_record(row_id, job_id, record)

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        *,
        poll_seconds: float = 0.5,
    ) -> list[JobResult]:
        """Block until every row has an outcome (or `timeout` seconds pass: TimeoutError),
        calling `on_progress` whenever the counts change; return one result per row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Progress | None = None
        while True:
            progress = self.progress()
            if progress != last and on_progress is not None:
                on_progress(progress)
            last = progress
            if progress.done:
                return list(self.results())
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"batch {self.batch_id}: {progress.pending} of {progress.total} rows "
                    f"still pending after {timeout} s"
                )
            time.sleep(poll_seconds)

    def failed(self) -> list[JobResult]:
        """Failed rows; `attempts` counts every attempt, earlier retries' included."""
        failed = [result for result in self.results() if result.status == "failed"]
        past = self._state.past_attempts([r.job_id for r in failed])
        return [
            replace(r, attempts=(r.attempts or 0) + past[r.job_id]) if r.job_id in past else r
            for r in failed
        ]

    def rejected(self) -> list[dict[str, Any]]:
        """Rows refused at submission (`skip_invalid`): line, field, reason, error."""
        return self._state.rejected()


class JobHandle:
    """One submitted text: a batch of one row."""

    def __init__(self, batch: BatchHandle, row_id: str) -> None:
        self.batch = batch
        self.row_id = row_id

    def result(self) -> JobResult:
        for result in self.batch.results():
            if result.row_id == self.row_id:
                return result
        raise KeyError(self.row_id)

    def wait(self, timeout: float | None = None) -> JobResult:
        self.batch.wait(timeout=timeout)
        return self.result()


class Producer:
    """Validates and enqueues jobs; reads batches back."""

    def __init__(self, settings: Settings, *, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._redis = redis_client or connect(settings)
        self._sender = JobSender(client_app(settings), settings)

    @classmethod
    def from_env(cls) -> Producer:
        # The local stack's credentials file is the fallback for what the environment omits.
        from devstack.credentials import local_settings

        return cls(local_settings())

    def batch(self, batch_id: str) -> BatchHandle:
        """A handle on an existing batch."""
        validate_row_id(batch_id, field="batch_id")
        return BatchHandle(self._state(batch_id), settings=self.settings)

    def submit(
        self,
        text: str,
        *,
        speaker: str,
        lang: str | None = None,
        fmt: str = "wav",
        job_id: str | None = None,
        priority: str = DEFAULT_PRIORITY,
        sample_rate: int | None = None,
        loudness: float | None = None,
        true_peak: float | None = None,
        lead_silence_ms: int = 0,
        trail_silence_ms: int = 0,
        speed: float | None = None,
        lexicon: Path | str | Lexicon | None = None,
    ) -> JobHandle:
        """Enqueue one text; `job_id` (default: random) names it in the result. The output
        options are those of a row (README, job options): `sample_rate` (Hz), `loudness`
        (target LUFS) under `true_peak` (dBTP, default -1), silence in ms, `speed` (espeak)."""
        row_id = job_id or uuid.uuid4().hex
        row = {
            "id": row_id,
            "text": text,
            "speaker": speaker,
            "lang": lang,
            "format": fmt,
            "sample_rate": sample_rate,
            "loudness": loudness,
            "true_peak": true_peak,
            "lead_silence_ms": lead_silence_ms,
            "trail_silence_ms": trail_silence_ms,
            "speed": speed,
        }
        batch = self.submit_batch(
            [row], batch_id=f"job-{row_id}", priority=priority, lexicon=lexicon
        )
        return JobHandle(batch, row_id)

    def submit_batch(
        self,
        rows: Iterable[Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        skip_invalid: bool = False,
        priority: str = DEFAULT_PRIORITY,
        defaults: Mapping[str, Any] | None = None,
        lexicon: Path | str | Lexicon | None = None,
    ) -> BatchHandle:
        """Validate every row, then enqueue. `defaults` (e.g. {"format": "mp3", "loudness":
        -16}) fills the fields a row leaves out or blank: a row's own value wins. Any invalid
        row refuses the whole batch (InvalidBatch naming each row and field) unless
        `skip_invalid`, which reports them in `handle.report.rejected` and records them in
        the batch as `rejected`. `priority`
        (high, normal, low) orders the jobs in the queue: workers take high before normal
        before low. Resubmitting with the same `batch_id` enqueues only rows
        whose jobs are not done or in flight (failed ones run again). Each job is sent once
        even by producers submitting the same batch at once: the send is claimed first, and
        the claims of a producer that died mid-send are taken over (and sent) by a
        resubmission once its lease (`send_lease_seconds`) has lapsed. Rows whose `lang`
        disagrees with their speaker's language are enqueued and listed in
        `handle.report.warnings`. `lexicon` (a CSV/TSV/JSON file or a Lexicon; docs/lexicon.md)
        is validated first (InvalidBatch naming its row and field), stored with the batch and
        applied by the workers to every job of this submission."""
        materialized = [(index, dict(row)) for index, row in enumerate(rows, start=1)]
        return self._submit(
            lambda: _with_defaults(iter(materialized), defaults),
            batch_id=batch_id,
            skip_invalid=skip_invalid,
            priority=priority,
            lexicon=lexicon,
        )

    def submit_file(
        self,
        path: Path,
        *,
        batch_id: str | None = None,
        skip_invalid: bool = False,
        on_enqueued: EnqueueProgress | None = None,
        priority: str = DEFAULT_PRIORITY,
        defaults: Mapping[str, Any] | None = None,
        lexicon: Path | str | Lexicon | None = None,
    ) -> BatchHandle:
        """Like submit_batch, for a CSV or JSONL file, read twice and streaming (bounded
        memory whatever the file's size); rows are named by their line number; `defaults` as
        in submit_batch.
        `on_enqueued(done, total)` is called as rows are recorded and sent (a large file takes
        a while: ~2,400 rows/s on 2 cores)."""
        return self._submit(
            lambda: _with_defaults(read_rows(path), defaults),
            batch_id=batch_id,
            skip_invalid=skip_invalid,
            on_enqueued=on_enqueued,
            priority=priority,
            lexicon=lexicon,
        )

    def _state(self, batch_id: str) -> BatchState:
        return BatchState(self._redis, batch_id, ttl_seconds=self.settings.batch_ttl_seconds)

    def _submit(
        self,
        open_rows: Callable[[], Iterator[Row]],
        *,
        batch_id: str | None,
        skip_invalid: bool,
        on_enqueued: EnqueueProgress | None = None,
        priority: str = DEFAULT_PRIORITY,
        lexicon: Path | str | Lexicon | None = None,
    ) -> BatchHandle:
        message_priority(priority)  # an unknown name fails before anything is recorded
        # A bad lexicon refuses the batch before any row is read or recorded.
        loaded = (
            lexicon if isinstance(lexicon, Lexicon) or lexicon is None else load_lexicon(lexicon)
        )
        if batch_id is None:
            batch_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
        elif not isinstance(batch_id, str) or not BATCH_ID_PATTERN.fullmatch(batch_id):
            raise InvalidBatch(f"batch id {batch_id!r} is not valid (1-128 of A-Z a-z 0-9 . _ -)")
        report = SubmitReport()
        # Pass 1: validate everything, keeping only row ids (for uniqueness) and errors.
        bad_lines = self._validate_all(open_rows(), report)
        if report.rejected_count and not skip_invalid:
            raise InvalidBatch(_summary(report), report.rejected)
        # Pass 2: record rows and send jobs, chunk by chunk.
        state = self._state(batch_id)
        if state.cancelled():
            raise InvalidBatch(f"batch {batch_id!r} was cancelled: submit under a new batch id")
        state.create()
        state.set_priority(priority)
        digest = self._store_lexicon(loaded) if loaded is not None else None
        state.add_rejected([_rejected_entry(line, exc) for line, exc in bad_lines.items()])
        chunk: list[tuple[str, JobSpec]] = []
        total, done = report.rows - report.rejected_count, 0
        with self._lease(state) as lease:
            for line, fields in open_rows():
                if line in bad_lines or isinstance(fields, InvalidJob):
                    continue
                spec = replace(self._spec(fields, line), lexicon=digest)
                chunk.append((str(fields["id"]), spec))
                if len(chunk) >= _CHUNK:
                    self._enqueue_chunk(state, chunk, report, lease=lease, priority=priority)
                    done += len(chunk)
                    chunk = []
                    if on_enqueued is not None:
                        on_enqueued(done, total)
            if chunk:
                self._enqueue_chunk(state, chunk, report, lease=lease, priority=priority)
                if on_enqueued is not None:
                    on_enqueued(done + len(chunk), total)
        state.touch()
        return BatchHandle(state, report, settings=self.settings)

    def _store_lexicon(self, lexicon: Lexicon) -> str:
        """Store the lexicon by its digest (equal lexicons share it) for as long as a batch
        lives; workers read it from there."""
        digest = lexicon.digest()
        self._redis.set(
            LEXICON_PREFIX + digest, lexicon.to_json(), ex=self.settings.batch_ttl_seconds
        )
        return digest

    def _lease(self, state: BatchState) -> SendLease:
        return SendLease(state, lease_seconds=self.settings.send_lease_seconds)

    def _spec(self, fields: Mapping[str, Any], line: int) -> JobSpec:
        return validate_spec(
            fields, speakers=self.settings.speakers, max_chars=self.settings.max_chars, row=line
        )

    def _validate_all(self, rows: Iterator[Row], report: SubmitReport) -> dict[int, InvalidJob]:
        """Line -> error of every invalid row (all of them: they are recorded as rejected)."""
        seen: set[str] = set()
        bad_lines: dict[int, InvalidJob] = {}
        for line, fields in rows:
            report.rows += 1
            if report.rows > self.settings.max_batch_rows:
                raise InvalidBatch(
                    f"the batch has more than {self.settings.max_batch_rows} rows "
                    "(TTS_MAX_BATCH_ROWS): split the file"
                )
            try:
                if isinstance(fields, InvalidJob):
                    raise fields
                row_id = validate_row_id(fields.get("id"), row=line)
                if row_id in seen:
                    raise InvalidJob(f"id {row_id!r} appears more than once", field="id", row=line)
                spec = self._spec(fields, line)
                seen.add(row_id)
                _warn_language(report, spec, line)
            except InvalidJob as exc:
                bad_lines[line] = exc
                report.rejected_count += 1
                if len(report.rejected) < _MAX_REPORTED_ERRORS:
                    report.rejected.append(exc)
        return bad_lines

    def _enqueue_chunk(
        self,
        state: BatchState,
        chunk: list[tuple[str, JobSpec]],
        report: SubmitReport,
        *,
        lease: SendLease,
        priority: str,
    ) -> None:
        # Rows with the same request share one job (and so one synthesis).
        job_of = {fp: task_id_for(state.batch_id, fp) for fp in {s.fingerprint() for _, s in chunk}}
        pairs = [(row_id, job_of[spec.fingerprint()]) for row_id, spec in chunk]
        report.new_rows += sum(state.add_rows(pairs))
        specs = {job_of[spec.fingerprint()]: spec for _, spec in chunk}
        first_row: dict[str, str] = {}
        for row_id, job_id in pairs:
            first_row.setdefault(job_id, row_id)
        job_ids = list(specs)
        codes = state.claim_sends(job_ids, sender=lease.sender, lease_seconds=lease.lease_seconds)
        to_send = []
        for job_id, code in zip(job_ids, codes, strict=True):
            if code == DONE:
                report.jobs_already_done += 1
            elif code == IN_FLIGHT:
                report.jobs_in_flight += 1
            else:
                to_send.append(job_id)
                if code == RETRIED:
                    report.jobs_retried += 1
                elif code == TAKEN_OVER:
                    report.jobs_taken_over += 1
        now = time.time()
        messages = [
            build_message(
                job_id=j,
                batch_id=state.batch_id,
                spec=specs[j],
                enqueued_at=now,
                row_id=first_row[j],
            )
            for j in to_send
        ]
        self._send_claimed(state, messages, lease=lease, priority=priority)
        report.jobs_sent += len(messages)

    def _send_claimed(
        self,
        state: BatchState,
        messages: list[dict[str, Any]],
        *,
        lease: SendLease,
        priority: str = DEFAULT_PRIORITY,
    ) -> None:
        """Send messages whose jobs `lease` claimed, then confirm them. A send that fails
        (or is interrupted) releases the claims, so that a resubmission sends the jobs; any it
        did send before failing become duplicates, which workers drop."""
        job_ids = [m["job_id"] for m in messages]
        try:
            self._sender.send(messages, priority=priority)
        except BaseException:
            state.release_sends(job_ids, sender=lease.sender)
            raise
        state.confirm_sends(job_ids, sender=lease.sender)

    def batches(self, limit: int = 20) -> list[BatchSummary]:
        """The `limit` newest batches still kept (batch_ttl_seconds), newest first."""
        found = list_batches(self._redis, ttl_seconds=self.settings.batch_ttl_seconds, limit=limit)
        out = []
        for batch_id, created_at in found:
            state = self._state(batch_id)
            cancelled = state.meta().get("cancelled_at")
            out.append(
                BatchSummary(
                    batch_id=batch_id,
                    created_at=created_at,
                    progress=state.progress(),
                    cancelled_at=float(cancelled) if cancelled else None,
                )
            )
        return out

    def cancel(self, batch_id: str) -> CancelReport:
        """Cancel a batch: its jobs that have not started never will (recorded `cancelled`,
        here or by the worker that receives them); jobs running now finish. A cancelled
        batch takes no new rows."""
        state = self._existing(batch_id)
        jobs, rows = state.cancel()
        return CancelReport(
            jobs_cancelled=jobs, rows_cancelled=rows, rows_running=state.progress().pending
        )

    def retry(self, batch_id: str, *, reasons: Iterable[str] | None = None) -> RetryReport:
        """Enqueue again the failed jobs of a batch whose reason is worth a retry: with
        `reasons` None, every reason except bad input (core.errors.INPUT_REASONS: the same
        input fails the same way); otherwise exactly the reasons named. Jobs skipped are
        counted by reason in the report."""
        state = self._existing(batch_id)
        wanted = set(reasons) if reasons is not None else None
        stored: dict[str, dict[str, Any]] = {}
        report = RetryReport()
        for job_id, record in state.failed_jobs():
            reason = str(record.get("reason") or "unknown")
            retried = reason in wanted if wanted is not None else reason not in INPUT_REASONS
            if not retried or not isinstance(record.get("message"), dict):
                report.skipped[reason] = report.skipped.get(reason, 0) + 1
                continue
            stored[job_id] = record["message"]
        report.jobs_sent = len(self._send_again(state, stored))
        return report

    def _existing(self, batch_id: str) -> BatchState:
        validate_row_id(batch_id, field="batch_id")
        state = self._state(batch_id)
        if not state.exists():
            raise InvalidBatch(f"no batch {batch_id!r} (expired or never submitted)")
        return state

    def retry_failed(self, batch_id: str) -> int:
        """Enqueue again every failed job of a batch; returns how many. Claimed like a
        submission's sends, so two retries at once (or a retry and a resubmission) send each
        job once."""
        state = self._state(batch_id)
        if not state.exists():
            raise InvalidBatch(f"no batch {batch_id!r} (expired or never submitted)")
        stored = {
            job_id: record["message"]
            for job_id, record in state.failed_jobs()
            if isinstance(record.get("message"), dict)
        }
        return len(self._send_again(state, stored))

    def verify(
        self,
        batch_id: str,
        *,
        repair: bool = False,
        on_missing: Callable[[MissingRow], None] | None = None,
        store: AudioStore | None = None,
    ) -> VerifyReport:
        """Check that the object of every succeeded or cached row of a batch is still in the
        bucket; `on_missing` is called with each row whose object is not. With `repair`, each
        missing job is enqueued again (synthesized anew; its rows are pending until the new
        result is recorded)."""
        state = self._state(batch_id)
        if not state.exists():
            raise InvalidBatch(f"no batch {batch_id!r} (expired or never submitted)")
        if store is None:
            from core.storage import AudioStore  # boto3: only for the commands that need S3

            store = AudioStore.from_settings(self.settings)

        def requeue(vanished: Sequence[Vanished]) -> set[str]:
            return self._requeue_vanished(state, vanished)

        return find_vanished(
            state, store, repair=requeue if repair else None, on_missing=on_missing
        )

    def _requeue_vanished(self, state: BatchState, vanished: Sequence[Vanished]) -> set[str]:
        """Forget each vanished job's success (only if it is still the one verify read) and
        enqueue it again from the message its record kept; returns the job ids enqueued.
        A record without a message (written before records kept it) is left as it is."""
        stored = {
            v.job_id: v.message
            for v in vanished
            if v.message is not None and state.forget_succeeded(v.job_id, v.raw)
        }
        return self._send_again(state, stored)

    def _send_again(self, state: BatchState, stored: Mapping[str, dict[str, Any]]) -> set[str]:
        """Enqueue again jobs of a batch whose records were just forgotten, from their stored
        messages (a new send id each), claimed like a submission's sends so that a concurrent
        retry or resubmission sends each once; returns the job ids sent."""
        job_ids = list(stored)
        sent: set[str] = set()
        # At the batch's own priority (a batch recorded before priorities existed: normal).
        priority = state.meta().get("priority", DEFAULT_PRIORITY)
        with self._lease(state) as lease:
            for start in range(0, len(job_ids), _CHUNK):
                chunk = job_ids[start : start + _CHUNK]
                codes = state.claim_sends(
                    chunk, sender=lease.sender, lease_seconds=lease.lease_seconds
                )
                now = time.time()
                messages = [
                    resend(stored[job_id], enqueued_at=now)
                    for job_id, code in zip(chunk, codes, strict=True)
                    if code not in (DONE, IN_FLIGHT)
                ]
                self._send_claimed(state, messages, lease=lease, priority=priority)
                sent.update(str(m["job_id"]) for m in messages)
        return sent


def _rejected_entry(line: int, exc: InvalidJob) -> dict[str, Any]:
    return {
        "line": line,
        "status": "rejected",
        "field": exc.field,
        "reason": exc.reason,
        "error": exc.detail,
    }


def _with_defaults(rows: Iterator[Row], defaults: Mapping[str, Any] | None) -> Iterator[Row]:
    """Rows with the batch's defaults filled in where a row leaves a field out or blank."""
    chosen = {name: value for name, value in (defaults or {}).items() if value is not None}
    for line, fields in rows:
        if chosen and not isinstance(fields, InvalidJob):
            for name, value in chosen.items():
                if fields.get(name) in (None, ""):
                    fields[name] = value
        yield line, fields


def _warn_language(report: SubmitReport, spec: JobSpec, line: int) -> None:
    """Count (and keep the first few of) rows whose lang disagrees with their speaker's."""
    mismatch = language_mismatch(spec.speaker, spec.lang)
    if mismatch is None:
        return
    report.warnings_count += 1
    if len(report.warnings) < _MAX_REPORTED_WARNINGS:
        report.warnings.append(f"row {line}: {mismatch}; enqueued anyway")


def _summary(report: SubmitReport) -> str:
    shown = "; ".join(str(exc) for exc in report.rejected[:5])
    more = report.rejected_count - min(len(report.rejected), 5)
    tail = f"; and {more} more" if more > 0 else ""
    count = f"{report.rejected_count} of {report.rows} rows are invalid"
    return f"{count}, nothing enqueued: {shown}{tail}"
