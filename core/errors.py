"""The exception tree: every error tts-batch raises on purpose, under one root.

TTSError
├── ConfigError            settings that cannot work (bad value, missing model directory,
│                          a corrupt local-stack credentials file)
├── PermanentError         a job that can never succeed as given: never retried; has a reason
│   ├── InvalidJob         bad input (invalid_text, text_too_long, unknown_speaker,
│   │   │                  unsupported_format, bad_message)
│   │   └── InvalidBatch   a whole file refused (too many rows, unreadable); lists row errors
│   ├── EngineFailure      the engine raised on valid input (engine_error)
│   ├── JobTimeout         the job ran past its time limit (timeout)
│   ├── WorkerLost         the job was lost with its worker process too often (worker_lost)
│   ├── RetriesExhausted   a transient error outlasted the retries (storage_error)
│   └── StorageAuthError   S3 refused the credentials (storage_auth); also a ConfigError
├── TransientError         may pass: the task retries it with backoff
│   └── StorageError       the S3 server did not answer or refused an operation
├── ObjectMissing          an object a succeeded row names is not in the bucket (it vanished:
│                          `tts-batch verify --repair` makes it again)
├── StackError             a local-stack service could not be started, found or stopped
└── DashboardError         the dashboard PNG cannot be drawn
"""

from __future__ import annotations

__all__ = [
    "ERROR_REASONS",
    "INPUT_REASONS",
    "ConfigError",
    "DashboardError",
    "EngineFailure",
    "InvalidBatch",
    "InvalidJob",
    "JobTimeout",
    "ObjectMissing",
    "PermanentError",
    "RetriesExhausted",
    "StackError",
    "StorageAuthError",
    "StorageError",
    "TTSError",
    "TransientError",
    "WorkerLost",
]

# The fixed set of `tts_errors_total{reason}` values and failure reasons in results.
# duplicate_message is an event only, never a failure: a second message of a job that already
# has its outcome (a producer killed mid-send, resubmitted), dropped unrun.
ERROR_REASONS = (
    "invalid_text",
    "text_too_long",
    "unknown_speaker",
    "unsupported_format",
    "bad_message",
    "engine_error",
    "storage_error",
    "storage_auth",
    "timeout",
    "worker_lost",
    "duplicate_message",
)


# Failure reasons of bad input (InvalidJob): the same input fails the same way, so
# `tts-batch retry` skips them unless named with --reason.
INPUT_REASONS = frozenset(
    {"invalid_text", "text_too_long", "unknown_speaker", "unsupported_format", "bad_message"}
)


class TTSError(Exception):
    """Root of every error tts-batch raises on purpose."""


class ConfigError(TTSError):
    """The settings cannot work; the message names the variable."""


class PermanentError(TTSError):
    """A job that can never succeed as given: failed at once, never retried. `reason` is one
    of ERROR_REASONS (the failure's reason in results and in `tts_errors_total`)."""

    default_reason = "bad_message"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        assert self.reason in ERROR_REASONS, self.reason
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only state must survive pickling (multiprocessing, Celery's exception info).
        return (_rebuild_permanent, (type(self), str(self), self.reason))


def _rebuild_permanent(cls: type[PermanentError], message: str, reason: str) -> PermanentError:
    return cls(message, reason=reason)


class InvalidJob(PermanentError):
    """Bad input: a job that can never succeed as given. `reason` is one of ERROR_REASONS."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "bad_message",
        field: str | None = None,
        row: int | str | None = None,
    ) -> None:
        self.field = field
        self.row = row
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message, reason=reason)
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


class EngineFailure(PermanentError):
    """The engine raised on valid input."""

    default_reason = "engine_error"


class JobTimeout(PermanentError):
    """The job ran past its time limit."""

    default_reason = "timeout"


class WorkerLost(PermanentError):
    """The job was lost with its worker process more often than allowed."""

    default_reason = "worker_lost"


class RetriesExhausted(PermanentError):
    """A transient error outlasted the job's retries."""

    default_reason = "storage_error"


class StorageAuthError(PermanentError, ConfigError):
    """S3 refused the credentials (a 403: wrong or revoked key, no permission): a configuration
    error, never retried as an outage."""

    default_reason = "storage_auth"


class TransientError(TTSError):
    """A failure that may pass: the task retries it with backoff."""


class StorageError(TransientError):
    """The S3 server did not answer or refused an operation."""


class ObjectMissing(TTSError):
    """An object a succeeded row names is not in the bucket (deleted by hand, a lifecycle rule).
    Not transient: it stays missing until the job runs again (`tts-batch verify --repair`)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key} is not in the bucket")


class StackError(TTSError):
    """A local-stack service could not be started, found or stopped."""


class DashboardError(TTSError):
    """The dashboard cannot be made: Prometheus unreachable, a query refused, no matplotlib."""
