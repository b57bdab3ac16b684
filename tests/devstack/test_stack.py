"""The local-stack supervisor against real servers, each test in its own folder and ports."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import redis
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.settings import Settings
from devstack.credentials import load_or_create_credentials, local_settings
from devstack.procs import is_alive, wait_until
from devstack.stack import LocalStack, ServiceStatus, StackError, StackLayout, StackPorts

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

CORE = ["redis", "s3", "pushgateway", "prometheus"]
TESTS_DIR = Path(__file__).resolve().parents[1] / "support"


def free_ports() -> StackPorts:
    return StackPorts.find_free()


def make_stack(state_dir: Path, ports: StackPorts) -> LocalStack:
    # Flower and workers run the trivial app in tests/ until worker/app.py exists.
    return LocalStack(
        StackLayout(state_dir, ports=ports),
        app="localstack_app",
        extra_env={"PYTHONPATH": str(TESTS_DIR)},
        ready_timeout=60.0,
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    local = make_stack(tmp_path / "stack", free_ports())
    try:
        yield local
    finally:
        local.down()


def s3_client(stack: LocalStack) -> S3Client:
    settings = stack.settings()
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
    )


def report(what: str, statuses: dict[str, ServiceStatus]) -> None:
    figures = {n: s.ready_seconds for n, s in statuses.items() if s.started}
    print(f"{what}: ready seconds {figures}")


@pytest.mark.integration
def test_up_starts_ready_services_once(stack: LocalStack) -> None:
    t0 = time.monotonic()
    first = stack.up(CORE)
    report(f"up in {time.monotonic() - t0:.2f}s", first)
    assert all(s.state == "running" and s.started and s.pid for s in first.values())

    settings = stack.settings()
    assert redis.Redis.from_url(settings.broker_url).ping()
    s3 = s3_client(stack)
    assert "tts-stack-probe" in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    creds = stack.layout.credentials_file
    assert creds.stat().st_mode & 0o777 == 0o600
    assert json.loads(creds.read_text())["access_key"] == settings.s3_access_key

    push = urllib.request.Request(
        f"{settings.pushgateway_url}/metrics/job/t/worker/w1",
        data=b"tts_probe 1\n",
        method="PUT",
    )
    with urllib.request.urlopen(push, timeout=5) as resp:
        assert resp.status == 200
    config = stack.layout.data_dir("prometheus") / "prometheus.yml"
    assert "honor_labels: true" in config.read_text()
    promtool = shutil.which("promtool")
    if promtool:
        subprocess.run([promtool, "check", "config", str(config)], check=True)

    # A second supervisor on the same folder finds everything running: no twins.
    again = make_stack(stack.layout.state_dir, stack.layout.ports).up(CORE)
    assert {n: s.pid for n, s in again.items()} == {n: s.pid for n, s in first.items()}
    assert not any(s.started for s in again.values())


@pytest.mark.integration
def test_s3_stop_start_keeps_data(stack: LocalStack) -> None:
    stack.up(["s3"])
    s3 = s3_client(stack)
    s3.create_bucket(Bucket="keep")
    s3.put_object(Bucket="keep", Key="a.wav", Body=b"RIFF-data", Metadata={"engine": "fake"})
    # A multipart upload crosses every internal SeaweedFS component (and its gRPC port).
    big = os.urandom(12 * 2**20)
    config = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)
    s3.upload_fileobj(io.BytesIO(big), "keep", "big.bin", Config=config)

    stopped = stack.stop("s3")
    assert stopped.pid is not None and not is_alive(stopped.pid)
    assert stack.status()["s3"].state == "stopped"
    t0 = time.monotonic()
    started = stack.start("s3")
    print(f"s3 restart ready after {started.ready_seconds}s")

    def readable() -> bool:
        try:
            obj = s3.get_object(Bucket="keep", Key="a.wav")
        except (BotoCoreError, ClientError):
            return False
        return bool(obj["Body"].read() == b"RIFF-data" and obj["Metadata"]["engine"] == "fake")

    assert wait_until(readable, timeout=30)
    restored = s3.get_object(Bucket="keep", Key="big.bin")["Body"].read()
    assert hashlib.sha256(restored).digest() == hashlib.sha256(big).digest()
    print(f"s3 object readable {time.monotonic() - t0:.2f}s after start")


@pytest.mark.integration
def test_redis_restart_keeps_data(stack: LocalStack) -> None:
    stack.up(["redis"])
    client = redis.Redis.from_url(stack.settings().broker_url)
    client.set("job", "queued")
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("appendonly")["appendonly"] == "yes"
    old = stack.status()["redis"].pid
    new = stack.restart("redis")
    assert new.pid != old and new.started
    assert client.get("job") == b"queued"

    # A SIGKILL leaves a stale pid file; the next start replaces it.
    killed = stack.kill("redis")
    assert wait_until(lambda: not is_alive(killed), timeout=5)
    assert stack.status()["redis"].state == "stopped"
    assert stack.start("redis").started


@pytest.mark.integration
def test_down_leaves_no_process(stack: LocalStack) -> None:
    up = stack.up([*CORE, "flower", "worker-1"], concurrency=2)
    pids = {n: s.pid for n, s in up.items() if s.pid}
    assert set(pids) == {*CORE, "flower", "worker-1"}
    # The worker's pool processes share its process group; down must take them too.
    pool = _group_members(pids["worker-1"])
    assert len(pool) >= 3

    t0 = time.monotonic()
    down = stack.down()
    print(f"down in {time.monotonic() - t0:.2f}s")
    assert all(s.state == "stopped" for s in down.values())
    assert not [pid for pid in [*pids.values(), *pool] if is_alive(pid)]
    assert not list(stack.layout.dirs.pids.glob("*.pid"))
    assert all(s.state != "running" for s in stack.status().values())


@pytest.mark.integration
def test_worker_sees_stack_settings_and_runs_a_task(stack: LocalStack) -> None:
    up = stack.up(["redis", "s3", "pushgateway", "worker-1"], concurrency=1)
    settings = stack.settings()
    pid = up["worker-1"].pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"TTS_S3_ENDPOINT={settings.s3_endpoint}".encode() in environ
    assert f"TTS_S3_SECRET_KEY={settings.s3_secret_key}".encode() in environ

    client = Celery("probe", broker=settings.broker_url)
    task_id = client.send_task("tts.ping", queue="tts").id
    log = stack.layout.dirs.log_file("worker-1")
    assert wait_until(lambda: f"[{task_id}] succeeded" in log.read_text(), timeout=30)


@pytest.mark.integration
def test_flower_requires_basic_auth(stack: LocalStack) -> None:
    stack.up(["redis", "flower"])
    url = stack.status()["flower"].url
    with urllib.request.urlopen(f"{url}/healthcheck", timeout=5) as resp:
        assert resp.status == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/workers", timeout=5)
    assert refused.value.code == 401
    creds = json.loads(stack.layout.credentials_file.read_text())
    token = base64.b64encode(f"{creds['flower_user']}:{creds['flower_password']}".encode())
    request = urllib.request.Request(
        f"{url}/api/workers", headers={"Authorization": "Basic " + token.decode()}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status == 200
    # The password is passed in the environment, never on a command line.
    pid = stack.status()["flower"].pid
    assert creds["flower_password"] not in Path(f"/proc/{pid}/cmdline").read_text()


@pytest.mark.integration
def test_stale_pid_file_is_replaced(stack: LocalStack) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    dirs = stack.layout.dirs
    dirs.pids.mkdir(parents=True)
    dirs.pid_file("redis").write_text(f"{dead.pid}\n")
    # An alive pid running something else (this test process) is not trusted either.
    dirs.pid_file("pushgateway").write_text(f"{os.getpid()}\n")
    assert stack.status()["redis"].state == "stopped"
    up = stack.up(["redis", "pushgateway"])
    assert all(s.started for s in up.values())


@pytest.mark.integration
def test_concurrent_ups_start_no_twins(stack: LocalStack) -> None:
    others = [make_stack(stack.layout.state_dir, stack.layout.ports) for _ in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda s: s.up(["redis", "pushgateway"]), others))
    for name in ("redis", "pushgateway"):
        assert len({r[name].pid for r in results}) == 1
        assert sum(r[name].started for r in results) == 1


@pytest.mark.integration
def test_busy_port_is_a_clear_error(stack: LocalStack) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", stack.layout.ports.redis))
        sock.listen()
        with pytest.raises(StackError, match=f"port {stack.layout.ports.redis}"):
            stack.up(["redis"])


@pytest.mark.integration
def test_redis_password_from_credentials(tmp_path: Path) -> None:
    local = LocalStack(StackLayout(tmp_path / "stack", ports=free_ports()), redis_password=True)
    try:
        local.up(["redis"])
        url = local.settings().broker_url
        password = json.loads(local.layout.credentials_file.read_text())["redis_password"]
        assert f":{password}@" in url
        assert redis.Redis.from_url(url).ping()
        anonymous = redis.Redis(
            host="127.0.0.1", port=local.layout.ports.redis, retry=Retry(NoBackoff(), 0)
        )
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        pid = local.status()["redis"].pid
        assert password not in Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        local.down()


@pytest.mark.integration
def test_start_failure_names_service_and_shows_log(tmp_path: Path) -> None:
    local = LocalStack(
        StackLayout(tmp_path / "stack", ports=free_ports()),
        app="localstack_bad_app",
        extra_env={"PYTHONPATH": str(TESTS_DIR)},
    )
    try:
        with pytest.raises(StackError, match="worker-1 exited during start-up") as failed:
            local.up(["redis", "worker-1"])
        assert "broken app for the local-stack test" in str(failed.value)
        assert local.status()["worker-1"].state == "stopped"
    finally:
        local.down()


def test_ports_from_base_do_not_overlap() -> None:
    ports = StackPorts.from_base(21000)
    every = ports.every()
    assert len(set(every)) == len(every) == 15
    assert sorted(every)[:-1] == list(range(21000, 21014)) and max(every) == 21009 + 10000
    with pytest.raises(ValueError):
        StackPorts.from_base(60000)


def test_local_ports_match_settings_defaults() -> None:
    ports, defaults = StackPorts.local(), Settings()
    assert defaults.broker_url.endswith(f":{ports.redis}/0")
    assert defaults.s3_endpoint.endswith(f":{ports.s3}")
    assert defaults.pushgateway_url.endswith(f":{ports.pushgateway}")


def test_credentials_are_created_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    first = load_or_create_credentials(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_credentials(path) == first
    with_password = load_or_create_credentials(path, redis_password=True)
    assert with_password.redis_password
    assert with_password.secret_key == first.secret_key
    # The CLI's settings read the same file when no keys are in the environment.
    settings = local_settings({"TTS_STACK_DIR": str(tmp_path)})
    assert settings.s3_secret_key == first.secret_key


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[-1].split()[2]) == pgid:
            members.append(int(entry.name))
    return members
