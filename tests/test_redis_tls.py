"""Redis with a password over TLS (`rediss://`): a real TLS Redis with a CA made for the test;
the producer and a real worker use it; a client that does not trust the CA is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.redis_conn import connect
from core.settings import Settings
from devstack.stack import LocalStack
from producer.api import Producer
from tests.support.helpers import make_settings, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "tls-test-password-1"


def make_certs(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
    )
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


@pytest.fixture()
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test's certificates")
    ca, cert, key = make_certs(tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(tmp_path),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
    try:
        settings = Settings(broker_url=url, redis_tls_ca_file=str(ca))
        wait_until(lambda: _pings(settings), timeout=10, what="TLS Redis ready")
        yield url, ca
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pings(settings: Settings) -> bool:
    try:
        return bool(connect(settings, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_untrusted_certificate_and_wrong_password_are_refused(tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    with pytest.raises(redis.ConnectionError):
        connect(Settings(broker_url=url), socket_timeout=2).ping()  # system CAs only
    wrong = url.replace(PASSWORD, "wrong")
    with pytest.raises(redis.AuthenticationError):
        connect(Settings(broker_url=wrong, redis_tls_ca_file=str(ca)), socket_timeout=2).ping()


def test_a_batch_over_tls(stack: Any, tls_redis: tuple[str, Path]) -> None:
    url, ca = tls_redis
    env = {"TTS_BROKER_URL": url, "TTS_REDIS_TLS_CA_FILE": str(ca)}
    node = LocalStack(stack.layout, base_settings=make_settings(), extra_env=env, ready_timeout=120)
    name = f"worker-tls{os.getpid()}"
    node.up([name], concurrency=1)
    try:
        settings = Settings.from_env({**stack.settings().to_env(), **env})
        rows = [
            {"id": f"t{i}", "text": f"Secure line {i} {time.time()}.", "speaker": "英文女"}
            for i in range(3)
        ]
        results = Producer(settings).submit_batch(rows).wait(timeout=60)
        assert [r.status for r in results] == ["succeeded"] * 3
        log = stack.layout.dirs.log_file(name).read_text(errors="replace")
        assert PASSWORD not in log
    finally:
        node.stop(name)
