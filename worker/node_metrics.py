"""One worker node's metrics, counted across all its processes and pushed as one group.

A node is a Celery parent and its pool processes (prefork), or one process (batched mode).
prometheus_client's multiprocess mode keeps every process's counters and histograms in files
of its own (`<dir>/counter_<pid>.db`, ...) that outlive the process; the parent sums the files
(`MultiProcessCollector`) and pushes the sum under `{job="tts_worker", worker=<node name>}`.
So a pool process that dies (SIGKILL, OOM, `worker_max_tasks_per_child`, a clean exit) takes
none of its counts with it. Its gauges go: before each push the parent drops the live-gauge
files of processes that are gone (`mark_process_dead`).

The directory is `<TTS_METRICS_DIR>/<node name>`. A node restarted under the same name on the
same machine resumes from its files: its counters go on from where they were, even the counts
its processes made after the last push before a crash. (A new name, or a new machine, starts
from zero: a counter reset, which rate() and increase() read as one.)
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client names each file <type>_[<gauge mode>_]<pid>.db.
_PID_OF_FILE = re.compile(r"_(\d+)\.db$")


def default_root() -> Path:
    return Path(tempfile.gettempdir()) / "tts-batch-metrics"


def node_dir(root: str | Path, worker: str) -> Path:
    """The node's own folder under `root` (the node name, made safe for a file name)."""
    return Path(root or default_root()) / re.sub(r"[^A-Za-z0-9@._-]", "_", worker)


def enable(path: Path) -> Path:
    """Count this process's metrics, and those of every process it forks from now on, in files
    under `path`. Call it in the node's parent before any metric exists (Celery's
    `celeryd_after_setup`): a metric made earlier would keep counting in memory only."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(path)
    # prometheus_client picks its value class at import time from the environment; the node's
    # name (and so its folder) is known only later, so the class is switched here.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    forget_dead_processes(path)
    return path


def enabled_dir() -> Path | None:
    """The folder this process counts in, or None when it counts in memory (a test, a
    benchmark, or a process that is not a worker node)."""
    raw = os.environ.get(ENV)
    if not raw or values.ValueClass is values.MutexValue:
        return None
    return Path(raw)


def pids_with_files(path: Path) -> set[int]:
    pids = set()
    for file in path.glob("*.db"):
        match = _PID_OF_FILE.search(file.name)
        if match:
            pids.add(int(match.group(1)))
    return pids


def forget_dead_processes(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that are gone (their counters stay counted)."""
    dead = sorted(pid for pid in pids_with_files(path) if not _alive(pid))
    for pid in dead:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return dead


def node_registry(path: Path) -> CollectorRegistry:
    """A registry whose collection is the sum over every process's files in `path`."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a pool child its parent has not reaped yet) is gone too.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in {"Z", "X"}
