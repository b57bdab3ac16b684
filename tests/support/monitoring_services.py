"""Real Redis, Pushgateway and Prometheus processes on loopback for the monitoring tests.

Each helper is a context manager: it starts the server in a temporary directory on a free port,
polls until it answers (with a deadline), and stops it by PID in `finally`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll `check` until it returns True; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not ready yet: connection refused, bad reply...
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def http_ok(url: str) -> bool:
    """True if GET `url` answers 2xx."""
    with urllib.request.urlopen(url, timeout=2) as resp:
        return 200 <= int(resp.status) < 300


def binary(name: str) -> str:
    """The path of a system binary the project installs (scripts/install-system.sh)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run scripts/install-system.sh")
    return path


@contextmanager
def process(
    argv: list[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` with output to `log`; terminate it by PID on exit (kill if it lingers)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@contextmanager
def redis_server(tmp: Path, *, port: int | None = None) -> Iterator[int]:
    """A redis-server on `port` (default: a free one) on loopback; yields the port."""
    port = port or free_port()
    data = tmp / "redis"
    data.mkdir(exist_ok=True)
    argv = [binary("redis-server"), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--dir", str(data), "--save", "", "--appendonly", "no"]
    with process(argv, log=tmp / "redis.log"):
        wait_until(lambda: _redis_ping(port), timeout=10, what="redis-server")
        yield port


def _redis_ping(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


@contextmanager
def pushgateway(tmp: Path) -> Iterator[str]:
    """A Pushgateway on a free loopback port; yields its host:port."""
    addr = f"127.0.0.1:{free_port()}"
    # Debian's build persists to /var/lib/prometheus/pushgateway.data by default, a file every
    # Pushgateway on the machine would share: keep this one's groups in memory only.
    argv = [binary("prometheus-pushgateway"), f"--web.listen-address={addr}", "--persistence.file="]
    with process(argv, log=tmp / "pushgateway.log"):
        wait_until(lambda: http_ok(f"http://{addr}/-/ready"), timeout=10, what="pushgateway")
        yield addr


@contextmanager
def prometheus(tmp: Path, config: str) -> Iterator[str]:
    """A Prometheus with `config` on a free loopback port; yields its base URL."""
    addr = f"127.0.0.1:{free_port()}"
    config_file = tmp / "prometheus.yml"
    config_file.write_text(config, encoding="utf-8")
    argv = [
        binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address={addr}",
    ]
    with process(argv, log=tmp / "prometheus.log"):
        wait_until(lambda: http_ok(f"http://{addr}/-/ready"), timeout=20, what="prometheus")
        yield f"http://{addr}"


@contextmanager
def queue_exporter(tmp: Path, broker_url: str) -> Iterator[str]:
    """`python -m monitoring.queue_exporter` reading `broker_url`; yields its host:port."""
    addr = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "TTS_BROKER_URL": broker_url, "TTS_STACK_DIR": str(tmp / "stack")}
    argv = [sys.executable, "-m", "monitoring.queue_exporter", "--address", "127.0.0.1"]
    argv += ["--port", addr.rsplit(":", 1)[1]]
    with process(argv, log=tmp / "queue-exporter.log", env=env) as proc:
        wait_until(lambda: http_ok(f"http://{addr}/metrics"), timeout=15, what="queue exporter")
        yield addr
        assert proc.poll() is None, (tmp / "queue-exporter.log").read_text()
