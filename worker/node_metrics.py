"""One worker node's metrics, counted across all its processes and pushed as one group.

A node is a Celery parent and its pool processes (prefork), or one process (batched mode).
prometheus_client's multiprocess mode keeps every process's counters and histograms in files
of its own (`<dir>/counter_<pid>.db`, ...) that outlive the process; the parent sums the files
(`MultiProcessCollector`) and pushes the sum under `{job="tts_worker", worker=<node name>}`.
So a pool process that dies (SIGKILL, OOM, `worker_max_tasks_per_child`, a clean exit) takes
none of its counts with it. Before each push the parent folds the counters and histograms of
processes that are gone into one archive file per kind, and drops their gauges
(`mark_process_dead`): the files read at each push stay as many as the live processes' plus two.

The directory is `<TTS_METRICS_DIR>/<node name>`. A node restarted under the same name on the
same machine resumes from its files: its counters go on from where they were, even the counts
its processes made after the last push before a crash. (A new name, or a new machine, starts
from zero: a counter reset, which rate() and increase() read as one.)
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

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


# The counters and histograms of processes that are gone, merged into one file per kind.
ARCHIVE_PID = 0
_ARCHIVED_KINDS = ("counter", "histogram")


def forget_dead_processes(path: Path) -> list[int]:
    """Fold the counters and histograms of processes that are gone into the node's archive
    files, and drop their live gauges. Without the fold every push would read one more set of
    files per process ever recycled or killed (measured: 52 ms a push with 100 of them)."""
    dead = sorted(p for p in pids_with_files(path) if p != ARCHIVE_PID and not _alive(p))
    if not dead:
        return dead
    for kind in _ARCHIVED_KINDS:
        _archive(path, kind, [path / f"{kind}_{pid}.db" for pid in dead])
    for pid in dead:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return dead


def _archive(path: Path, kind: str, files: list[Path]) -> None:
    """Merge `files` (of dead processes) with `<kind>_0.db` into a new `<kind>_0.db`, then
    delete them. The new archive replaces the old one in one rename, before the files it
    holds are deleted: a parent killed in between would count them twice at its next start,
    never lose them (a window of microseconds, once per dead process)."""
    files = [f for f in files if f.exists()]
    if not files:
        return
    archive = path / f"{kind}_{ARCHIVE_PID}.db"
    sources = [*files, archive] if archive.exists() else files
    merged = MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
        [str(f) for f in sources], accumulate=False
    )
    # Not *.db: the collector must never read a half-written archive.
    staging = path / f".{kind}_{ARCHIVE_PID}.staging"
    staging.unlink(missing_ok=True)
    out = MmapedDict(str(staging))  # type: ignore[no-untyped-call]
    try:
        for metric in merged:
            for sample in metric.samples:
                key = mmap_key(
                    metric.name,
                    sample.name,
                    list(sample.labels),
                    list(sample.labels.values()),
                    metric.documentation,
                )
                out.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
    finally:
        out.close()  # type: ignore[no-untyped-call]
    os.replace(staging, archive)
    for file in files:
        file.unlink(missing_ok=True)


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
