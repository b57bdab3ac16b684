"""`tts-batch doctor` and a second `tts-batch up`, run as an operator runs them: the CLI in a
child process against a whole local stack of the module's own (state folder, free ports named
by its ports.json), started and stopped by `tts-batch up` / `down`, fake engine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from devstack.credentials import read_credentials
from devstack.layout import StackLayout, StackPorts
from devstack.procs import read_pid
from devstack.stack import LocalStack
from producer.doctor import (
    Check,
    Targets,
    check_disk,
    check_model_dir,
    check_workers,
    fix_for,
    hide_password,
    run_checks,
)

ROWS = 3000
SERVICE_CHECKS = {"redis", "s3", "pushgateway", "prometheus", "flower", "workers"}


@dataclass
class CliStack:
    state_dir: Path
    ports: StackPorts
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "producer.cli", *args],
            env=self.env,
            cwd=self.state_dir.parent,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
        return proc

    def worker_pid(self) -> int | None:
        return read_pid(StackLayout(self.state_dir, ports=self.ports).dirs, "worker-1")


def cli_env(state_dir: Path, ports: StackPorts, *, redis_password: str = "") -> dict[str, str]:
    auth = f":{redis_password}@" if redis_password else ""
    return {
        **os.environ,
        "TTS_STACK_DIR": str(state_dir),
        "TTS_BROKER_URL": f"redis://{auth}127.0.0.1:{ports.redis}/0",
        "TTS_S3_ENDPOINT": f"http://127.0.0.1:{ports.s3}",
        "TTS_PUSHGATEWAY_URL": f"http://127.0.0.1:{ports.pushgateway}",
        "TTS_ENGINE": "fake",
    }


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStack]:
    state_dir = tmp_path_factory.mktemp("doctor") / "stack"
    ports = StackPorts.find_free()
    ports.save(state_dir)
    stack = CliStack(state_dir, ports, cli_env(state_dir, ports))
    try:
        up = stack.run("up", "--workers", "1", "--concurrency", "2")
        assert up.returncode == 0, up.stderr
        # `up` gave the stack's Redis a password: later commands name it, as an operator would.
        password = read_credentials(str(state_dir))["redis_password"]
        stack.env = cli_env(state_dir, ports, redis_password=password)
        yield stack
    finally:
        stack.run("down")


def doctor_json(stack: CliStack, *args: str) -> tuple[int, dict[str, Any]]:
    proc = stack.run("doctor", "--json", *args, timeout=60)
    return proc.returncode, json.loads(proc.stdout)


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in report["checks"]}


@pytest.mark.integration
def test_doctor_passes_on_a_running_stack(cli_stack: CliStack) -> None:
    code, report = doctor_json(cli_stack)
    assert code == 0, report
    assert report["ok"] is True
    checks = by_name(report)
    assert all(c["ok"] for c in checks.values()), report
    assert {"redis", "s3", "pushgateway", "prometheus", "flower", "model dir"} <= checks.keys()
    node = f"worker-1@{socket.gethostname()}"
    assert checks[f"worker {node}"]["detail"].startswith("online"), report
    # The broker URL is shown without its password.
    password = read_credentials(str(cli_stack.state_dir))["redis_password"]
    assert password not in json.dumps(report)
    assert "***" in checks["redis"]["detail"]

    table = cli_stack.run("doctor", timeout=60)
    assert table.returncode == 0, table.stdout
    rows = table.stdout.strip().splitlines()
    assert rows[0].split() == ["CHECK", "STATUS", "DETAIL", "FIX"]
    assert len(rows) == 1 + len(checks)
    assert all("  OK  " in row and "FAIL" not in row for row in rows[1:]), table.stdout
    assert table.stderr.strip() == f"doctor: all {len(checks)} pass"
    quiet = cli_stack.run("doctor", "--quiet", timeout=60)
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.integration
def test_doctor_fails_on_a_wrong_flower_login(cli_stack: CliStack) -> None:
    flower = f"http://tts:wrong@127.0.0.1:{cli_stack.ports.flower}"
    code, report = doctor_json(cli_stack, "--flower", flower)
    assert code == 1
    flower_check = by_name(report)["flower"]
    assert not flower_check["ok"]
    assert "login refused" in flower_check["detail"]


@pytest.mark.integration
def test_up_again_after_3000_jobs_answers_from_the_worker(cli_stack: CliStack) -> None:
    pid = cli_stack.worker_pid()
    assert pid is not None
    rows = cli_stack.state_dir.parent / "rows.csv"
    lines = ["id,text,speaker,lang,format"]
    lines += [f"r{i:05d},Line number {i} of the long batch.,中文女,zh,wav" for i in range(ROWS)]
    rows.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = cli_stack.run("submit", str(rows), "--batch-id", "big", "--wait", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    # Past the 1 MiB the old readiness check read from the log's end.
    log = cli_stack.state_dir / "logs" / "worker-1.log"
    assert log.stat().st_size > 1 << 20, log.stat().st_size

    again = cli_stack.run("up", "--workers", "1", timeout=120)
    assert again.returncode == 0, again.stderr
    worker_line = next(line for line in again.stdout.splitlines() if line.startswith("worker-1"))
    assert "running" in worker_line and str(pid) in worker_line, again.stdout
    assert cli_stack.worker_pid() == pid

    ps = cli_stack.run("ps")
    assert f"worker-1@{socket.gethostname()}" in ps.stdout, ps.stdout
    assert "%h" not in ps.stdout


@pytest.mark.integration
def test_doctor_names_the_stopped_pushgateway_and_its_fix(cli_stack: CliStack) -> None:
    LocalStack(StackLayout(cli_stack.state_dir, ports=cli_stack.ports)).stop("pushgateway")
    code, report = doctor_json(cli_stack)
    assert code == 1
    checks = by_name(report)
    assert not checks["pushgateway"]["ok"]
    assert f":{cli_stack.ports.pushgateway}" in checks["pushgateway"]["detail"]
    assert "`tts-batch up`" in checks["pushgateway"]["fix"]
    assert [c for c in report["checks"] if not c["ok"]] == [checks["pushgateway"]]


@pytest.mark.integration
def test_doctor_with_nothing_running_fails_every_service_in_one_report(tmp_path: Path) -> None:
    ports = StackPorts.find_free()
    ports.save(tmp_path / "stack")
    stack = CliStack(tmp_path / "stack", ports, cli_env(tmp_path / "stack", ports))
    code, report = doctor_json(stack)
    assert code == 1
    checks = by_name(report)
    assert checks.keys() >= SERVICE_CHECKS
    for name in SERVICE_CHECKS:
        assert not checks[name]["ok"], checks[name]
        assert checks[name]["fix"], checks[name]
    assert "`tts-batch up`" in checks["redis"]["fix"]
    table = stack.run("doctor", timeout=60)
    assert table.returncode == 1
    assert "FAIL" in table.stdout
    failed = sum(not c["ok"] for c in report["checks"])
    assert table.stderr.strip() == f"doctor: {failed} of {len(checks)} checks fail"


def test_ports_file_round_trips_and_moves_the_cli_stack(tmp_path: Path) -> None:
    ports = StackPorts.from_base(21000)
    ports.save(tmp_path)
    assert StackPorts.saved(tmp_path) == ports
    assert StackPorts.saved(tmp_path / "none") is None
    settings = Settings(
        stack_dir=str(tmp_path),
        broker_url=f"redis://127.0.0.1:{ports.redis}/0",
        s3_endpoint=f"http://127.0.0.1:{ports.s3}",
        pushgateway_url=f"http://127.0.0.1:{ports.pushgateway}",
    )
    # Prometheus, Flower, the exporter and SeaweedFS's own ports come from the file.
    assert LocalStack.from_settings(settings).layout.ports == ports


def test_corrupt_ports_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "ports.json").write_text('{"redis": 1}', encoding="utf-8")
    stack = CliStack(tmp_path, StackPorts.local(), {**os.environ, "TTS_STACK_DIR": str(tmp_path)})
    proc = stack.run("doctor", timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tts-batch: error: {tmp_path / 'ports.json'}: must hold exactly the ports "
        + ", ".join(f.name for f in fields(StackPorts))
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://app:s3cret@redis.internal/2", "rediss://app:***@redis.internal/2"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_broker_password_is_hidden(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_fix_names_up_for_the_local_stack_and_the_setting_elsewhere() -> None:
    assert "`tts-batch up`" in fix_for("http://127.0.0.1:19091", "TTS_PUSHGATEWAY_URL")
    remote = fix_for("http://push.internal:9091", "TTS_PUSHGATEWAY_URL")
    assert "tts-batch up" not in remote
    assert "TTS_PUSHGATEWAY_URL" in remote and "push.internal" in remote


def test_a_hung_check_costs_its_deadline_not_the_report() -> None:
    release = threading.Event()

    def hangs(_: Targets) -> list[Check]:
        release.wait()
        return []

    def passes(_: Targets) -> list[Check]:
        return [Check("fine", True, "ok")]

    def breaks(_: Targets) -> list[Check]:
        raise RuntimeError("boom")

    targets = Targets(Settings(), "http://x", "http://y", None, Path("."))
    try:
        got = run_checks(
            targets, [("hung", hangs), ("fine", passes), ("broken", breaks)], deadline=0.5
        )
    finally:
        release.set()
    assert [(c.check, c.ok) for c in got] == [("hung", False), ("fine", True), ("broken", False)]
    assert "no answer within 0.5 s" in got[0].detail
    assert "boom" in got[2].detail


@pytest.mark.integration
def test_workers_show_their_engine_or_unknown(stack: Any) -> None:
    """Two live nodes on the harness's Redis: one answers `tts_engine`, one (an older worker)
    does not; both are listed as online, neither fails the check."""
    support = str(Path(__file__).parent / "support")
    names = {
        "engine_reply_app": f"worker-eng{os.getpid()}",
        "localstack_app": f"worker-old{os.getpid()}",
    }
    nodes = {
        app: LocalStack(stack.layout, app=app, extra_env={"PYTHONPATH": support}) for app in names
    }
    try:
        for app, node_stack in nodes.items():
            node_stack.up([names[app]], concurrency=1)
        targets = Targets(stack.settings(), "http://x", "http://y", None, Path("."))
        checks = {c.check: c for c in check_workers(targets)}
    finally:
        for app, node_stack in nodes.items():
            node_stack.stop(names[app])
    host = socket.gethostname()
    new = checks[f"worker {names['engine_reply_app']}@{host}"]
    old = checks[f"worker {names['localstack_app']}@{host}"]
    assert new.ok and old.ok
    assert "engine fake, model fake-tone-1; voices " in new.detail
    assert "zh-female (中文女), en-female (英文女), 日语男" in new.detail
    assert "engine unknown" in old.detail


def test_model_dir_checked_only_for_cosyvoice(tmp_path: Path) -> None:
    from worker.engines.cosyvoice.model_dir import REQUIRED_FILES

    def model_check(**changes: Any) -> Check:
        targets = Targets(Settings(**changes), "http://x", "http://y", None, tmp_path)
        [got] = check_model_dir(targets)
        return got

    assert model_check(engine="espeak").ok
    missing = model_check(engine="cosyvoice", model_dir="")
    assert not missing.ok and "TTS_MODEL_DIR" in missing.detail
    assert "make install-cosyvoice" in missing.fix
    (tmp_path / "llm.pt").write_bytes(b"")
    partial = model_check(engine="cosyvoice", model_dir=str(tmp_path))
    assert not partial.ok and "flow.pt" in partial.detail
    for name in REQUIRED_FILES:
        (tmp_path / name).write_bytes(b"")
    assert model_check(engine="cosyvoice", model_dir=str(tmp_path)).ok


def test_disk_below_the_minimum_fails_and_says_where(tmp_path: Path) -> None:
    settings = Settings(stack_dir=str(tmp_path / "state"), metrics_dir=str(tmp_path / "m"))
    roomy = Targets(settings, "http://x", "http://y", None, tmp_path, min_free_bytes=1)
    assert all(c.ok for c in check_disk(roomy))
    full = Targets(settings, "http://x", "http://y", None, tmp_path, min_free_bytes=1 << 60)
    checks = check_disk(full)
    assert [c.check for c in checks] == ["disk (audio)", "disk (metrics)", "disk (stack state)"]
    assert not any(c.ok for c in checks)
    assert str(tmp_path) in checks[0].fix
