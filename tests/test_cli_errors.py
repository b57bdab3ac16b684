"""Every error the CLI can meet ends in one line on stderr and its exit code, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from core.errors import (
    ConfigError,
    DashboardError,
    EngineFailure,
    InvalidBatch,
    InvalidJob,
    ObjectMissing,
    PermanentError,
    RetriesExhausted,
    StackError,
    StorageError,
    TransientError,
    TTSError,
)
from devstack.credentials import credentials_path
from producer.cli import EXIT_FAILED, EXIT_USAGE, exit_code


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["ps"], ["status", "b1"], ["down"]])
def test_corrupt_credentials_file_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    credentials_path(str(tmp_path)).write_text("{not json", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "TTS_STACK_DIR": str(tmp_path)}
    proc = _cli(*command, env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tts-batch: error: ")
    assert "credentials.json: unreadable stack credentials" in lines[0]


def test_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TTS_STACK_DIR": str(tmp_path),
        "TTS_BROKER_URL": f"redis://127.0.0.1:{_free_port()}/0",
    }
    proc = _cli("status", "b1", env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        line for line in proc.stderr.strip().splitlines() if line.startswith("tts-batch: error:")
    ]
    assert "cannot reach Redis" in proc.stderr


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidJob("x", reason="invalid_text"), EXIT_USAGE),
        (InvalidBatch("x"), EXIT_USAGE),
        (ConfigError("x"), EXIT_USAGE),
        (StackError("x"), EXIT_USAGE),
        (FileNotFoundError("x"), EXIT_USAGE),
        (StorageError("x"), EXIT_FAILED),
        (ObjectMissing("audio/00/x.wav"), EXIT_FAILED),
        (DashboardError("x"), EXIT_FAILED),
        (RedisConnectionError("x"), EXIT_FAILED),
        (OperationalError("x"), EXIT_FAILED),
        (RuntimeError("a bug"), None),
    ],
)
def test_exit_codes(exc: BaseException, code: int | None) -> None:
    assert exit_code(exc) == code


def test_error_tree() -> None:
    permanent: tuple[type[TTSError], ...] = (InvalidJob, EngineFailure, RetriesExhausted)
    for cls in permanent:
        assert issubclass(cls, PermanentError)
    assert not issubclass(TransientError, PermanentError)
    # A vanished object stays missing: neither retried as transient nor a job's failure.
    assert not issubclass(ObjectMissing, TransientError | PermanentError)
    branches: tuple[type[Exception], ...] = (
        PermanentError,
        TransientError,
        ConfigError,
        StackError,
        DashboardError,
    )
    for branch in branches:
        assert issubclass(branch, TTSError)
    assert EngineFailure("boom").reason == "engine_error"
    assert RetriesExhausted("gone").reason == "storage_error"
