"""Exit codes, and the one line every error the CLI can meet ends in."""

from __future__ import annotations

from core.errors import ConfigError, InvalidJob, StackError, TTSError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def exit_code(exc: BaseException) -> int | None:
    """The exit code of every error the CLI can meet; None for one it cannot (a bug)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    if isinstance(exc, AuthenticationError):
        # A wrong password is a setting, not an outage (StorageAuthError is a ConfigError).
        return EXIT_USAGE
    if isinstance(exc, InvalidJob | ConfigError | StackError | OSError):
        # Bad input or settings, the local stack, a file that cannot be read or written.
        return EXIT_USAGE
    if isinstance(exc, TTSError | RedisError | OperationalError):
        # Storage, broker or Prometheus unreachable: may pass.
        return EXIT_FAILED
    return None


def one_line(exc: BaseException) -> str:
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AuthenticationError):
        return f"Redis refused the credentials (check the password in TTS_BROKER_URL): {text}"
    if isinstance(exc, RedisError | OperationalError):
        return f"cannot reach Redis (the broker): {text}"
    return text
