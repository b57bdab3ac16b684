"""The worker's start-up check, in the parent before the engine loads and the pool starts.

Celery retries the broker connection 100 times with growing pauses, whatever the cause, so a
wrong Redis password or a Redis that is not there kept a worker running for many minutes with
no exit code. Here instead:
- Redis (broker, and the results URL when it differs) is pinged until it answers or
  TTS_STARTUP_TIMEOUT_SECONDS pass: then one line and EX_UNAVAILABLE, for a supervisor to
  restart later. Refused credentials end the start at once with EX_NOPERM: waiting cannot fix
  them. An untrusted TLS certificate or another refusal is EX_CONFIG.
- S3: a HEAD of the bucket (created when missing and TTS_S3_CREATE_BUCKET allows) proves the
  keys. A 403 is EX_NOPERM at once; S3 unreachable is an outage, not a configuration error: the
  worker starts, logs it, and its jobs retry storage errors as they always did.

No Celery import: the glue (worker/tasks.py) calls `check` from `worker_init`.
"""

from __future__ import annotations

import logging
import ssl
import time
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import ConfigError, InvalidJob, StorageAuthError, StorageError
from core.exit_codes import EX_CONFIG, EX_NOPERM, EX_UNAVAILABLE
from core.lexicon import load_lexicon
from core.redis_conn import connect
from core.settings import Settings, mask_url
from core.storage import AudioStore
from worker.engine_host import fatal, one_line

log = logging.getLogger(__name__)

# Between two pings while Redis does not answer; a log line at most this often.
PING_INTERVAL_SECONDS = 1.0
WAITING_LOG_SECONDS = 10.0
# One ping's own bound (connect, then reply), within what is left of the window.
PING_TIMEOUT_SECONDS = 5.0


def check(settings: Settings) -> None:
    """The lexicon, Redis, then S3; exits the worker (SystemExit, one line on stderr) when it
    cannot run."""
    check_lexicon(settings)
    urls = dict.fromkeys([settings.broker_url, settings.results_url])
    for url in urls:
        wait_for_redis(settings, url)
    check_storage(settings)


def check_lexicon(settings: Settings) -> None:
    """A bad global lexicon (TTS_LEXICON) is a setting no restart fixes: EX_CONFIG, one line
    naming the file, the entry's row and the field."""
    if not settings.lexicon:
        return
    try:
        load_lexicon(settings.lexicon)
    except InvalidJob as exc:
        fatal(f"TTS_LEXICON: {exc}", code=EX_CONFIG)


def wait_for_redis(settings: Settings, url: str) -> None:
    """Ping `url` until it answers; exit at once on refused credentials, after the start-up
    window when it never answers."""
    window = settings.startup_timeout_seconds
    shown = mask_url(url)
    started = time.monotonic()
    deadline = started + window
    last_log = None
    while True:
        left = max(deadline - time.monotonic(), 0.1)
        try:
            _ping(settings, url, timeout=min(PING_TIMEOUT_SECONDS, left))
            if last_log is not None:
                log.info("Redis at %s answered after %.1f s", shown, time.monotonic() - started)
            return
        except redis.AuthenticationError as exc:
            # Without a password in the URL, Redis's own words (about HELLO) do not help.
            why = one_line(exc) if urlsplit(url).password else "a password is needed, none given"
            fatal(
                f"Redis at {shown} refused the credentials ({why}); "
                "check the password in TTS_BROKER_URL (or TTS_RESULT_BACKEND)",
                code=EX_NOPERM,
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if isinstance(exc.__context__, ssl.SSLCertVerificationError):
                fatal(
                    f"Redis at {shown}: TLS certificate not trusted ({one_line(exc)}); "
                    "set TTS_REDIS_TLS_CA_FILE to the CA that signed it",
                    code=EX_CONFIG,
                )
            if time.monotonic() >= deadline:
                fatal(
                    f"cannot reach Redis at {shown} within {window:g} s "
                    f"(TTS_STARTUP_TIMEOUT_SECONDS): {one_line(exc)}",
                    code=EX_UNAVAILABLE,
                )
            if last_log is None or time.monotonic() - last_log >= WAITING_LOG_SECONDS:
                last_log = time.monotonic()
                log.warning(
                    "Redis at %s does not answer (%s); waiting up to %g s",
                    shown,
                    one_line(exc),
                    window,
                )
        except redis.RedisError as exc:
            # A reply that is an error (a database index out of range...): a setting.
            fatal(f"Redis at {shown} refused the connection: {one_line(exc)}", code=EX_CONFIG)
        time.sleep(min(PING_INTERVAL_SECONDS, max(deadline - time.monotonic(), 0.0)))


def _ping(settings: Settings, url: str, *, timeout: float) -> None:
    client = connect(
        settings,
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        # This loop is the retry; redis-py's own would also retry refused credentials.
        retry=Retry(NoBackoff(), 0),
    )
    try:
        client.ping()
    finally:
        client.close()


def check_storage(settings: Settings) -> None:
    """HEAD the bucket (creating it when allowed): refused keys stop the worker; an S3 that does
    not answer is logged and the worker starts (its jobs retry storage errors)."""
    try:
        store = AudioStore.from_settings(settings)
        store.ensure_bucket(create=settings.s3_create_bucket)
    except StorageAuthError as exc:
        fatal(f"{exc} (endpoint {settings.s3_endpoint})", code=EX_NOPERM)
    except ConfigError as exc:
        fatal(str(exc), code=EX_CONFIG)
    except StorageError as exc:
        log.warning("S3 does not answer at start-up; starting anyway, jobs will retry: %s", exc)
