"""Removing the Pushgateway groups of worker processes that died without cleaning up.

A pool process deletes its own group on a clean exit. One killed by SIGKILL or the OOM killer
cannot: the Celery parent, on the same machine, deletes groups of its node whose pid is no
longer alive. The staleness alert on push_time_seconds covers what this misses (a whole
machine gone).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
from collections.abc import Callable

from prometheus_client.exposition import delete_from_gateway

from core.contract import PUSH_JOB

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_groups(url: str, *, timeout: float = 5.0) -> list[dict[str, str]]:
    """Grouping keys of every tts_worker group the Pushgateway holds."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/metrics", timeout=timeout) as resp:
        payload = json.load(resp)
    groups = []
    for group in payload.get("data", []):
        labels = group.get("labels", {})
        if labels.get("job") == PUSH_JOB:
            groups.append({k: v for k, v in labels.items() if k != "job"})
    return groups


def reap_dead_groups(
    url: str,
    *,
    worker: str,
    is_alive: Callable[[int], bool] = pid_alive,
    keep: frozenset[int] = frozenset(),
) -> list[dict[str, str]]:
    """Delete this node's groups whose process is gone; returns the deleted grouping keys."""
    removed = []
    for key in worker_groups(url):
        if key.get("worker") != worker:
            continue
        try:
            pid = int(key.get("process", ""))
        except ValueError:
            continue
        if pid in keep or is_alive(pid):
            continue
        delete_from_gateway(url, job=PUSH_JOB, grouping_key=key, timeout=5)
        removed.append(key)
    if removed:
        log.info("removed metrics groups of dead processes: %s", [k["process"] for k in removed])
    return removed


class Janitor:
    """Runs reap_dead_groups every `interval` seconds on a daemon thread; never raises."""

    def __init__(self, url: str, *, worker: str, interval: float = 15.0) -> None:
        self._url = url
        self._worker = worker
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tts-metrics-janitor", daemon=True)

    def start(self) -> Janitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def sweep(self) -> None:
        try:
            reap_dead_groups(self._url, worker=self._worker)
        except Exception as exc:
            log.debug("metrics janitor: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sweep()
