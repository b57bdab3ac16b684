"""Redis with a password and TLS (`rediss://`): producer and worker work through the settings'
URL alone; a wrong password or an unverified certificate is refused; the password shows up in
no command line and no log."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis

from producer.api import Producer
from producer.settings import Settings
from producer.stack_procs import ProcDirs, ProcSpec, spawn, stop_pid
from producer.stack_services import executable
from tests.helpers import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl program"),
]


@dataclass(frozen=True)
class TlsRedis:
    port: int
    password: str
    ca: Path

    def url(self, *, password: str | None = None, verify: bool = True) -> str:
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca}" if verify else ""
        return f"rediss://:{password or self.password}@127.0.0.1:{self.port}/0{query}"


def make_certificates(folder: Path) -> None:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=tts-test-ca",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="ascii")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    make_certificates(tmp_path)
    server = TlsRedis(port=free_port(), password=secrets.token_urlsafe(18), ca=tmp_path / "ca.crt")
    conf = tmp_path / "redis.conf"
    # Plain TCP off (port 0): TLS only. A config file keeps the password out of `ps`.
    conf.write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                "port 0",
                f"tls-port {server.port}",
                f"tls-cert-file {tmp_path / 'server.crt'}",
                f"tls-key-file {tmp_path / 'server.key'}",
                f"tls-ca-cert-file {server.ca}",
                "tls-auth-clients no",
                f"requirepass {server.password}",
                f"dir {tmp_path}",
                'save ""',
                "",
            ]
        ),
        encoding="utf-8",
    )
    conf.chmod(0o600)
    dirs = ProcDirs(tmp_path / "pids", tmp_path / "logs")
    spec = ProcSpec("tls-redis", (executable("redis-server"), str(conf)), os.environ, ())
    pid = spawn(spec, dirs)
    try:
        wait_until(lambda: _pings(server.url()), timeout=20, what="the TLS Redis")
        yield server
    finally:
        stop_pid(pid, grace=5)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_producer_and_worker_over_tls_with_a_password(
    settings: Settings, tls_redis: TlsRedis, tmp_path: Path
) -> None:
    secure = replace(settings, broker_url=tls_redis.url(), result_backend="")
    logs = tmp_path / "worker-logs"
    name = f"tls-{uuid.uuid4().hex[:6]}"
    spec = ProcSpec(
        name,
        (
            executable("celery"),
            "-A",
            "worker.app",
            "worker",
            "-Q",
            "tts",
            "--concurrency",
            "1",
            "--hostname",
            f"{name}@%h",
            "--loglevel",
            "INFO",
        ),
        {**os.environ, **secure.to_env()},
        (),
    )
    dirs = ProcDirs(tmp_path / "worker-pids", logs)
    pid = spawn(spec, dirs)
    log = dirs.log_file(name)
    try:
        wait_until(
            lambda: " ready." in log.read_text(errors="replace"),
            timeout=60,
            what="the worker on TLS Redis",
        )
        rows = [
            {"id": f"t{i}", "text": f"Secure line {uuid.uuid4().hex[:6]} {i}.", "speaker": "英文女"}
            for i in range(3)
        ]
        results = Producer(secure).submit_batch(rows, batch_id="tls").wait(timeout=60)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    finally:
        stop_pid(pid, grace=20)
    text = log.read_text(errors="replace")
    print(
        f"\n[redis tls] worker and producer on {tls_redis.url(password='***', verify=False)}"
        f" (CA-verified): outcomes {[r.status for r in results]}; password in worker command"
        f" line: {tls_redis.password in cmdline}, in its log: {tls_redis.password in text}"
    )
    assert [r.status for r in results] == ["succeeded"] * 3
    assert tls_redis.password not in cmdline
    assert tls_redis.password not in text


def test_wrong_password_and_unverified_certificate_are_refused(tls_redis: TlsRedis) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(tls_redis.url(password="wrong")).ping()
    # Without the CA the server's certificate cannot be verified: no connection.
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(tls_redis.url(verify=False)).ping()
    # Plain TCP is not served at all.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(
            f"redis://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0", socket_timeout=2
        ).ping()
