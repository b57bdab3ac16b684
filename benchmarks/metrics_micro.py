"""The metrics benchmark's micro side: CPU time of the metric calls one task makes (in a child
process, counting in files as a worker node does, or in memory), and of one collection and push
by a node's parent over a folder of realistic files.

CPU time, not wall time: time.thread_time() counts this thread only, so other work on the
machine slows the figures less than it slows a stopwatch (it still does, through caches).
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from core.errors import ERROR_REASONS
from worker import node_metrics
from worker.push import BackgroundPusher, WorkerMetrics, grouping_key

# Realistic values, so that each observation walks its histogram's buckets as a real one does.
QUEUE_WAIT = 0.4
LOOKUP = 0.004
INFERENCE = 0.2
UPLOAD = 0.012
TASK = 0.25
AUDIO_SECONDS = 3.1
CHARACTERS = 58
# What a dead process leaves in a node's folder (its live-gauge files are dropped), and pids
# above Linux's largest (2**22), which no process can have.
LEFT_BEHIND = ("counter_", "histogram_")
DEAD_PIDS = 5_000_000


def one_task(metrics: WorkerMetrics, notify: Callable[[], object]) -> None:
    """The metric calls of a new job that succeeds, as worker/tasks.py (`synthesize`, `_run`)
    and worker/pipeline.py (`_lookup` before and under the lease, `_synthesize_and_record`,
    `_record`) make them, with the clock reads that exist only to feed them (each value at
    least a realistic one: the clocks here time nothing)."""
    started = time.perf_counter()
    metrics.queue_wait.observe(QUEUE_WAIT)
    for _ in range(2):  # lookup, then lookup again under the content lease
        t = time.perf_counter()
        metrics.storage.labels(op="lookup").observe(max(LOOKUP, time.perf_counter() - t))
    t = time.perf_counter()
    metrics.synthesized(
        seconds=max(INFERENCE, time.perf_counter() - t),
        audio_seconds=AUDIO_SECONDS,
        characters=CHARACTERS,
    )
    t = time.perf_counter()
    metrics.storage.labels(op="upload").observe(max(UPLOAD, time.perf_counter() - t))
    metrics.outcome("succeeded")
    metrics.task_duration.observe(max(TASK, time.perf_counter() - started))
    notify()


def task_notify() -> None:
    """What the end of a task does to ask for a push (a no-op in a prefork pool process)."""
    from worker import runtime
    from worker.parent import consumer

    current = runtime.pusher()
    if current is not None:
        current.notify()
    else:
        consumer.push_soon()


def _calls_child(folder: str | None, iterations: int, repeats: int) -> dict[str, Any]:
    if folder is not None:
        node_metrics.enable(Path(folder))
    metrics = WorkerMetrics(engine="fake")
    for _ in range(min(iterations, 2000)):  # warm up: files mapped, label children made
        one_task(metrics, task_notify)
    per_task = []
    for _ in range(repeats):
        started = time.thread_time()
        for _ in range(iterations):
            one_task(metrics, task_notify)
        per_task.append((time.thread_time() - started) / iterations)
    return {
        "mode": "files" if node_metrics.enabled_dir() is not None else "memory",
        "median_us": round(statistics.median(per_task) * 1e6, 2),
        "min_us": round(min(per_task) * 1e6, 2),
        "iterations": iterations * repeats,
    }


def metric_calls(*, iterations: int, repeats: int) -> dict[str, dict[str, Any]]:
    """CPU microseconds of one task's metric calls, counting in files and in memory, each in a
    fresh process (prometheus_client picks its value class per process)."""
    spawn = multiprocessing.get_context("spawn")
    out = {}
    with tempfile.TemporaryDirectory(prefix="tts-mbench-calls-") as folder:
        with spawn.Pool(1) as pool:
            out["files"] = pool.apply(_calls_child, (folder, iterations, repeats))
        with spawn.Pool(1) as pool:
            out["memory"] = pool.apply(_calls_child, (None, iterations, repeats))
    return out


def _node_process(folder: str, tasks: int, ready: Any, done: Any) -> None:
    """A pool process of a node: every label in use, `tasks` jobs counted; stays alive (its
    live gauges stay) until `done`."""
    node_metrics.enable(Path(folder))
    metrics = WorkerMetrics(engine="fake")
    metrics.set_info(model="fake-1", version="1", load_seconds=1.5)
    metrics.up.set(1)
    for reason in ERROR_REASONS:
        metrics.error(reason)
        metrics.retry(reason)
    for status in ("succeeded", "failed", "cached"):
        metrics.outcome(status)
    metrics.decode_step(2)
    for _ in range(tasks):
        one_task(metrics, lambda: None)
    ready.put(True)
    done.wait(600)


class NodeFolder:
    """A node's metrics folder written by `processes` live processes (pool and parent alike),
    plus the counter and histogram files that `dead` processes left (pool processes recycled by
    `worker_max_tasks_per_child` or killed, earlier runs of the node): copies of a live one's
    under pids that no process has."""

    def __init__(self, processes: int, *, dead: int = 0, tasks: int = 200) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tts-mbench-node-")
        self.path = Path(self._tmp.name)
        spawn = multiprocessing.get_context("spawn")
        self._done = spawn.Event()
        ready = spawn.Queue()
        self._procs = [
            spawn.Process(target=_node_process, args=(self._tmp.name, tasks, ready, self._done))
            for _ in range(processes)
        ]
        for proc in self._procs:
            proc.start()
        for _ in self._procs:
            ready.get(timeout=120)
        pid = str(self._procs[0].pid)
        left = [f for f in self.path.glob(f"*_{pid}.db") if f.name.startswith(LEFT_BEHIND)]
        for i in range(dead):
            for file in left:
                shutil.copy(file, self.path / file.name.replace(pid, str(DEAD_PIDS + i)))

    def close(self) -> None:
        self._done.set()
        for proc in self._procs:
            proc.join(timeout=30)
        self._tmp.cleanup()

    def __enter__(self) -> NodeFolder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def collect_and_push(
    path: Path, *, url: str, iterations: int, push_seconds: float
) -> dict[str, Any]:
    """One collection and push as a node's parent makes it (dead processes' gauges dropped,
    the folder summed, PUT to `url`), in this thread: CPU per push, and per second at one
    push every `push_seconds`."""
    registry = node_metrics.node_registry(path)
    collect = []
    for _ in range(iterations):
        started = time.thread_time()
        body = generate_latest(registry)
        collect.append(time.thread_time() - started)
    pusher = BackgroundPusher(
        registry,
        url=url,
        grouping_key=grouping_key("metrics-bench@collector"),
        before_push=lambda: node_metrics.forget_dead_processes(path),
        report_cost=True,
    )
    pushes, walls = [], []
    for _ in range(iterations):
        before, wall = pusher.cpu_seconds, time.perf_counter()
        if not pusher.push_now():
            raise RuntimeError(f"the push to {url} failed")
        walls.append(time.perf_counter() - wall)
        pushes.append(pusher.cpu_seconds - before)
    push_ms = statistics.median(pushes) * 1e3
    return {
        "files": len(list(path.glob("*.db"))),
        "body_bytes": len(body),
        "collect_ms": round(statistics.median(collect) * 1e3, 3),
        "push_ms": round(push_ms, 3),
        "push_wall_ms": round(statistics.median(walls) * 1e3, 3),
        "push_seconds": push_seconds,
        "cpu_ms_per_second": round(push_ms / push_seconds, 4),
    }
