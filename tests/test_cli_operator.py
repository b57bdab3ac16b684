"""What an operator meets at the command line, against the real harness (Redis, SeaweedFS,
Celery worker processes): an unknown batch, a `--wait` that times out or is interrupted,
credentials that Redis or S3 refuse, `--json` and `--quiet`, progress lines in a log.

Every error is one line on stderr with its documented exit code and never a traceback; the
CLI runs as a child process (`python -m producer.cli`), as an operator runs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import BatchState
from core.settings import Settings
from producer.api import Producer
from producer.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from producer.cli.errors import EXIT_INTERRUPTED
from tests.support.helpers import run_cli

# A fixture: a Redis of the test's own that requires a password (its port).
from tests.test_bad_credentials import PASSWORD, password_redis  # noqa: F401

pytestmark = pytest.mark.integration

ERROR = "tts-batch: error: "


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line on stderr; fails on a traceback or on a second error line."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tts-batch: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _jobs(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A CSV of (id, speaker) rows with texts never synthesized before (nothing is cached)."""
    token = uuid.uuid4().hex[:8]
    path = tmp_path / f"jobs-{token}.csv"
    lines = ["id,text,speaker"] + [f"{i},Gate {token} {i} closes soon.,{s}" for i, s in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- unknown batch ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "failed", "retry", "verify"])
def test_unknown_batch_is_exit_2_one_line_and_writes_nothing(
    settings: Settings, command: str
) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    assert client.dbsize() == 0
    proc = run_cli(settings, command, "never-made")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert _error_line(proc) == f"{ERROR}no batch 'never-made' (expired or never submitted)"
    assert proc.stdout == ""
    assert client.dbsize() == 0  # no batch, lease or queue key was made on the way


# -- --wait that ends before the batch -------------------------------------------------------


def test_wait_timeout_says_the_batch_keeps_running_and_exits_1(
    settings: Settings, tmp_path: Path
) -> None:
    # No worker: the jobs stay queued, so a 1 s wait ends first.
    jobs = _jobs(tmp_path, [("a", "英文女"), ("b", "英文女")])
    args = ("submit", str(jobs), "--batch-id", "slow1", "--wait", "--timeout", "1")
    proc = run_cli(settings, *args)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    line = _error_line(proc)
    assert line.startswith(f"{ERROR}batch slow1: 2 of 2 rows still pending after 1.0 s")
    assert line.endswith("; the batch keeps running; `tts-batch status slow1`")
    assert "batch slow1: 0/2 done (0 ok, 0 failed, 0 cached)" in proc.stderr
    assert "\r" not in proc.stderr  # not a terminal: lines, no bar frames
    assert proc.stdout.strip() == "slow1"

    # It did keep running: the batch is there with its jobs queued.
    status = run_cli(settings, "status", "slow1", "--json")
    assert status.returncode == EXIT_FAILED  # still pending
    assert json.loads(status.stdout)["pending"] == 2

    # --json --quiet: the error line alone on stderr, one document on stdout.
    quiet = run_cli(settings, *args[:3], "slow2", *args[4:], "--json", "--quiet")
    assert quiet.returncode == EXIT_FAILED, quiet.stderr
    assert quiet.stderr.splitlines() == [_error_line(quiet)]
    document = json.loads(quiet.stdout)
    assert (document["batch_id"], document["finished"]) == ("slow2", False)
    assert (document["total"], document["pending"], document["jobs_enqueued"]) == (2, 2, 2)


def test_ctrl_c_during_wait_says_the_batch_keeps_running_and_exits_130(
    settings: Settings, tmp_path: Path
) -> None:
    jobs = _jobs(tmp_path, [("a", "英文女"), ("b", "英文女")])
    env = {**os.environ, **settings.to_env()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "submit", str(jobs), "--batch-id", "cc1", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        assert proc.stderr is not None
        for line in proc.stderr:  # until the wait has begun (its first progress line)
            seen.append(line)
            if line.startswith("batch cc1: 0/2 done"):
                break
        else:
            raise AssertionError("".join(seen))
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(seen) + rest
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stdout == "cc1\n"
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == (
        "tts-batch: interrupted; the batch keeps running; `tts-batch status cc1`"
    )
    progress = Producer(settings).batch("cc1").progress()
    assert (progress.total, progress.pending) == (2, 2)  # nothing was cancelled


# -- refused credentials ---------------------------------------------------------------------


def test_redis_refusing_the_password_is_one_line_and_exit_2(
    settings: Settings,
    password_redis: int,  # noqa: F811
) -> None:
    url = f"redis://:wrong-password-7@127.0.0.1:{password_redis}/0"
    proc = run_cli(replace(settings, broker_url=url, result_backend=""), "status", "b1")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    line = _error_line(proc)
    assert line.startswith(f"{ERROR}Redis at redis://:***@127.0.0.1:{password_redis}/0 refused")
    assert "TTS_BROKER_URL" in line
    assert "wrong-password-7" not in proc.stderr and PASSWORD not in proc.stderr


def test_s3_refusing_the_key_is_one_line_and_exit_2(settings: Settings) -> None:
    # A batch with a succeeded row, as a worker records it: verify must ask S3 for its object.
    state = BatchState(redis.Redis.from_url(settings.broker_url), "keys1", ttl_seconds=600)
    state.create()
    state.add_rows([("r0", "j0")])
    state.record("j0", {"job_id": "j0", "status": "succeeded", "key": "audio/00/j0.wav"})
    wrong = "WRONG" + uuid.uuid4().hex
    proc = run_cli(replace(settings, s3_secret_key=wrong), "verify", "keys1")
    assert proc.returncode == EXIT_USAGE, proc.stderr
    line = _error_line(proc)
    assert line.startswith(f"{ERROR}S3 refused the credentials")
    assert line.endswith(f"(S3 at {settings.s3_endpoint})")
    assert wrong not in proc.stderr and settings.s3_secret_key not in proc.stderr


# -- machine output and quiet runs on a real batch --------------------------------------------


@pytest.fixture()
def one_worker(workers: Any) -> Iterator[Any]:
    yield workers.start(concurrency=1)


def test_json_quiet_and_log_progress_on_a_real_batch(
    settings: Settings, one_worker: Any, tmp_path: Path
) -> None:
    # The producer accepts a speaker the worker's engine does not have: that row fails.
    wide = Settings.from_env({**settings.to_env(), "TTS_SPEAKERS": "英文女,robot"})
    jobs = _jobs(tmp_path, [("a", "英文女"), ("b", "robot")])
    done = run_cli(wide, "submit", str(jobs), "--batch-id", "mixed", "--wait", "--json")
    assert done.returncode == EXIT_FAILED, done.stderr
    document = json.loads(done.stdout)  # stdout is the document and nothing else
    assert document["finished"] is True
    assert (document["succeeded"], document["failed"], document["pending"]) == (1, 1, 0)
    assert [(r["id"], r["reason"]) for r in document["failed_rows"]] == [("b", "unknown_speaker")]
    # Off a terminal, progress is plain lines; the last one has the final counts.
    assert "batch mixed: 2/2 done (1 ok, 1 failed, 0 cached)" in done.stderr
    assert "\r" not in done.stderr

    listed = run_cli(settings, "failed", "mixed", "--json")
    assert listed.returncode == EXIT_FAILED, listed.stderr
    failed = json.loads(listed.stdout)
    assert failed["batch_id"] == "mixed"
    assert [(r["id"], r["reason"]) for r in failed["failed_rows"]] == [("b", "unknown_speaker")]
    assert listed.stderr == "1 failed rows\n"

    quiet = run_cli(settings, "failed", "mixed", "--quiet")
    assert quiet.returncode == EXIT_FAILED and quiet.stderr == ""
    assert [json.loads(line)["id"] for line in quiet.stdout.splitlines()] == ["b"]

    # A clean batch with --wait --quiet: nothing on stderr at all, the id on stdout.
    clean = _jobs(tmp_path, [("c", "英文女")])
    ran = run_cli(settings, "submit", str(clean), "--batch-id", "calm", "--wait", "--quiet")
    assert ran.returncode == EXIT_OK, ran.stderr
    assert (ran.stdout, ran.stderr) == ("calm\n", "")
