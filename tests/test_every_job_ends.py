"""Every job ends as an object or a recorded failure, whatever ends its process: a pool process
frozen past the hard time limit, a pool process SIGKILLed at each step of the pipeline, a
job whose message vanished with its process (the reconciler), and dead nodes' jobs returned
by `tts-batch recover` instead of after the visibility timeout.

Same harness and helpers as tests/test_faults.py; each test prints what it counted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from core.contract import SUCCESS_STATUSES
from core.settings import Settings
from core.storage import AudioStore
from devstack.procs import is_alive
from tests.support.helpers import pushgateway_samples, run_cli, wait_until
from tests.test_faults import (
    assert_valid_object,
    attempts,
    counts,
    marker_dir,
    parent_of,
    read_markers,
    submit,
    texts,
)

pytestmark = pytest.mark.integration

# Test-sized limits: soft 3 s, hard 5 s; the visibility timeout is derived (far above).
SHORT_LIMITS: dict[str, Any] = {
    "task_time_base_seconds": 3.0,
    "task_time_per_char_seconds": 0.0,
    "task_time_grace_seconds": 2.0,
}


def failed_rows(settings: Settings, batch_id: str) -> list[dict[str, Any]]:
    out = run_cli(settings, "failed", batch_id)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def error_count(settings: Settings, worker: str, reason: str) -> float:
    return sum(
        value
        for labels, value in pushgateway_samples(settings.pushgateway_url, "tts_errors_total")
        if labels.get("worker") == worker and labels.get("reason") == reason
    )


# -- 1. frozen past the hard time limit --------------------------------------------------------


def test_a_pool_process_frozen_past_the_hard_limit_ends_as_a_recorded_timeout(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node = workers.start(
        concurrency=1, fake_delay=1.0, fake_marker_dir=str(markers), **SHORT_LIMITS
    )
    frozen_text, *fine = texts(3, "Frozen")
    batch = submit(settings, [frozen_text, *fine], batch_id="frozen", **SHORT_LIMITS)

    (start,) = wait_until(
        lambda: read_markers(markers, text=frozen_text), timeout=30, what="the synthesis start"
    )
    # Frozen inside the engine: it cannot act on the soft limit (as in a native call that never
    # returns). Celery's parent kills it at the hard limit.
    os.kill(start.pid, signal.SIGSTOP)
    frozen_at = time.time()
    results = {r.row_id: r for r in batch.wait(timeout=60)}
    ended_after = time.time() - frozen_at
    listed = failed_rows(settings, "frozen")
    print(
        f"\n[frozen] SIGSTOPped pool pid {start.pid} inside its synthesis; the batch ended "
        f"{ended_after:.1f} s later: r0 {results['r0'].status}/{results['r0'].reason} "
        f"({results['r0'].error}); others {[results[r].status for r in ('r1', 'r2')]}; "
        f"counts {counts(settings, 'frozen')}; `failed` listed "
        f"{[(e['id'], e['reason']) for e in listed]}"
    )
    assert not is_alive(start.pid), "Celery kills the frozen process at the hard limit"
    assert (results["r0"].status, results["r0"].reason) == ("failed", "timeout")
    assert [results[r].status for r in ("r1", "r2")] == ["succeeded", "succeeded"]
    assert counts(settings, "frozen") == {"failed": 1, "succeeded": 2}
    assert [(e["id"], e["reason"]) for e in listed] == [("r0", "timeout")]
    wait_until(
        lambda: error_count(settings, node.hostname, "timeout") == 1,
        timeout=20,
        what="the timeout counted once on the node",
    )

    # `retry` runs it again; nothing freezes it this time.
    retried = run_cli(settings, "retry", "frozen")
    assert retried.returncode == 0, retried.stderr
    results = {r.row_id: r for r in batch.wait(timeout=60)}
    assert results["r0"].status == "succeeded"
    assert counts(settings, "frozen") == {"failed": 0, "succeeded": 3}
    assert_valid_object(AudioStore.from_settings(settings), results["r0"], frozen_text)


# -- 2. SIGKILL at each step of the pipeline ---------------------------------------------------


@pytest.mark.parametrize("step", ["lookup", "synthesis", "record"])
def test_a_pool_process_killed_at_any_step_leaves_its_job_recorded_once(
    settings: Settings, workers: Any, tmp_path: Path, step: str
) -> None:
    markers = marker_dir(tmp_path)
    if step == "synthesis":
        knobs: dict[str, Any] = {"fake_delay": 2.0, "fake_marker_dir": str(markers)}
    else:
        knobs = {"fault_point_dir": str(markers), "fault_point_pause": 2.0}
    node = workers.start(concurrency=1, **knobs)
    (text,) = texts(1, f"Kill at {step}")
    batch_id = f"kill-at-{step}"
    batch = submit(settings, [text], batch_id=batch_id)

    def first_at_step() -> list[int]:
        if step == "synthesis":
            return [m.pid for m in read_markers(markers)]
        return [int(p.name.split("-")[1]) for p in markers.glob(f"{step}-*")]

    (pid,) = wait_until(first_at_step, timeout=30, what=f"a pool process at {step}")[:1]
    assert parent_of(pid) == node.pid
    os.kill(pid, signal.SIGKILL)
    (result,) = batch.wait(timeout=60)
    deliveries = attempts(settings, batch_id)[result.job_id]
    print(
        f"\n[kill at {step}] SIGKILLed pool pid {pid}; outcome {result.status} after "
        f"{deliveries} deliveries; counts {counts(settings, batch_id)}"
    )
    assert result.status in SUCCESS_STATUSES, result
    assert deliveries == 2
    assert sum(counts(settings, batch_id).values()) == 1
    assert_valid_object(AudioStore.from_settings(settings), result, text)


# -- 3. a message that vanished: the reconciler ------------------------------------------------


def test_a_started_job_whose_message_vanished_is_recorded_by_the_reconciler(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node_a = workers.start(concurrency=1, fake_delay=60.0, fake_marker_dir=str(markers))
    (text,) = texts(1, "Vanished message")
    batch = submit(settings, [text], batch_id="vanished")
    (start,) = wait_until(lambda: read_markers(markers), timeout=30, what="a synthesis start")

    # The broker loses the message (as after an unrecorded ack), then the process dies: no
    # queue entry, no unacked entry, no outcome.
    client = redis.Redis.from_url(settings.broker_url)
    (tag,) = client.hkeys("unacked")
    client.hdel("unacked", tag)
    client.zrem("unacked_index", tag)
    node_a.stack.kill(node_a.name, group=True)
    wait_until(lambda: not is_alive(start.pid), timeout=10, what="node A gone")

    node_b = workers.start(concurrency=1, fake_delay=0.2, reconcile_seconds=1.0)
    started = time.monotonic()
    (result,) = batch.wait(timeout=60)
    took = time.monotonic() - started
    listed = failed_rows(settings, "vanished")
    print(
        f"\n[vanished] message deleted and node A killed mid-job; node B's reconciler recorded "
        f"{result.status}/{result.reason} {took:.1f} s after it started; `failed` listed "
        f"{[(e['id'], e['reason']) for e in listed]}"
    )
    assert (result.status, result.reason) == ("failed", "worker_lost")
    assert [(e["id"], e["reason"]) for e in listed] == [("r0", "worker_lost")]
    assert counts(settings, "vanished") == {"failed": 1}

    retried = run_cli(settings, "retry", "vanished")
    assert retried.returncode == 0, retried.stderr
    (result,) = batch.wait(timeout=60)
    assert result.status == "succeeded"
    assert counts(settings, "vanished") == {"failed": 0, "succeeded": 1}
    assert_valid_object(AudioStore.from_settings(settings), result, text)
    node_b.stop()


# -- 4. `tts-batch recover` ---------------------------------------------------------------------


def test_recover_returns_a_dead_nodes_jobs_at_once_and_refuses_a_live_node(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node_a = workers.start(concurrency=2, fake_delay=30.0, fake_marker_dir=str(markers))
    bodies = texts(4, "Recover")
    batch = submit(settings, bodies, batch_id="recover")
    in_flight = wait_until(
        lambda: (m := read_markers(markers)) and len(m) == 2 and m,
        timeout=30,
        what="both pool processes inside a synthesis",
    )
    refused = run_cli(settings, "recover", node_a.hostname, "--min-age", "0")
    assert refused.returncode == 2, refused
    assert "alive" in refused.stderr and "Traceback" not in refused.stderr

    node_a.stack.kill(node_a.name, group=True)
    wait_until(
        lambda: not any(is_alive(p) for p in [node_a.pid, *(m.pid for m in in_flight)]),
        timeout=10,
        what="node A gone",
    )
    node_b = workers.start(concurrency=2, fake_delay=0.2)
    # Node B takes the two jobs still queued; the two node A held are unacked, for the
    # visibility timeout (derived: over an hour) unless recovered.
    wait_until(lambda: batch.progress().succeeded == 2, timeout=30, what="the 2 queued jobs")
    recovered_at = time.monotonic()
    out = run_cli(settings, "recover", node_a.hostname, "--min-age", "0")
    assert out.returncode == 0, out.stderr
    batch.wait(timeout=60)
    took = time.monotonic() - recovered_at
    results = list(batch.results())
    print(
        f"\n[recover] `{out.stdout.strip()}`; the batch ended {took:.1f} s after recover; "
        f"outcomes {[r.status for r in results]}; deliveries "
        f"{sorted(attempts(settings, 'recover').values())}"
    )
    assert "returned 2 in-flight jobs" in out.stdout
    assert [r.status for r in results] == ["succeeded"] * 4
    assert counts(settings, "recover") == {"succeeded": 4}
    assert sorted(attempts(settings, "recover").values()) == [1, 1, 2, 2]
    store = AudioStore.from_settings(settings)
    for result, text in zip(results, bodies, strict=True):
        assert_valid_object(store, result, text)
    node_b.stop()


# -- 5. the whole local stack SIGKILLed, then `up` ---------------------------------------------


def test_a_crashed_local_stack_finishes_its_batch_within_two_minutes_of_up(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    from devstack.stack import LocalStack, StackLayout, StackPorts
    from producer.recovery import start_stack
    from tests.support.helpers import make_settings

    markers = marker_dir(tmp_path)
    layout = StackLayout(tmp_path_factory.mktemp("crash"), ports=StackPorts.find_free())
    # The visibility timeout is the derived default (68 min): only the recovery in `up` can
    # bring the lost jobs back within the test.
    stack = LocalStack(
        layout,
        base_settings=make_settings(fake_delay=0.5, fake_marker_dir=str(markers)),
        ready_timeout=120,
    )
    names = ["redis", "s3", "pushgateway", "worker-1"]
    try:
        start_stack(stack, names, concurrency=2)
        settings = stack.settings()
        assert settings.visibility_timeout_seconds > 3000
        bodies = texts(30, "Crash")
        batch = submit(settings, bodies, batch_id="crash")
        wait_until(lambda: batch.progress().succeeded >= 6, timeout=60, what="6 jobs done")
        # Everything at once, mid-batch: the worker (parent and pool), Redis and S3.
        done_at_kill = batch.progress().succeeded
        pids = [m.pid for m in read_markers(markers)]
        pids.append(stack.kill("worker-1", group=True))
        pids += [stack.kill("redis"), stack.kill("s3")]
        wait_until(lambda: not any(is_alive(p) for p in pids), timeout=10, what="all gone")
        client = redis.Redis.from_url(settings.broker_url)
        restarted = time.monotonic()
        _, report = start_stack(stack, names, concurrency=2)
        assert report is not None
        held = len(report.restored)
        batch.wait(timeout=120)
        took = time.monotonic() - restarted
        results = list(batch.results())
        store = AudioStore.from_settings(settings)
        # The audio (the batch's manifest object lives beside it, under batches/).
        listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix="audio/")
        keys = [o["Key"] for o in listed["Contents"]]
        print(
            f"\n[crash] SIGKILLed the worker, Redis and S3 with "
            f"{done_at_kill} of {len(bodies)} jobs done; `up` returned {held} in-flight jobs; "
            f"the batch ended {took:.1f} s after `up` began; {len(keys)} objects for "
            f"{len(bodies)} texts; counts {counts(settings, 'crash')}; "
            f"unacked left {client.hlen('unacked')}"
        )
        assert took < 120
        assert [r.status for r in results] == ["succeeded"] * len(bodies)
        assert counts(settings, "crash") == {"succeeded": len(bodies)}
        assert sorted(keys) == sorted({str(r.key) for r in results})
        for result, text in zip(results, bodies, strict=True):
            assert_valid_object(store, result, text)
    finally:
        stack.down()
