"""The exception tree, shared by producer and worker.

TTSError
├── ConfigError        settings that cannot work (bad value, missing model directory)
├── InvalidJob         permanent: bad input; never retried; carries a reason from a fixed set
│   └── InvalidBatch   a whole file refused (too many rows, unreadable); lists the row errors
└── TransientError     storage or broker hiccup; retried with backoff
    └── StorageError
"""

from __future__ import annotations

# The fixed set of `tts_errors_total{reason}` values and failure reasons in results.
ERROR_REASONS = (
    "invalid_text",
    "text_too_long",
    "unknown_speaker",
    "unsupported_format",
    "bad_message",
    "engine_error",
    "storage_error",
    "timeout",
    "worker_lost",
)


class TTSError(Exception):
    """Root of every error tts-batch raises on purpose."""


class ConfigError(TTSError):
    """The settings cannot work; the message names the variable."""


class InvalidJob(TTSError):
    """A job that can never succeed as given. `reason` is one of ERROR_REASONS."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "bad_message",
        field: str | None = None,
        row: int | str | None = None,
    ) -> None:
        assert reason in ERROR_REASONS, reason
        self.reason = reason
        self.field = field
        self.row = row
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.detail = message

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only state must survive pickling (multiprocessing, Celery's exception info).
        return (_rebuild_invalid_job, (self.detail, self.reason, self.field, self.row))


def _rebuild_invalid_job(
    message: str, reason: str, field: str | None, row: int | str | None
) -> InvalidJob:
    return InvalidJob(message, reason=reason, field=field, row=row)


class InvalidBatch(InvalidJob):
    """A batch refused as a whole; `errors` holds every row's error (capped)."""

    def __init__(self, message: str, errors: list[InvalidJob] | None = None) -> None:
        super().__init__(message, reason="bad_message")
        self.errors = errors or []


class TransientError(TTSError):
    """A failure that may pass: the task retries it with backoff."""


class StorageError(TransientError):
    """The S3 server did not answer or refused an operation."""
