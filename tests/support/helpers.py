"""Helpers for tests: polling with a deadline, test settings, reading the Pushgateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings


def wait_until(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def make_settings(**changes: Any) -> Settings:
    """Settings for tests: the fake engine unless asked, fast retries, short leases."""
    base = Settings(
        engine="fake",
        retry_base_seconds=0.2,
        max_retries=3,
        lease_seconds=3.0,
        batch_ttl_seconds=3600,
    )
    return replace(base, **changes)


def pushgateway_samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric `name` the Pushgateway holds, with its labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out.append((dict(sample.labels), float(sample.value)))
    return out


def tasks_by_worker(url: str) -> dict[str, float]:
    """tts_tasks_total summed over statuses, per worker node's group."""
    totals: dict[str, float] = {}
    for labels, value in pushgateway_samples(url, "tts_tasks_total"):
        if labels.get("job") == "tts_worker":
            totals[labels["worker"]] = totals.get(labels["worker"], 0.0) + value
    return totals


def run_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`tts-batch ARGS` in a child process whose environment holds `settings`."""
    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for_task_counts(url: str, worker: str, total: float, *, timeout: float = 30) -> float:
    """Poll the Pushgateway until `worker`'s group counts `total` tasks; returns that count."""
    wait_until(
        lambda: tasks_by_worker(url).get(worker) == total,
        timeout=timeout,
        what=f"{total:g} tasks counted for {worker} in the Pushgateway",
    )
    return total


def queue_depth(client: Any) -> int:
    """Messages waiting in the job queue, every priority's list together (core.delivery)."""
    from core.delivery import queue_keys

    pipe = client.pipeline(transaction=False)
    for key in queue_keys():
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def queued_raw(client: Any) -> list[bytes]:
    """The raw messages waiting in the job queue, every priority's list (served first first)."""
    from core.delivery import queue_keys

    return [raw for key in queue_keys() for raw in client.lrange(key, 0, -1)]
