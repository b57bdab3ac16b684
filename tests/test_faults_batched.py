"""Fault tests in batched mode: one worker process (Celery's threads pool) holds B jobs at once
and runs them together. The fake engine stands in for a batching engine (`max_batch` = B: every
job in hand is inside it at the same time, each sleeping `fake_delay`).

- SIGKILL of the process holding B jobs mid-synthesis: every job in hand comes back after the
  visibility timeout and lands exactly once.
- SIGTERM with B jobs in hand: each is finished and acked; what was never taken stays queued.
- A job past its deadline fails with reason `timeout` while its batch-mates succeed.

Real Redis, S3, Pushgateway and Celery processes (tests/conftest.py); run with -s to see what
each test counted.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from core.delivery import job_deadline_seconds
from core.settings import Settings
from core.storage import AudioStore
from devstack.procs import is_alive
from producer.api import BatchHandle
from tests.support.helpers import pushgateway_samples, queue_depth, run_cli, wait_until
from tests.test_faults import (
    assert_valid_object,
    attempts,
    counts,
    job_of,
    marker_dir,
    read_markers,
    submit,
    texts,
    wait_for_lost_jobs,
)

pytestmark = pytest.mark.integration

BATCH = 4
# Test-sized limits that Settings.from_env accepts with a batch of 4: the longest job holds its
# message 4 x 4 s (deadline) + 1 s (grace), the longest retry wait 1.2 s; both under 20 s.
BATCHED: dict[str, Any] = {
    "engine_batch": BATCH,
    "visibility_timeout": 20,
    "task_time_base_seconds": 4.0,
    "task_time_per_char_seconds": 0.0,
    "task_time_grace_seconds": 1.0,
}


def in_hand(markers: Path, n: int) -> list[Any]:
    """Wait until `n` syntheses have started; they are the jobs in hand."""
    found: list[Any] = wait_until(
        lambda: (m := read_markers(markers)) and len(m) >= n and m,
        timeout=30,
        what=f"{n} jobs inside the engine",
    )
    return found


def queued(settings: Settings) -> int:
    return int(queue_depth(redis.Redis.from_url(settings.broker_url)))


def test_sigkill_of_a_batched_process_redelivers_every_job_in_hand_once(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node_a = workers.start(fake_delay=5.0, fake_marker_dir=str(markers), **BATCHED)
    bodies = texts(BATCH + 2, "Batch kill")
    batch = submit(settings, bodies, batch_id="batch-kill", **BATCHED)

    lost = in_hand(markers, BATCH)
    # One process holds the whole batch, and prefetch is exactly B: the rest wait in Redis.
    assert {m.pid for m in lost} == {node_a.pid}
    assert queued(settings) == len(bodies) - BATCH
    assert batch.progress().succeeded == 0
    node_a.stack.kill(node_a.name, group=True)
    wait_until(lambda: not is_alive(node_a.pid), timeout=10, what="node A gone")

    node_b = workers.start(fake_delay=0.2, fake_marker_dir=str(markers), **BATCHED)
    back_after = wait_for_lost_jobs(settings, batch, lost, timeout=90)
    results = list(batch.results())
    delays = sorted(back_after.values())
    tries = attempts(settings, "batch-kill")
    print(
        f"\n[batched kill] SIGKILLed node A (pid {node_a.pid}) holding {len(lost)} jobs inside "
        f"the engine; they finished on node B {delays} s after their lost start (visibility "
        f"timeout {BATCHED['visibility_timeout']} s); deliveries {sorted(tries.values())}; "
        f"counts {counts(settings, 'batch-kill')}; node B {node_b.hostname}"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert all(
        BATCHED["visibility_timeout"] <= d < BATCHED["visibility_timeout"] + 15 for d in delays
    )
    assert all(tries[j] == 2 for j in back_after)
    assert sorted(tries.values()) == [1] * (len(bodies) - BATCH) + [2] * BATCH
    assert counts(settings, "batch-kill") == {"succeeded": len(bodies)}
    store = AudioStore.from_settings(settings)
    for result, text in zip(sorted(results, key=lambda r: r.row_id), bodies, strict=True):
        assert_valid_object(store, result, text)


def test_sigterm_finishes_every_job_a_batched_process_holds(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node = workers.start(fake_delay=3.0, fake_marker_dir=str(markers), **BATCHED)
    bodies = texts(BATCH + 2, "Batch shutdown")
    batch = submit(settings, bodies, batch_id="batch-shutdown", **BATCHED)
    held = in_hand(markers, BATCH)
    started = time.monotonic()
    node.stop()  # SIGTERM to the process: a warm shutdown
    stop_seconds = time.monotonic() - started
    done = [r for r in batch.results() if r.status != "pending"]
    left_in_queue = queued(settings)

    workers.start(fake_marker_dir=str(markers), **BATCHED)
    results = batch.wait(timeout=60)
    starts = read_markers(markers)
    print(
        f"\n[batched shutdown] SIGTERM with {len(held)} jobs in hand: the node stopped in "
        f"{stop_seconds:.1f} s having finished {sorted(r.row_id for r in done)}; "
        f"{left_in_queue} jobs still queued; a new node ran them: outcomes "
        f"{[r.status for r in results]}, synthesis starts {len(starts)}, counts "
        f"{counts(settings, 'batch-shutdown')}"
    )
    assert sorted(r.row_id for r in done) == sorted(job_row(batch, m.text) for m in held)
    assert {r.status for r in done} == {"succeeded"}
    assert left_in_queue == len(bodies) - BATCH
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert len(starts) == len(bodies)
    assert counts(settings, "batch-shutdown") == {"succeeded": len(bodies)}


def job_row(batch: BatchHandle, text: str) -> str:
    job_id = job_of(batch, text)
    return next(r.row_id for r in batch.results() if r.job_id == job_id)


def test_a_job_past_its_deadline_times_out_while_its_batch_mates_finish(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    # Deadlines follow the text: 4 x 0.02 s per character. The fake engine takes 2 s for any
    # text, so a ~20-character job (1.6 s) times out and ~60-character ones (4.8 s) do not.
    limits: dict[str, Any] = {
        "engine_batch": BATCH,
        "max_chars": 80,
        "task_time_base_seconds": 0.0,
        "task_time_per_char_seconds": 0.02,
        "task_time_grace_seconds": 1.0,
    }
    markers = marker_dir(tmp_path)
    node = workers.start(fake_delay=2.0, fake_marker_dir=str(markers), **limits)
    token = uuid.uuid4().hex[:8]
    late = f"Late {token}."
    on_time = [f"On time {token} {i}: the doors close, mind the gap please." for i in range(3)]
    worker_settings = Settings.from_env({**settings.to_env(), **_env(limits)})
    assert job_deadline_seconds(worker_settings, len(late)) < 2.0
    assert all(job_deadline_seconds(worker_settings, len(t)) > 3.0 for t in on_time)

    producer_rows = [late, *on_time]
    batch = submit(settings, producer_rows, batch_id="batch-deadline", **limits)
    results = {r.row_id: r for r in batch.wait(timeout=60)}
    starts = read_markers(markers)
    failed = run_cli(settings, "failed", "batch-deadline")
    listed = [json.loads(line) for line in failed.stdout.splitlines() if line.startswith("{")]
    timeouts = wait_until(
        lambda: sum(
            v
            for labels, v in pushgateway_samples(settings.pushgateway_url, "tts_errors_total")
            if labels.get("worker") == node.hostname and labels.get("reason") == "timeout"
        ),
        timeout=30,
        what="tts_errors_total{reason=timeout} on the Pushgateway",
    )
    spread = max(m.started for m in starts) - min(m.started for m in starts)
    print(
        f"\n[batched deadline] 4 jobs inside the engine together (starts within {spread:.2f} s,"
        f" pids {sorted({m.pid for m in starts})}); outcomes "
        f"{[(k, r.status, r.reason) for k, r in sorted(results.items())]}; `tts-batch failed` "
        f"listed {[(e['id'], e['reason']) for e in listed]}; "
        f"tts_errors_total{{reason=timeout}} = {timeouts:.0f}"
    )
    # The four ran as one batch in one process.
    assert len(starts) == BATCH and {m.pid for m in starts} == {node.pid} and spread < 1.0
    assert (results["r0"].status, results["r0"].reason) == ("failed", "timeout")
    assert [results[f"r{i}"].status for i in (1, 2, 3)] == ["succeeded"] * 3
    assert [(e["id"], e["reason"]) for e in listed] == [("r0", "timeout")]
    assert timeouts == 1
    assert counts(settings, "batch-deadline") == {"failed": 1, "succeeded": 3}


def _env(changes: dict[str, Any]) -> dict[str, str]:
    return {f"TTS_{k.upper()}": str(v) for k, v in changes.items()}
