"""Bad configuration fails fast: a worker that Redis or S3 refuses, or that cannot reach Redis
within its start-up window, exits with one line and its exit code (core.exit_codes); a job that
meets an S3 403 mid-run fails at once as `storage_auth`, never retried as an outage.

Real processes: `tts-batch worker` as a child process (its stderr and exit code read), a Redis
of the test's own with a password, the harness's SeaweedFS, and for the mid-run 403 a proxy in
front of SeaweedFS that makes SeaweedFS itself refuse a key (tests/support/s3_proxy.py). Each
test prints what it saw (pytest -s).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.errors import ConfigError, PermanentError, StackError, StorageAuthError, StorageError
from core.exit_codes import EX_CONFIG, EX_NOPERM, EX_UNAVAILABLE
from core.settings import Settings
from core.storage import AudioStore
from devstack.stack import LocalStack
from producer.api import Producer
from producer.cli import EXIT_FAILED, EXIT_USAGE, exit_code
from tests.support.helpers import make_settings, pushgateway_samples, run_cli, wait_until
from tests.support.s3_proxy import S3Proxy

# A fixture: a TLS Redis whose certificate a CA of the test's own signed.
from tests.test_redis_tls import tls_redis  # noqa: F401

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "right-password-1"
SPEAKER = "英文女"
LINE = "tts-batch worker: "


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def password_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis of the test's own that requires PASSWORD; its port."""
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
         "--dir", str(tmp_path), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=1)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(pings, timeout=10, what="password Redis ready")
        yield port
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def run_worker(settings: Settings, *, timeout: float = 60) -> tuple[int, str, float]:
    """`tts-batch worker` with `settings` until it exits: exit code, stderr, seconds."""
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT)}
    name = f"bad{os.getpid()}-{uuid.uuid4().hex[:6]}@localhost"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "worker", "--concurrency", "1", "--hostname", name],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # it started after all: stop it, the assertion says why
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr, time.monotonic() - started


def one_line(stderr: str) -> str:
    """The worker's one reason line; fails unless there is exactly one and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith(LINE)]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# -- Redis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong", "missing"])
def test_worker_refused_by_redis_exits_at_once_with_the_auth_code(
    settings: Settings, password_redis: int, password: str | None
) -> None:
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{password_redis}/0"
    code, stderr, seconds = run_worker(replace(settings, broker_url=url, result_backend=""))
    line = one_line(stderr)
    print(
        f"\n[redis {'wrong' if password else 'no'} password] exit {code} in {seconds:.1f} s: {line}"
    )
    assert code == EX_NOPERM, stderr[-3000:]
    assert "refused the credentials" in line and "TTS_BROKER_URL" in line
    assert seconds < 20  # the interpreter and Celery's imports; no waiting at all
    assert PASSWORD not in stderr and (password is None or password not in stderr)


def test_worker_that_cannot_reach_redis_exits_after_its_startup_window(
    settings: Settings,
) -> None:
    window = 3.0
    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    changed = replace(settings, broker_url=url, result_backend="", startup_timeout_seconds=window)
    code, stderr, seconds = run_worker(changed)
    line = one_line(stderr)
    print(f"\n[no redis, window {window:g} s] exit {code} after {seconds:.1f} s: {line}")
    assert code == EX_UNAVAILABLE, stderr[-3000:]
    assert "cannot reach Redis" in line and "TTS_STARTUP_TIMEOUT_SECONDS" in line
    assert window <= seconds < window + 15


def _wrong_keys(settings: Settings) -> dict[str, Settings]:
    bad = "WRONG" + uuid.uuid4().hex
    return {
        "secret key": replace(settings, s3_secret_key=bad),
        "access key": replace(settings, s3_access_key=bad),
    }


def test_worker_that_does_not_trust_redis_tls_certificate_exits_at_once(
    settings: Settings, request: pytest.FixtureRequest
) -> None:
    # No TTS_REDIS_TLS_CA_FILE: the test's CA is not a system one.
    url, _ = request.getfixturevalue("tls_redis")
    code, stderr, seconds = run_worker(replace(settings, broker_url=url, result_backend=""))
    line = one_line(stderr)
    print(f"\n[redis TLS, CA not given] exit {code} in {seconds:.1f} s: {line}")
    assert code == EX_CONFIG, stderr[-3000:]
    assert "TLS certificate not trusted" in line and "TTS_REDIS_TLS_CA_FILE" in line
    assert seconds < 20


def test_the_cli_treats_refused_credentials_as_a_setting() -> None:
    # `tts-batch submit/status/fetch...` with a wrong Redis password or S3 key: exit 2, not 1.
    assert exit_code(redis.AuthenticationError("invalid username-password pair")) == EXIT_USAGE
    assert exit_code(StorageAuthError("S3 refused the credentials (403)")) == EXIT_USAGE
    assert exit_code(StorageError("S3 endpoint unreachable")) == EXIT_FAILED


# -- S3 at start-up --------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["secret key", "access key"])
def test_worker_with_a_wrong_s3_key_refuses_to_start(settings: Settings, wrong: str) -> None:
    changed = _wrong_keys(settings)[wrong]
    bad = changed.s3_secret_key if wrong == "secret key" else changed.s3_access_key
    code, stderr, seconds = run_worker(changed)
    line = one_line(stderr)
    print(f"\n[wrong S3 {wrong}] exit {code} in {seconds:.1f} s: {line}")
    assert code == EX_NOPERM, stderr[-3000:]
    assert "S3 refused the credentials" in line and "TTS_S3_SECRET_KEY" in line
    assert bad not in stderr and settings.s3_secret_key not in stderr


def test_local_stack_reports_a_worker_refusing_to_start_with_its_code_and_line(
    stack: Any, settings: Settings
) -> None:
    name = f"worker-badkey{os.getpid()}"
    node = LocalStack(
        stack.layout,
        base_settings=make_settings(),
        extra_env={"TTS_S3_SECRET_KEY": "WRONG" + uuid.uuid4().hex},
        ready_timeout=60,
    )
    started = time.monotonic()
    with pytest.raises(StackError) as caught:
        node.up([name], concurrency=1)
    message = str(caught.value)
    print(f"\n[tts-batch up, wrong S3 secret] after {time.monotonic() - started:.1f} s: {message}")
    assert f"{name} exited during start-up with code {EX_NOPERM}" in message
    assert f"{LINE}S3 refused the credentials" in message
    assert len(message.splitlines()) == 1


def test_worker_starts_when_s3_does_not_answer_at_start_up(stack: Any) -> None:
    # An S3 outage is not a configuration error: the worker starts and its jobs retry.
    name = f"worker-nos3{os.getpid()}"
    node = LocalStack(
        stack.layout,
        base_settings=make_settings(),
        extra_env={"TTS_S3_ENDPOINT": f"http://127.0.0.1:{_free_port()}"},
        ready_timeout=60,
    )
    try:
        status = node.up([name], concurrency=1)[name]
        log = stack.layout.dirs.log_file(name).read_text(errors="replace")
        warned = [line for line in log.splitlines() if "S3 does not answer at start-up" in line]
        print(f"\n[S3 down at start-up] worker ready in {status.ready_seconds} s; {warned[-1]}")
        assert status.state == "running" and warned
    finally:
        node.stop(name)


# -- S3 403 during jobs ----------------------------------------------------------------------


def test_a_seaweedfs_403_is_a_storage_auth_error_and_an_outage_is_not(settings: Settings) -> None:
    good = AudioStore.from_settings(settings)
    good.ensure_bucket()
    key = f"auth-test/{uuid.uuid4().hex}.wav"
    good.put(key, b"RIFF", fmt="wav", metadata={})
    calls: dict[str, Callable[[AudioStore], object]] = {
        "head bucket": lambda store: store.ensure_bucket(),
        "head": lambda store: store.head(key),
        "put": lambda store: store.put(key + "x", b"RIFF", fmt="wav", metadata={}),
        "get": lambda store: store.get(key),
    }
    seen = []
    for field, wrong in _wrong_keys(settings).items():
        store = AudioStore.from_settings(wrong)
        for op, call in calls.items():
            with pytest.raises(StorageAuthError) as caught:
                call(store)
            exc = caught.value
            assert exc.reason == "storage_auth"
            assert isinstance(exc, PermanentError) and isinstance(exc, ConfigError)
            assert not isinstance(exc, StorageError)
            seen.append(f"{field}/{op}: {str(exc).split(':')[0]}")
    print("\n[seaweedfs 403] " + "; ".join(seen))
    down = AudioStore.from_settings(
        replace(settings, s3_endpoint=f"http://127.0.0.1:{_free_port()}")
    )
    with pytest.raises(StorageError) as outage:
        down.head(key)
    assert not isinstance(outage.value, StorageAuthError)


@pytest.mark.parametrize("refused", ["every request", "uploads only"])
def test_a_job_meeting_an_s3_403_mid_run_fails_at_once_as_storage_auth(
    stack: Any, settings: Settings, refused: str
) -> None:
    # "every request": the key was removed, the job's first lookup is refused. "uploads only":
    # a key that may read but not write, refused after the synthesis, at the upload.
    name = f"worker-revoked{os.getpid()}"
    methods = frozenset({"PUT"}) if refused == "uploads only" else None
    with S3Proxy(settings.s3_endpoint, revoke_methods=methods).running() as proxy:
        node = LocalStack(
            stack.layout,
            base_settings=make_settings(),
            extra_env={"TTS_S3_ENDPOINT": proxy.url},
            ready_timeout=60,
        )
        node.up([name], concurrency=1)
        try:
            producer = Producer(settings)
            token = uuid.uuid4().hex[:8]

            def submit(batch_id: str, text: str) -> Any:
                return producer.submit_batch(
                    [{"id": "r0", "text": text, "speaker": SPEAKER}], batch_id=batch_id
                )

            before = submit(f"keys-ok-{token}", f"Keys still valid {token}.").wait(timeout=30)
            assert [r.status for r in before] == ["succeeded"]
            proxy.revoked.set()  # from now on SeaweedFS refuses the worker's key
            batch_id = f"keys-revoked-{token}"
            sent = time.monotonic()
            [failed] = submit(batch_id, f"Keys revoked {token}.").wait(timeout=30)
            seconds = time.monotonic() - sent
            listed = run_cli(settings, "failed", batch_id)
            errors = wait_until(
                lambda: _storage_auth_sum(settings, name, "tts_errors_total"),
                timeout=15,
                what="tts_errors_total{reason=storage_auth} pushed",
            )
            retries = _storage_auth_sum(settings, name, "tts_task_retries_total")
            proxy.revoked.clear()  # the key is fixed: `retry` runs the job again
            again = run_cli(settings, "retry", batch_id)
            after = producer.batch(batch_id).wait(timeout=30)
            print(
                f"\n[S3 403 mid-run, {refused}] failed in {seconds:.2f} s: {failed.reason}, "
                f"attempts {failed.attempts}, {failed.error}; "
                f"S3 answered 403 {proxy.refused} times; "
                f"tts_errors_total{{reason=storage_auth}} = {errors}, retries {retries}; "
                f"`tts-batch failed`: {listed.stdout.strip()}; `tts-batch retry`: "
                f"{again.stdout.strip()} -> {[r.status for r in after]}"
            )
            assert (failed.status, failed.reason, failed.attempts) == ("failed", "storage_auth", 1)
            assert "S3 refused the credentials" in (failed.error or "")
            step = "upload of" if refused == "uploads only" else "lookup of"
            assert step in (failed.error or "")
            assert proxy.refused >= 1
            assert '"reason": "storage_auth"' in listed.stdout and '"attempts": 1' in listed.stdout
            assert errors == 1 and retries == 0
            assert again.returncode == 0 and [r.status for r in after] == ["succeeded"]
        finally:
            node.stop(name)


def _storage_auth_sum(settings: Settings, name: str, metric: str) -> float:
    """Sum of `metric{reason="storage_auth"}` over worker node `name`'s Pushgateway groups."""
    return sum(
        value
        for labels, value in pushgateway_samples(settings.pushgateway_url, metric)
        if labels.get("worker", "").startswith(f"{name}@")
        and labels.get("reason") == "storage_auth"
    )
