"""A batch's manifest: one line per row, whatever its status, each naming the batch.

The same lines serve the CLI (`submit --manifest`, `tts-batch manifest`: JSON lines) and the
manifest object a worker writes to S3 when the batch finishes, `batches/<id>/manifest.json`:
one JSON document `{"batch_id", "total", "counts": {status: rows}, "rows": [line, ...]}`.
A line's status is the one its record says (succeeded, cached, failed, and any status another
part of the system records, e.g. rejected or cancelled) or `pending` when it has none yet.
Lines never hold the row's text (records keep the job's message; it is left out).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from core.batch_state import BatchState

# The manifest object of a batch, beside the audio (which lives under `audio/`).
MANIFEST_KEY = "batches/{batch_id}/manifest.json"
# Record fields a line carries when the record has them (beyond id, job id and status);
# `field` and `line` describe a rejected row.
_OPTIONAL_FIELDS = ("key", "uri", "audio_seconds", "cached", "reason", "error", "attempts")
_IF_PRESENT = ("field", "line")


def manifest_key(batch_id: str) -> str:
    """The object key of a batch's manifest. Batch ids match [A-Za-z0-9._-]{1,128}; '.' and
    '..' alone are written %2E and %2E%2E (a path-like server could resolve them; '%' is in no
    id, so no other batch's key can be the same)."""
    segment = batch_id.replace(".", "%2E") if batch_id in (".", "..") else batch_id
    return MANIFEST_KEY.format(batch_id=segment)


def manifest_line(
    batch_id: str, row_id: str, job_id: str, record: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One row's line: the batch id, the row and its job, the status and what the record says."""
    line: dict[str, Any] = {"batch_id": batch_id, "id": row_id, "job_id": job_id}
    if record is None:
        line["status"] = "pending"
        line.update(dict.fromkeys(_OPTIONAL_FIELDS))
        line["cached"] = False
        return line
    line["status"] = str(record.get("status", "pending"))
    for name in _OPTIONAL_FIELDS:
        line[name] = record.get(name)
    line["cached"] = bool(record.get("cached"))
    for name in _IF_PRESENT:
        if name in record:
            line[name] = record[name]
    return line


def rejected_line(batch_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """A row refused at submission (`--skip-invalid`): no job; its file line says which."""
    line: dict[str, Any] = {"batch_id": batch_id, "id": None, "job_id": None}
    line["status"] = "rejected"
    line.update(dict.fromkeys(_OPTIONAL_FIELDS))
    line["cached"] = False
    for name in ("reason", "error", *_IF_PRESENT):
        line[name] = entry.get(name)
    return line


def manifest_lines(state: BatchState) -> Iterator[dict[str, Any]]:
    """Every row of the batch in submission order (read in chunks), then the rows refused at
    submission, by their line in the file."""
    for row_id, job_id, record in state.iter_rows():
        yield manifest_line(state.batch_id, row_id, job_id, record)
    for entry in state.rejected():
        yield rejected_line(state.batch_id, entry)


def manifest_document(state: BatchState) -> bytes:
    """The manifest object's bytes: the same state gives the same bytes (no timestamps), so
    writing it again is harmless."""
    rows = list(manifest_lines(state))
    counts: dict[str, int] = {}
    for line in rows:
        counts[line["status"]] = counts.get(line["status"], 0) + 1
    document = {
        "batch_id": state.batch_id,
        "total": len(rows),
        "counts": dict(sorted(counts.items())),
        "rows": rows,
    }
    return json.dumps(document, ensure_ascii=False).encode("utf-8")
