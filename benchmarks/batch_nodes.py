"""The batch benchmark's worker side: fresh Celery worker nodes per configuration on the
benchmark's own local stack, their peak memory, their pushed metrics, the queue's depth.

Nodes are started through devstack (the same processes `tts-batch up` runs) and stopped by
SIGKILL of their process group: the busy-worker phase leaves long jobs running that nobody
needs to finish, and a warm shutdown would wait for them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import redis

from core.delivery import QUEUE, queue_keys
from core.errors import StackError
from core.settings import Settings
from devstack.services import child_pythonpath
from devstack.stack import LocalStack

# The settings the Celery side of issue 10 adds; passed as environment variables so that the
# benchmark runs unchanged before and after that work is merged.
BATCH_ENV = "TTS_ENGINE_BATCH"
BATCH_WAIT_ENV = "TTS_ENGINE_BATCH_WAIT_MS"
RSS_BUDGET_ENV = "TTS_ENGINE_RSS_BUDGET_MB"
# The engine's metrics of issue 10 (absent before it is merged: their columns stay empty).
SPEECH_TOKENS = "tts_engine_speech_tokens_total"
BATCH_SIZE = "tts_engine_batch_size"
TASKS = "tts_tasks_total"


def batching_available() -> bool:
    """True once the worker knows TTS_ENGINE_BATCH (a field of the settings)."""
    return any(f.name == "engine_batch" for f in fields(Settings))


def node_concurrency(batch: int) -> int:
    """Celery's --concurrency for a node holding `batch` jobs: with batching merged, the threads
    pool runs that many tasks in one process; before, one prefork child (TTS_ENGINE_BATCH has
    no effect then, and B forked engines would only compete for the 2 cores)."""
    return batch if batching_available() else 1


@dataclass
class NodeGroup:
    """The worker nodes of one configuration."""

    stack: LocalStack
    names: list[str]
    pids: list[int]

    @classmethod
    def start(
        cls,
        stack: LocalStack,
        settings: Settings,
        *,
        tag: str,
        processes: int,
        env: Mapping[str, str],
        concurrency: int,
    ) -> NodeGroup:
        """Start `processes` nodes together and wait until each has loaded its engine and
        consumes (the load is outside every measured window)."""
        node_env = {**env, "PYTHONPATH": checkout_pythonpath()}
        node_stack = LocalStack(
            stack.layout, base_settings=settings, extra_env=node_env, ready_timeout=600
        )
        names = [f"worker-batch-{tag}-{i}" for i in range(1, processes + 1)]
        group = cls(node_stack, names, [])
        try:
            statuses = node_stack.up(names, concurrency=concurrency)
        except BaseException:
            group.kill()
            raise
        group.pids = [statuses[name].pid or 0 for name in names]
        return group

    @property
    def hostnames(self) -> list[str]:
        """Celery node names, as the `worker` label of their pushed metrics."""
        host = socket.gethostname()
        return [f"{name}@{host}" for name in self.names]

    def peak_rss_mb(self) -> list[list[float]]:
        """Per node, VmHWM of each of its processes (parent and pool children), in MB."""
        return [[peak_rss_mb(pid) for pid in group_members(pgid)] for pgid in self.pids]

    def reset_peak_rss(self) -> None:
        """Start the nodes' high-water marks afresh: the load (and, on a model's first load,
        the ONNX export) peaks above what serving needs, and is not what B changes."""
        for pgid in self.pids:
            for pid in group_members(pgid):
                reset_peak_rss(pid)

    def kill(self) -> None:
        """SIGKILL each node's process group, then clear its pid file (and reap the leader)."""
        for name in self.names:
            # StackError: not running (never started, or already gone).
            with contextlib.suppress(StackError):
                self.stack.kill(name, signal.SIGKILL, group=True)
            self.stack.stop(name)


def checkout_pythonpath() -> str:
    """This checkout first on the nodes' path. The venv's editable install maps the packages to
    the clone it was installed from: a `celery` started from another worktree would otherwise
    run that clone's worker, not the code being measured."""
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, *child_pythonpath(os.environ)])


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (a node and its pool children)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Set VmHWM back to the current RSS (Linux: "5" into /proc/PID/clear_refs)."""
    with contextlib.suppress(OSError):  # gone, or not ours
        Path(f"/proc/{pid}/clear_refs").write_text("5", encoding="ascii")


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Fields after the command name (in parentheses, may hold spaces): state, ppid, pgrp.
    after = stat.rsplit(")", 1)[-1].split()
    return int(after[2]) if len(after) > 2 else None


def queue_depth(client: redis.Redis) -> int:
    """Messages waiting in the job queue (all priorities): 0 once the nodes took them all."""
    pipe = client.pipeline(transaction=False)
    for key in queue_keys(QUEUE):
        pipe.llen(key)
    return sum(int(n) for n in pipe.execute())


def pushed_samples(pushgateway_url: str, workers: Sequence[str]) -> dict[str, float]:
    """Sample name -> value summed over every group the nodes `workers` pushed."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{pushgateway_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("worker") in workers:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def flush(settings: Settings) -> None:
    """Empty the stack's Redis database: queued and unacknowledged messages of killed nodes
    must not reach the next configuration's nodes."""
    redis.Redis.from_url(settings.broker_url).flushdb()


def cores() -> int:
    return os.cpu_count() or 1
