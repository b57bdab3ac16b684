"""A node's metric files: processes that are gone keep their counts in the sum, folded into one
archive per kind so that the files read at each push do not grow with every process ever run.
Each process here is a real child that counts in the folder and exits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from prometheus_client.exposition import generate_latest

from worker import node_metrics

CHILD = """
import sys
from pathlib import Path
from worker import node_metrics
node_metrics.enable(Path(sys.argv[1]))
from worker.push import WorkerMetrics
metrics = WorkerMetrics(engine="fake")
for _ in range(int(sys.argv[2])):
    metrics.outcome("succeeded")
    metrics.task_duration.observe(0.3)
metrics.error("engine_error")
metrics.up.set(1)
"""


def run_child(folder: Path, jobs: int) -> None:
    subprocess.run([sys.executable, "-c", CHILD, str(folder), str(jobs)], check=True, timeout=60)


def exposition(folder: Path) -> dict[str, float]:
    """The node's summed samples, as the parent pushes them."""
    text = generate_latest(node_metrics.node_registry(folder)).decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


GAUGES = ("tts_worker_up", "tts_worker_info", "tts_engine_load_seconds")


def without_gauges(samples: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in samples.items() if not k.startswith(GAUGES)}


def test_dead_processes_are_folded_into_the_archive_and_still_counted(tmp_path: Path) -> None:
    for jobs in (3, 4, 5):
        run_child(tmp_path, jobs)
    before = exposition(tmp_path)
    assert before['tts_tasks_total{status="succeeded"}'] == 12
    assert before['tts_errors_total{reason="engine_error"}'] == 3
    assert before['tts_task_duration_seconds_bucket{le="0.5"}'] == 12
    assert before["tts_task_duration_seconds_count"] == 12
    # Each start folds the processes that went before it (a restarted node does the same).
    assert len(node_metrics.pids_with_files(tmp_path) - {node_metrics.ARCHIVE_PID}) == 1

    folded = node_metrics.forget_dead_processes(tmp_path)
    assert len(folded) == 1
    # Only the archives are left; the sum is the same (the dead processes' gauges are gone).
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_0.db", "histogram_0.db"]
    after = exposition(tmp_path)
    assert without_gauges(after) == without_gauges(before)
    assert not any(k.startswith(GAUGES) for k in after)

    # More processes come and go: folded into the same archive, added to the sum.
    run_child(tmp_path, 2)
    assert node_metrics.forget_dead_processes(tmp_path)
    again = exposition(tmp_path)
    assert again['tts_tasks_total{status="succeeded"}'] == 14
    assert again["tts_task_duration_seconds_count"] == 14
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_0.db", "histogram_0.db"]


def test_a_live_process_is_left_alone(tmp_path: Path) -> None:
    run_child(tmp_path, 1)
    live = tmp_path / "counter_1.db"  # pid 1 is alive (init): never folded
    (tmp_path / f"counter_{node_metrics.pids_with_files(tmp_path).pop()}.db").rename(live)
    assert 1 not in node_metrics.forget_dead_processes(tmp_path)
    assert live.exists()
    assert exposition(tmp_path)['tts_tasks_total{status="succeeded"}'] == 1
