"""Exit codes, and the one line every error the CLI can meet ends in.

A service that cannot be reached is named with its URL (password masked); when that URL is the
local stack's (core.settings.LOCAL_PORTS) the line adds how to start it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from core.errors import (
    ConfigError,
    InvalidJob,
    StackError,
    StorageAuthError,
    StorageError,
    TTSError,
)
from core.settings import LOCAL_PORTS, Settings, mask_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT (128 + 2)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a reader that went away

STACK_HINT = "is the stack up? `tts-batch up`"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class ServiceUnreachable(TTSError):
    """A service (Redis, S3, Prometheus, Pushgateway, Flower) did not answer at its URL.

    `service` is a key of LOCAL_PORTS ("redis", "s3", "prometheus", "pushgateway", "flower").
    Commands that probe a service themselves raise it; the CLI maps it to exit 1."""

    def __init__(self, service: str, url: str, detail: str = "") -> None:
        self.service = service
        self.url = url
        self.detail = detail
        super().__init__(unreachable_line(service, url, detail))


_NAMES = {
    "redis": "Redis (the broker)",
    "s3": "S3",
    "prometheus": "Prometheus",
    "pushgateway": "the Pushgateway",
    "flower": "Flower",
}


def is_local_stack_url(service: str, url: str) -> bool:
    """True when `url` is where `tts-batch up` runs `service` (loopback, its LOCAL_PORTS port)."""
    try:
        parts = urlsplit(url)
        return parts.hostname in _LOOPBACK and parts.port == LOCAL_PORTS.get(service)
    except ValueError:
        return False


def unreachable_line(service: str, url: str, detail: str = "") -> str:
    """`cannot reach SERVICE at URL: DETAIL`, plus the stack hint for the local stack's URL."""
    line = f"cannot reach {_NAMES.get(service, service)} at {mask_url(url)}"
    if detail:
        line += f": {_squash(detail).rstrip('.')}"
    if is_local_stack_url(service, url):
        line += f"; {STACK_HINT}"
    return line


def still_running_hint(batch_id: str) -> str:
    """What a `--wait` that ended early (timeout, Ctrl-C) tells: nothing was cancelled."""
    return f"the batch keeps running; `tts-batch status {batch_id}`"


def exit_code(exc: BaseException) -> int | None:
    """The exit code of every error the CLI can meet; None for one it cannot (a bug)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    if isinstance(exc, AuthenticationError):
        # A wrong password is a setting, not an outage (StorageAuthError is a ConfigError).
        return EXIT_USAGE
    if isinstance(exc, ServiceUnreachable):
        return EXIT_FAILED
    if isinstance(exc, InvalidJob | ConfigError | StackError | OSError):
        # Bad input or settings, the local stack, a file that cannot be read or written.
        return EXIT_USAGE
    if isinstance(exc, TTSError | RedisError | OperationalError):
        # Storage, broker or Prometheus unreachable: may pass.
        return EXIT_FAILED
    return None


def one_line(exc: BaseException, settings: Settings | None = None) -> str:
    """The error as one line; with `settings`, a service error names the service's URL."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    text = _squash(str(exc)) or type(exc).__name__
    broker = settings.broker_url if settings is not None else ""
    if isinstance(exc, AuthenticationError):
        where = f" at {mask_url(broker)}" if broker else ""
        return (
            f"Redis{where} refused the credentials (check the password in TTS_BROKER_URL"
            f"{_no_stack_credentials_hint(settings)}): {text}"
        )
    if isinstance(exc, RedisError | OperationalError):
        if broker:
            return unreachable_line("redis", broker, text)
        return f"cannot reach Redis (the broker): {text}"
    if settings is not None and isinstance(exc, StorageAuthError):
        return f"{text} (S3 at {settings.s3_endpoint})"
    if settings is not None and isinstance(exc, StorageError):
        if _no_answer(exc):
            return unreachable_line("s3", settings.s3_endpoint, text)
        return f"S3 at {settings.s3_endpoint}: {text}"
    return text


def _no_answer(exc: StorageError) -> bool:
    """True when the S3 server did not answer at all (as opposed to refusing an operation)."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ConnectTimeoutError

    cause = exc.__cause__
    return isinstance(cause, BotoConnectionError | ConnectTimeoutError) or str(exc).startswith(
        "S3 endpoint unreachable"
    )


def _squash(text: str) -> str:
    return " ".join(text.split())


def _no_stack_credentials_hint(settings: Settings | None) -> str:
    """The local stack's Redis password lives in its state folder (`.tts-stack` under the
    folder `tts-batch up` ran in): run elsewhere, the CLI finds none and sends no password."""
    if settings is None or urlsplit(settings.broker_url).password:
        return ""
    from devstack.credentials import credentials_path

    path = credentials_path(settings.stack_dir).resolve()
    if path.exists():
        return ""
    return (
        f"; no local stack credentials at {path}: run where `tts-batch up` ran, or set "
        "TTS_STACK_DIR to its .tts-stack folder"
    )
