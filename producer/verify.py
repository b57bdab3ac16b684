"""Finding a batch's vanished objects: rows recorded as succeeded (or cached) whose object is no
longer in the bucket (deleted by hand, a lifecycle rule).

Every row with a success is checked with a HEAD of its object, `HEAD_THREADS` at a time, one
chunk of rows after another: the cost follows the batch, not the bucket (which holds every
batch's objects), and the memory holds one chunk plus the missing jobs. Rows that share a job
(equal content) are checked once per chunk. What to do with the missing ones is the caller's
(`Producer.verify` enqueues them again when asked).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.batch_state import BatchState
from core.contract import SUCCESS_STATUSES

if TYPE_CHECKING:
    from core.storage import AudioStore

# HEAD requests in flight: below botocore's connection pool (10), enough to hide a round trip.
HEAD_THREADS = 8
# Rows read from Redis, and objects checked, per round.
CHUNK = 500


@dataclass(frozen=True)
class Vanished:
    """A job recorded as succeeded or cached whose object is missing, as verify read it."""

    job_id: str
    key: str
    status: str
    raw: str  # the result JSON exactly as stored: a repair forgets only this one
    message: dict[str, Any] | None  # what the job ran from (None: recorded without it)


@dataclass(frozen=True)
class MissingRow:
    """One row whose object is missing, and whether its job was enqueued again."""

    row_id: str
    job_id: str
    status: str
    key: str
    repaired: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.row_id,
            "job_id": self.job_id,
            "status": self.status,
            "key": self.key,
            "repaired": self.repaired,
        }


@dataclass
class VerifyReport:
    """Rows of a batch by what verify found; every figure counts rows."""

    checked: int = 0  # rows with a success recorded, whose object was looked up
    present: int = 0
    missing: int = 0
    repaired: int = 0  # missing rows whose job was enqueued again
    skipped: int = 0  # rows pending or failed: no object to check
    jobs_enqueued: int = 0

    @property
    def unrepaired(self) -> int:
        return self.missing - self.repaired

    def summary(self, batch_id: str) -> str:
        return (
            f"batch {batch_id}: checked={self.checked} present={self.present} "
            f"missing={self.missing} repaired={self.repaired} skipped={self.skipped}"
        )


# Given the vanished jobs of one chunk, enqueue them again; returns the job ids it enqueued.
Repair = Callable[[Sequence[Vanished]], set[str]]


def find_vanished(
    state: BatchState,
    store: AudioStore,
    *,
    repair: Repair | None = None,
    on_missing: Callable[[MissingRow], None] | None = None,
    chunk: int = CHUNK,
) -> VerifyReport:
    """Check the object of every succeeded or cached row of a batch, in submission order;
    call `on_missing` for each row whose object is missing, after `repair` (if given) has
    had that row's job."""
    report = VerifyReport()
    # Jobs found missing in this run, with whether they were enqueued again: a later row of the
    # same job is reported alike (its record may be gone already, forgotten by the repair).
    found: dict[str, tuple[Vanished, bool]] = {}
    pool = ThreadPoolExecutor(max_workers=HEAD_THREADS, thread_name_prefix="verify")
    try:
        rows: list[tuple[str, str, str | None]] = []
        for row in state.iter_raw_rows(chunk):
            rows.append(row)
            if len(rows) >= chunk:
                _check_chunk(rows, store, pool, found, report, repair, on_missing)
                rows = []
        if rows:
            _check_chunk(rows, store, pool, found, report, repair, on_missing)
    finally:
        # On a storage error, the lookups not yet started are dropped, not waited for (each
        # could wait out its timeouts against an S3 that does not answer).
        pool.shutdown(wait=True, cancel_futures=True)
    return report


def _check_chunk(
    rows: list[tuple[str, str, str | None]],
    store: AudioStore,
    pool: ThreadPoolExecutor,
    found: dict[str, tuple[Vanished, bool]],
    report: VerifyReport,
    repair: Repair | None,
    on_missing: Callable[[MissingRow], None] | None,
) -> None:
    to_check: dict[str, Vanished] = {}
    for _, job_id, raw in rows:
        if job_id in found or job_id in to_check or raw is None:
            continue
        record = json.loads(raw)
        if record.get("status") in SUCCESS_STATUSES and record.get("key"):
            message = record.get("message")
            to_check[job_id] = Vanished(
                job_id=job_id,
                key=str(record["key"]),
                status=str(record["status"]),
                raw=raw,
                message=message if isinstance(message, dict) else None,
            )
    candidates = list(to_check.values())
    heads = pool.map(lambda v: store.head(v.key), candidates)
    vanished = [v for v, head in zip(candidates, heads, strict=True) if head is None]
    enqueued = repair(vanished) if repair is not None and vanished else set()
    for v in vanished:
        found[v.job_id] = (v, v.job_id in enqueued)
    report.jobs_enqueued += len(enqueued)
    for row_id, job_id, _ in rows:
        if job_id in found:
            v, repaired = found[job_id]
            report.checked += 1
            report.missing += 1
            report.repaired += repaired
            if on_missing is not None:
                on_missing(MissingRow(row_id, job_id, v.status, v.key, repaired))
        elif job_id in to_check:
            report.checked += 1
            report.present += 1
        else:
            report.skipped += 1
