"""Metrics that never lose a count: a worker node pushes one group, the sum of its processes'
files, so pool processes SIGKILLed mid-batch or recycled by `worker_max_tasks_per_child` keep
their counts; a node restarted under its name resumes from its files, even after a SIGKILL of
the whole node before its last push. Checked against the real Pushgateway and Prometheus."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from devstack.procs import is_alive
from producer.api import BatchHandle
from tests.support.helpers import pushgateway_samples, tasks_by_worker, wait_until
from tests.test_faults import marker_dir, parent_of, read_markers, submit, texts

pytestmark = pytest.mark.integration


def node_samples(settings: Settings, name: str, worker: str) -> dict[str, float]:
    """`name`'s samples in the worker's group, by their label values other than job/worker."""
    out = {}
    for labels, value in pushgateway_samples(settings.pushgateway_url, name):
        if labels.get("worker") == worker:
            rest = {k: v for k, v in labels.items() if k not in ("job", "worker", "instance")}
            out[",".join(f"{k}={v}" for k, v in sorted(rest.items()))] = value
    return out


class Killer:
    """SIGKILLs a pool process of `node_pid` inside a synthesis, `times` times, `every` s apart."""

    def __init__(self, markers: Path, node_pid: int, *, times: int, every: float) -> None:
        self._markers = markers
        self._node_pid = node_pid
        self._times = times
        self._every = every
        self.killed: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Killer:
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join(timeout=120)

    def _run(self) -> None:
        while len(self.killed) < self._times:
            time.sleep(self._every)
            # The newest synthesis start of a live pool process of this node.
            for marker in reversed(read_markers(self._markers)):
                if marker.pid in self.killed or not is_alive(marker.pid):
                    continue
                if parent_of(marker.pid) != self._node_pid:
                    continue
                os.kill(marker.pid, signal.SIGKILL)
                self.killed.append(marker.pid)
                break


def query(prom_url: str, promql: str) -> float | None:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def jobs_ended(batch: BatchHandle) -> int:
    progress = batch.progress()
    return progress.succeeded + progress.failed


def test_counts_survive_killed_and_recycled_pool_processes_and_a_restarted_node(
    settings: Settings, stack: Any, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node = workers.start(
        concurrency=2, fake_delay=0.4, fake_marker_dir=str(markers), max_tasks_per_child=4
    )
    prom_url = f"http://{stack.layout.host}:{stack.layout.ports.prometheus}"
    started = time.time()
    bodies = texts(60, "Exact")
    batch = submit(settings, bodies, batch_id="exact")
    killer = Killer(markers, node.pid, times=3, every=2.5).start()
    batch.wait(timeout=240)
    killer.join()
    pids = {m.pid for m in read_markers(markers)}

    # Every job ended (each once), and the node's one group counted each exactly once, the
    # jobs of dead and recycled processes included.
    assert jobs_ended(batch) == len(bodies)
    wait_until(
        lambda: tasks_by_worker(settings.pushgateway_url).get(node.hostname) == len(bodies),
        timeout=15,
        what="the node's group counting every job",
    )
    errors = node_samples(settings, "tts_errors_total", node.hostname)
    # Each kill lost one delivery, counted by the process that ran the job again.
    assert errors["reason=worker_lost"] == len(killer.killed) == 3
    # Prometheus: the last scrape holds the exact total; increase() over the run agrees
    # within its extrapolation to the window's edges.
    exact = f'sum(tts_tasks_total{{job="tts_worker",worker="{node.hostname}"}})'
    wait_until(lambda: query(prom_url, exact) == len(bodies), timeout=15, what="scraped")
    window = int(time.time() - started) + 2
    increase = query(
        prom_url,
        f'sum(increase(tts_tasks_total{{job="tts_worker",worker="{node.hostname}"}}[{window}s]))',
    )
    assert increase is not None
    pushed = tasks_by_worker(settings.pushgateway_url)[node.hostname]
    print(
        f"\n[exact] {len(bodies)} jobs on 2 pool processes (max 4 tasks each), "
        f"{len(pids)} pool pids in all, {len(killer.killed)} SIGKILLed mid-synthesis: "
        f"Pushgateway tts_tasks_total {pushed:.0f}, worker_lost "
        f"{errors['reason=worker_lost']:.0f}; Prometheus last {len(bodies)}, "
        f"increase over {window} s {increase:.1f}"
    )
    assert len(pids) >= 60 // 4  # recycled: each pool process ran at most 4 jobs
    assert 0.9 * len(bodies) <= increase <= 1.5 * len(bodies)

    # The whole node SIGKILLed right after a second batch ends (before its next push, most
    # likely), then started again under its name: it resumes from its files, exactly.
    more = texts(8, "Exact again")
    second = submit(settings, more, batch_id="exact-2")
    second.wait(timeout=60)
    node.stack.kill(node.name, group=True)
    wait_until(lambda: not is_alive(node.pid), timeout=10, what="node gone")
    pushed_before_restart = tasks_by_worker(settings.pushgateway_url)[node.hostname]
    status = node.stack.up([node.name], concurrency=2)[node.name]
    assert status.pid != node.pid
    total = len(bodies) + len(more)
    wait_until(
        lambda: tasks_by_worker(settings.pushgateway_url).get(node.hostname) == total,
        timeout=20,
        what="the restarted node's group resuming at the exact total",
    )
    up = node_samples(settings, "tts_worker_up", node.hostname)
    print(
        f"[exact] node SIGKILLed after {len(more)} more jobs (pushed before the kill: "
        f"{pushed_before_restart:.0f}); restarted under its name: {total} counted"
    )
    assert up == {"": 1.0}


def test_a_node_that_stops_cleanly_keeps_its_group_with_up_0(
    settings: Settings, workers: Any
) -> None:
    node = workers.start(concurrency=2)
    batch = submit(settings, texts(3, "Clean stop"), batch_id="clean-stop")
    batch.wait(timeout=60)
    wait_until(
        lambda: node_samples(settings, "tts_worker_up", node.hostname) == {"": 1.0},
        timeout=15,
        what="the node up",
    )
    node.stop()
    # The last push says the node stopped, and the group keeps its counts: a sum over groups
    # does not drop when a node stops, and the staleness alert leaves it alone.
    assert node_samples(settings, "tts_worker_up", node.hostname) == {"": 0.0}
    assert tasks_by_worker(settings.pushgateway_url)[node.hostname] == 3
