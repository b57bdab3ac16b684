"""Output an operator or a script relies on, without services: `--version`, shell completion
through argcomplete's real protocol, progress that is a bar only on a terminal, the one-line
service errors (and the local stack's hint), and `ps --json`."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.settings import LOCAL_PORTS
from producer.cli.errors import EXIT_FAILED, ServiceUnreachable, exit_code, unreachable_line
from producer.cli.output import batch_progress, count_progress

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_version_prints_the_installed_version() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tts-batch {version('tts-batch')}"


def _complete(line: str) -> list[str]:
    """Ask the CLI for completions the way the shell hook does: _ARGCOMPLETE, COMP_LINE and
    COMP_POINT in the environment, the answer written to file descriptor 8."""
    read_end, write_end = os.pipe()

    def onto_fd_8() -> None:
        os.dup2(write_end, 8)

    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "COMP_TYPE": "9",  # Tab
    }
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.cli"],
            env=env,
            pass_fds=(write_end, 8),  # the child closes every other fd after preexec_fn
            preexec_fn=onto_fd_8,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as answer:
            read_end = -1
            words = answer.read().decode()
        _, stderr = proc.communicate(timeout=60)
    finally:
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    return [w.strip() for w in words.split("\n") if w.strip()]


def test_completion_answers_subcommand_names() -> None:
    assert set(_complete("tts-batch st")) == {"status"}
    assert {"submit", "status"} <= set(_complete("tts-batch s"))
    assert "completion" in _complete("tts-batch ")
    assert "--json" in _complete("tts-batch status b1 --j")
    assert _complete("tts-batch completion z") == ["zsh"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_command_prints_the_shell_hook(shell: str) -> None:
    proc = _cli("completion", shell)
    assert proc.returncode == 0, proc.stderr
    # The hook calls tts-batch back with argcomplete's protocol.
    assert "_ARGCOMPLETE" in proc.stdout and "tts-batch" in proc.stdout
    assert proc.stderr == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _counts(done_ok: int, failed: int, total: int, cached: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        total=total,
        succeeded=done_ok,
        failed=failed,
        cached=cached,
        done=done_ok + failed >= total,
    )


def test_progress_off_a_terminal_is_plain_lines_at_most_every_interval() -> None:
    out = io.StringIO()
    now = [0.0]
    report = batch_progress(out, "b1", interval=10, clock=lambda: now[0])
    report(_counts(0, 0, 2000))
    now[0] = 4.0
    report(_counts(50, 0, 2000))  # within the interval: not shown
    now[0] = 10.5
    report(_counts(118, 2, 2000))
    now[0] = 11.0
    report(_counts(1995, 5, 2000, cached=7))  # the end: always shown
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == [
        "batch b1: 0/2000 done (0 ok, 0 failed, 0 cached)",
        "batch b1: 120/2000 done (118 ok, 2 failed, 0 cached)",
        "batch b1: 2000/2000 done (1995 ok, 5 failed, 7 cached)",
    ]


def test_progress_on_a_terminal_is_a_bar_and_quiet_is_silent() -> None:
    terminal = _Terminal()
    report = batch_progress(terminal, "b1")
    report(_counts(1, 0, 4))
    report(_counts(4, 0, 4))
    assert "\r" in terminal.getvalue() and "4/4" in terminal.getvalue()

    quiet_out = _Terminal()
    quiet = batch_progress(quiet_out, "b1", quiet=True)
    quiet(_counts(4, 0, 4))
    enqueue = count_progress(quiet_out, "enqueue", quiet=True)
    enqueue(1000, 5000)
    assert quiet_out.getvalue() == ""


def test_enqueue_progress_off_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    now = [0.0]
    report = count_progress(out, "enqueue", interval=10, clock=lambda: now[0])
    report(1000, 3000)
    now[0] = 1.0
    report(2000, 3000)
    now[0] = 2.0
    report(3000, 3000)
    assert out.getvalue().splitlines() == ["enqueue: 1000/3000 rows", "enqueue: 3000/3000 rows"]
    single = io.StringIO()
    count_progress(single, "enqueue")(10, 10)  # one chunk: over before it is worth a line
    assert single.getvalue() == ""


def test_unreachable_line_names_the_service_and_hints_the_local_stack() -> None:
    local = unreachable_line("redis", "redis://:s3cret@127.0.0.1:16379/0", "Connection refused.")
    assert local == (
        "cannot reach Redis (the broker) at redis://:***@127.0.0.1:16379/0: Connection refused; "
        "is the stack up? `tts-batch up`"
    )
    remote = unreachable_line("prometheus", "http://prom.internal:9090", "timed out")
    assert remote == "cannot reach Prometheus at http://prom.internal:9090: timed out"
    pushgateway = ServiceUnreachable("pushgateway", "http://127.0.0.1:19091")
    assert "the Pushgateway at http://127.0.0.1:19091; is the stack up?" in str(pushgateway)
    assert exit_code(pushgateway) == EXIT_FAILED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "command", [["submit", "JOBS"], ["status", "b1"], ["failed", "b1"], ["retry", "b1"]]
)
def test_unreachable_broker_names_redis_and_its_url(tmp_path: Path, command: list[str]) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("id,text,speaker\na,hello,英文女\n", encoding="utf-8")
    url = f"redis://:pw-not-shown@127.0.0.1:{_free_port()}/0"
    argv = [str(jobs) if word == "JOBS" else word for word in command]
    env = {"TTS_STACK_DIR": str(tmp_path), "TTS_BROKER_URL": url}
    proc = _cli(*argv, env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    masked = url.replace("pw-not-shown", "***")
    assert line.startswith(f"tts-batch: error: cannot reach Redis (the broker) at {masked}: ")
    assert "pw-not-shown" not in proc.stderr
    assert "tts-batch up" not in line  # not the local stack's port: no hint about it


def test_ps_json_is_one_document_of_services(tmp_path: Path) -> None:
    proc = _cli("ps", "--json", env={"TTS_STACK_DIR": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stderr  # nothing running in an empty folder
    document = json.loads(proc.stdout)
    names = [service["name"] for service in document["services"]]
    assert names[:4] == ["redis", "s3", "pushgateway", "prometheus"]
    assert {service["state"] for service in document["services"]} == {"stopped"}


def test_unreachable_local_stack_says_to_start_it(tmp_path: Path) -> None:
    # No TTS_BROKER_URL: the local stack's Redis port, where nothing may listen for this test.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", LOCAL_PORTS["redis"])) == 0:
            pytest.skip("a local stack is running on this machine")
    proc = _cli("status", "b1", env={"TTS_STACK_DIR": str(tmp_path)}, cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    url = f"redis://127.0.0.1:{LOCAL_PORTS['redis']}/0"
    assert line.startswith(f"tts-batch: error: cannot reach Redis (the broker) at {url}: ")
    assert line.endswith("; is the stack up? `tts-batch up`")


def test_unreachable_prometheus_is_named_with_its_url_and_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    out = tmp_path / "d.png"
    proc = _cli("dashboard", "--prometheus", url, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"tts-batch: error: cannot reach Prometheus at {url}: ")
    assert "Connection refused" in line and not out.exists()


def test_bash_hook_completes_through_the_installed_script(tmp_path: Path) -> None:
    # What a user's ~/.bashrc line does: eval the hook, then Tab after `tts-batch su`.
    script = (
        'eval "$(tts-batch completion bash)"\n'
        'COMP_WORDS=(tts-batch su); COMP_CWORD=1; COMP_LINE="tts-batch su"; COMP_POINT=12\n'
        "_python_argcomplete tts-batch su tts-batch\n"
        'echo "${COMPREPLY[@]}"\n'
    )
    bin_dir = str(Path(sys.executable).parent)  # the venv's bin: tts-batch lives there
    proc = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["submit"]


def test_refused_redis_without_stack_credentials_says_where_they_were_looked_for(
    tmp_path: Path,
) -> None:
    from redis.exceptions import AuthenticationError

    from core.settings import Settings
    from producer.cli.errors import one_line

    settings = Settings.from_env({"TTS_STACK_DIR": str(tmp_path / ".tts-stack")})
    line = one_line(AuthenticationError("NOAUTH"), settings)
    assert str(tmp_path / ".tts-stack" / "credentials.json") in line
    assert "TTS_STACK_DIR" in line and "\n" not in line

    # With the file there, or a password in the URL, the hint would mislead: none.
    (tmp_path / ".tts-stack").mkdir()
    (tmp_path / ".tts-stack" / "credentials.json").write_text("{}", encoding="utf-8")
    assert "TTS_STACK_DIR" not in one_line(AuthenticationError("NOAUTH"), settings)
    with_password = Settings.from_env(
        {"TTS_STACK_DIR": str(tmp_path / "none"), "TTS_BROKER_URL": "redis://:pw@127.0.0.1:1/0"}
    )
    assert "TTS_STACK_DIR" not in one_line(AuthenticationError("WRONGPASS"), with_password)


def test_a_reader_that_goes_away_ends_the_cli_quietly() -> None:
    # `tts-batch ... | head`: the pipe's read end is closed before the CLI writes a byte.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "producer.cli", "completion", "bash"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr.decode()[-2000:]
    assert proc.stderr == b""
