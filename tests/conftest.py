"""The integration harness: real Redis, SeaweedFS, Pushgateway, Prometheus and Celery worker
processes, started on loopback ports of their own in a temporary folder and stopped by PID.

- `stack` (session): the servers. Workers are started per test or module by `workers(...)`
  with the settings that test needs, and stopped at its end.
- Each test starts from an empty queue and an empty Redis database (`clean_redis`).
- Waits poll with a deadline (`wait_until`); nothing sleeps and hopes.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from core.settings import Settings
from tests.support.helpers import make_settings

SERVICES = ("redis", "s3", "pushgateway", "prometheus", "queue-exporter")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from devstack.stack import LocalStack, StackLayout, StackPorts

    state = tmp_path_factory.mktemp("stack")
    layout = StackLayout(state, ports=StackPorts.find_free())
    local = LocalStack(layout, base_settings=make_settings(), scrape_interval="1s")
    try:
        local.up(list(SERVICES))
        yield local
    finally:
        local.down()


@pytest.fixture()
def settings(stack: Any) -> Settings:
    """Settings pointing at the test stack; the test starts from an empty Redis database."""
    s: Settings = stack.settings()
    redis.Redis.from_url(s.broker_url).flushdb()
    return s


_NODE_NUMBERS = itertools.count(1)


class Workers:
    """Starts Celery worker nodes on the test stack with given settings; stops them by PID."""

    def __init__(self, stack: Any) -> None:
        self._stack = stack
        self._started: list[tuple[Any, str]] = []

    def start(self, *, concurrency: int = 2, **changes: Any) -> WorkerNode:
        from devstack.stack import LocalStack

        # Unique for the whole session: a node's log file (named after it) is then its own.
        name = f"worker-{os.getpid()}-{next(_NODE_NUMBERS)}"
        node_stack = LocalStack(
            self._stack.layout, base_settings=make_settings(**changes), ready_timeout=120
        )
        status = node_stack.up([name], concurrency=concurrency)[name]
        assert status.pid is not None, status
        self._started.append((node_stack, name))
        return WorkerNode(node_stack, name, status.pid, self._stack.layout.dirs.log_file(name))

    def stop_all(self) -> None:
        for node_stack, name in reversed(self._started):
            node_stack.stop(name)
        self._started.clear()


class WorkerNode:
    def __init__(self, stack: Any, name: str, pid: int, log: Path) -> None:
        self.stack = stack
        self.name = name
        self.pid = pid
        self.log = log

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def stop(self) -> None:
        self.stack.stop(self.name)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def workers(stack: Any) -> Iterator[Workers]:
    pool = Workers(stack)
    try:
        yield pool
    finally:
        pool.stop_all()
