"""The manifest object of a finished batch, written by the worker that records its last outcome.

No producer has to wait: whichever process records an outcome checks (one Redis round trip)
whether the batch has no pending row left, and if so writes `batches/<id>/manifest.json`
(core/manifest.py). Two processes that record the last two outcomes at once may both write it:
the same state gives the same bytes. A retry or repair reopens the batch; its last outcome
writes the manifest again. A failed write is logged and counted, never the job's failure.
"""

from __future__ import annotations

import logging
from typing import Protocol

from core.batch_state import BatchState
from core.manifest import manifest_document, manifest_key
from core.storage import AudioStore
from worker.push import WorkerMetrics

log = logging.getLogger(__name__)


class ManifestWriter(Protocol):
    """What writing a manifest needs: a task's WorkerContext or the parent's recorder."""

    metrics: WorkerMetrics

    @property
    def store(self) -> AudioStore: ...


def publish_if_finished(ctx: ManifestWriter, state: BatchState) -> bool:
    """Write the batch's manifest object when no row is pending; True when it was written."""
    try:
        progress = state.progress()
        if progress.total == 0 or not progress.done:
            return False
        ctx.store.put_document(
            manifest_key(state.batch_id),
            manifest_document(state),
            content_type="application/json",
        )
        return True
    except Exception:
        # Redis or S3 trouble after the outcome is safely recorded: the job stays done.
        log.exception("manifest of batch %s not written", state.batch_id)
        ctx.metrics.manifest_failures.inc()
        return False
