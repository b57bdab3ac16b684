"""Objects that vanish from the bucket after their rows were recorded as done: `verify` finds
them, `verify --repair` makes them again, `fetch` downloads what is there and reports the rest.

The Lua script that forgets a success is tested on its own against the real Redis, and the
whole scenario against real worker processes: objects deleted while the batch runs and after
it ended, a cached row and two rows sharing one job among them. Each test prints what it counted
(run pytest with -s to see it).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import BatchState
from core.delivery import queue_key
from core.errors import InvalidBatch
from core.settings import Settings
from core.storage import AudioStore, StoredObject
from producer.api import Producer
from producer.verify import MissingRow, Vanished, find_vanished
from tests.support.helpers import queue_depth, run_cli, wait_until

pytestmark = pytest.mark.integration

SPEAKER = "英文女"


def _state(settings: Settings, batch_id: str) -> BatchState:
    return BatchState(redis.Redis.from_url(settings.broker_url), batch_id, ttl_seconds=600)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _counts(state: BatchState) -> dict[str, int]:
    """The batch's row counters as stored, zeros left out."""
    raw = state._r.hgetall(state.key("counts"))
    return {_text(k): int(v) for k, v in raw.items() if int(v)}


def _raw(state: BatchState, job_id: str) -> str:
    """A job's result JSON exactly as stored."""
    value = state._r.hget(state.key("results"), job_id)
    assert value is not None
    return _text(value)


def _succeed(state: BatchState, job_id: str, *, status: str = "succeeded") -> str:
    """Record a success as a worker does (with its message); returns the stored JSON."""
    message = {"v": 1, "job_id": job_id, "batch_id": state.batch_id, "text": "Hi."}
    key = f"audio/00/{job_id}.wav"
    state.record(job_id, {"job_id": job_id, "status": status, "key": key, "message": message})
    return _raw(state, job_id)


# -- the Lua script that forgets a success -----------------------------------------------------


def test_forget_removes_a_success_and_its_rows_from_the_counts(settings: Settings) -> None:
    state = _state(settings, "forget")
    state.create()
    # Two rows share job j1 (equal content); j2 has one row, served from another batch's object.
    state.add_rows([("a", "j1"), ("b", "j1"), ("c", "j2")])
    state.claim_sends(["j1", "j2"], sender="p1", lease_seconds=30)
    state.confirm_sends(["j1", "j2"], sender="p1")
    state.start_delivery("j1", send_id="s1", message={})
    seen1, seen2 = _succeed(state, "j1"), _succeed(state, "j2", status="cached")
    assert _counts(state) == {"succeeded": 2, "cached": 1}

    assert state.forget_succeeded("j1", seen1)
    assert state.result("j1") is None
    assert _counts(state) == {"cached": 1}
    # Not sent: a claim can be taken again.
    assert state._r.hget(state.key("sent"), "j1") is None
    assert state._r.hget(state.key("attempts"), "j1") is None  # a full delivery allowance
    assert state.progress().pending == 2

    assert state.forget_succeeded("j2", seen2)
    assert _counts(state) == {}
    # A second forget of what was read once does nothing (no count goes below the truth).
    assert not state.forget_succeeded("j1", seen1)
    assert not state.forget_succeeded("j2", seen2)
    assert state.progress().pending == 3

    # The new run records as any first run does, and counts its rows once.
    assert state.record("j1", {"job_id": "j1", "status": "succeeded", "key": "k"})
    assert _counts(state) == {"succeeded": 2}


def test_forget_keeps_a_result_recorded_since_it_was_read(settings: Settings) -> None:
    state = _state(settings, "forget-race")
    state.create()
    state.add_rows([("a", "j1")])
    seen = _succeed(state, "j1")
    # Meanwhile: another verify forgot it, the job ran again and recorded a new result.
    assert state.forget_succeeded("j1", seen)
    assert state.record("j1", {"job_id": "j1", "status": "succeeded", "key": "k", "attempts": 2})
    newer = _raw(state, "j1")
    assert newer != seen

    assert not state.forget_succeeded("j1", seen)
    assert _raw(state, "j1") == newer
    assert _counts(state) == {"succeeded": 1}


def test_forget_leaves_failures_and_unknown_jobs_alone(settings: Settings) -> None:
    state = _state(settings, "forget-failed")
    state.create()
    state.add_rows([("a", "j1")])
    state.record("j1", {"job_id": "j1", "status": "failed", "reason": "timeout"})
    failed = _raw(state, "j1")
    assert not state.forget_succeeded("j1", failed)
    assert not state.forget_succeeded("nobody", failed)
    assert _counts(state) == {"failed": 1}
    assert state.result("j1") is not None


# -- finding the missing objects, in chunks --------------------------------------------------


class _Bucket:
    """An AudioStore's `head` over a set of keys, counting lookups (tests the walk, not S3)."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.heads: list[str] = []

    def head(self, key: str) -> StoredObject | None:
        self.heads.append(key)
        return StoredObject(key=key, size=1, metadata={}) if key in self.keys else None


def test_find_vanished_walks_rows_in_chunks_and_reports_every_row_of_a_missing_job(
    settings: Settings,
) -> None:
    state = _state(settings, "walk")
    state.create()
    # Rows r0..r6 with jobs; r5 shares j0's job (in a later chunk of 3), r6 is pending.
    pairs = [(f"r{i}", f"j{i}") for i in range(5)] + [("r5", "j0"), ("r6", "j6")]
    state.add_rows(pairs)
    raws = {f"j{i}": _succeed(state, f"j{i}") for i in range(5)}
    bucket = _Bucket({"audio/00/j1.wav", "audio/00/j3.wav", "audio/00/j4.wav"})
    repaired: list[list[str]] = []

    def repair(vanished: Sequence[Vanished]) -> set[str]:
        repaired.append([v.job_id for v in vanished])
        assert all(v.raw == raws[v.job_id] and v.message for v in vanished)
        # Enqueue j0 only: j2 stands for a job that could not be (e.g. recorded without message).
        return {v.job_id for v in vanished if v.job_id == "j0"}

    missing: list[MissingRow] = []
    report = find_vanished(
        state,
        bucket,  # type: ignore[arg-type]
        repair=repair,
        on_missing=missing.append,
        chunk=3,
    )
    assert [(m.row_id, m.job_id, m.repaired) for m in missing] == [
        ("r0", "j0", True),
        ("r2", "j2", False),
        ("r5", "j0", True),
    ]
    assert repaired == [
        ["j0", "j2"]
    ]  # one call per chunk with missing jobs; j0 not looked up twice
    assert bucket.heads.count("audio/00/j0.wav") == 1
    assert (report.checked, report.present, report.missing, report.repaired) == (6, 3, 3, 2)
    assert (report.skipped, report.jobs_enqueued, report.unrepaired) == (1, 1, 1)


def test_repair_enqueues_from_the_kept_message_and_leaves_a_record_without_one(
    settings: Settings,
) -> None:
    # No worker runs: what the repair sends stays in the queue, to be counted.
    state = _state(settings, "repair")
    state.create()
    state.add_rows([("a", "j1"), ("b", "j2")])
    _succeed(state, "j1")
    old = {"job_id": "j2", "status": "succeeded", "key": "audio/00/j2.wav"}  # no message kept
    state.record("j2", old)
    queued = queue_depth(state._r)

    missing: list[MissingRow] = []
    report = Producer(settings).verify(
        "repair",
        repair=True,
        on_missing=missing.append,
        store=_Bucket(set()),  # type: ignore[arg-type]
    )
    assert [(m.row_id, m.repaired) for m in missing] == [("a", True), ("b", False)]
    assert (report.missing, report.repaired, report.unrepaired, report.jobs_enqueued) == (
        2,
        1,
        1,
        1,
    )
    sent_j1, sent_j2 = state._r.hmget(state.key("sent"), ["j1", "j2"])
    assert sent_j1 is not None and sent_j2 is None
    assert state.result("j1") is None and (state.result("j2") or {})["status"] == "succeeded"
    assert queue_depth(state._r) == queued + 1
    body = json.loads(state._r.lindex(queue_key(), 0) or b"{}")
    assert body["headers"]["id"] == "j1"
    assert _counts(state) == {"succeeded": 1}
    with pytest.raises(InvalidBatch, match="no batch"):
        Producer(settings).verify("never-made", store=_Bucket(set()))  # type: ignore[arg-type]


def test_verify_with_s3_unreachable_is_one_line_and_exit_1(settings: Settings) -> None:
    state = _state(settings, "no-s3")
    state.create()
    state.add_rows([(f"r{i}", f"j{i}") for i in range(50)])
    for i in range(50):
        _succeed(state, f"j{i}")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    away = replace(settings, s3_endpoint=f"http://127.0.0.1:{port}")
    proc = run_cli(away, "verify", "no-s3", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""  # nothing reported missing: unknown is not missing
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"tts-batch: error: cannot reach S3 at http://127.0.0.1:{port}: ")
    assert "S3 endpoint unreachable" in line


# -- the whole scenario on real workers and S3 -----------------------------------------------


def _texts(n: int) -> list[str]:
    token = uuid.uuid4().hex[:8]
    return [f"Vanish {token} notice {i}." for i in range(n)]


def _delete(store: AudioStore, key: str) -> None:
    store._client.delete_object(Bucket=store.bucket, Key=key)
    assert store.head(key) is None


def _objects_under(store: AudioStore, key: str) -> list[str]:
    listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix=key)
    return [o["Key"] for o in listed.get("Contents", [])]


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _markers(folder: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in folder.iterdir()]


def test_objects_deleted_mid_batch_and_after_are_found_repaired_and_fetched(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    workers.start(concurrency=2, fake_delay=0.4, fake_marker_dir=str(markers))
    producer = Producer(settings)
    store = AudioStore.from_settings(settings)
    texts = _texts(19)
    # Row r19's text was made by another batch first: in this batch it is `cached`.
    seed = producer.submit_batch([{"id": "s", "text": texts[18], "speaker": SPEAKER}])
    assert seed.wait(timeout=60)[0].status == "succeeded"
    # r0..r17 distinct; r18 repeats r1 (one job serves both rows); r19 the cached one.
    bodies = [*texts[:18], texts[1], texts[18]]
    rows = [{"id": f"r{i}", "text": t, "speaker": SPEAKER} for i, t in enumerate(bodies)]
    batch = producer.submit_batch(rows, batch_id="vanish")
    assert batch.report.jobs_sent == 19

    # Mid-batch: delete the objects of three rows already succeeded while others still run.
    def done_rows() -> list[Any]:
        ok = [r for r in batch.results() if r.ok and r.row_id not in ("r1", "r18", "r19")]
        return ok if len(ok) >= 4 else []

    early = wait_until(done_rows, timeout=60, interval=0.05, what="4 rows succeeded")[:3]
    for result in early:
        _delete(store, str(result.key))
    progress = batch.progress()
    assert progress.pending > 0, "the deletions must land while the batch runs"
    print(
        f"\n[vanish] deleted {len(early)} objects mid-batch with {progress.succeeded} of "
        f"{progress.total} rows done"
    )
    results = {r.row_id: r for r in batch.wait(timeout=90)}
    assert results["r19"].status == "cached" and results["r18"].job_id == results["r1"].job_id
    assert {r.status for r in results.values()} <= {"succeeded", "cached"}
    # After the end: the shared job's object (2 rows), the cached row's and one more.
    late_ids = ["r1", "r19", next(i for i in ("r16", "r17") if i not in {r.row_id for r in early})]
    for row_id in late_ids:
        _delete(store, str(results[row_id].key))
    missing_ids = sorted({r.row_id for r in early} | set(late_ids) | {"r18"})
    present_ids = sorted(results.keys() - set(missing_ids))
    synthesized_before = len(_markers(markers))

    # verify: exactly the missing rows, exit 1.
    verified = run_cli(settings, "verify", "vanish")
    assert verified.returncode == 1, verified.stderr
    lines = _json_lines(verified.stdout)
    assert sorted(line["id"] for line in lines) == missing_ids
    assert all(line["key"] == results[line["id"]].key and not line["repaired"] for line in lines)
    assert (
        f"checked=20 present={len(present_ids)} missing={len(missing_ids)} repaired=0"
        in verified.stderr
    )
    print(f"[vanish] verify: {verified.stderr.strip().splitlines()[0]}")

    # fetch: everything present is downloaded, the missing rows are listed, exit 1.
    out = tmp_path / "first"
    fetched = run_cli(settings, "fetch", "vanish", "--to", str(out))
    assert fetched.returncode == 1, fetched.stderr
    assert sorted(p.stem for p in out.iterdir()) == present_ids
    assert sorted(line["id"] for line in _json_lines(fetched.stdout)) == missing_ids
    summary = fetched.stdout.strip().splitlines()[-1]
    assert f"{len(present_ids)} files in" in summary
    assert f"{len(missing_ids)} objects missing" in summary
    print(f"[vanish] fetch: {summary}")

    # verify --repair: every missing job is enqueued again (6 jobs for 7 rows), exit 0.
    started = time.monotonic()
    repaired = run_cli(settings, "verify", "vanish", "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert sorted(line["id"] for line in _json_lines(repaired.stdout)) == missing_ids
    assert all(line["repaired"] for line in _json_lines(repaired.stdout))
    assert f"missing={len(missing_ids)} repaired={len(missing_ids)}" in repaired.stderr
    assert "6 jobs enqueued again" in repaired.stderr
    print(f"[vanish] repair: {repaired.stderr.strip().splitlines()[0]}")

    after = {r.row_id: r for r in Producer(settings).batch("vanish").wait(timeout=90)}
    took = time.monotonic() - started
    progress = batch.progress()
    assert (progress.total, progress.succeeded, progress.failed) == (20, 20, 0)
    # Made anew from the speech masters, which are still stored (masters/): no synthesis; the
    # records say each repaired job succeeded.
    synthesized = len(_markers(markers)) - synthesized_before
    assert synthesized == 0
    assert {after[i].status for i in missing_ids} == {"succeeded"}
    assert all(after[i].key == results[i].key for i in results)
    # The cached row was made anew too: every row now counts as succeeded, once.
    assert _counts(_state(settings, "vanish")) == {"succeeded": 20}
    print(
        f"[vanish] repaired batch done {took:.1f} s after verify --repair; "
        f"{synthesized} syntheses; counts {_counts(_state(settings, 'vanish'))}"
    )

    again = run_cli(settings, "verify", "vanish")
    assert again.returncode == 0, again.stderr
    assert _json_lines(again.stdout) == []
    assert "checked=20 present=20 missing=0 repaired=0" in again.stderr

    out = tmp_path / "second"
    complete = run_cli(settings, "fetch", "vanish", "--to", str(out))
    assert complete.returncode == 0, complete.stderr
    assert sorted(p.stem for p in out.iterdir()) == sorted(results)
    print(f"[vanish] fetch after repair: {complete.stdout.strip().splitlines()[-1]}")
    for key in {r.key for r in after.values()}:
        assert key is not None and _objects_under(store, key) == [key]


# -- speed ----------------------------------------------------------------------------------


def test_verify_of_10k_rows_is_fast_enough(settings: Settings) -> None:
    rows = 10_000
    state = _state(settings, "verify-10k")
    state.create()
    store = AudioStore.from_settings(settings)
    token = uuid.uuid4().hex
    jobs = [f"{token[:8]}-{i}" for i in range(rows)]
    state.add_rows([(f"r{i}", j) for i, j in enumerate(jobs)])
    pipe = state._r.pipeline(transaction=False)
    for job_id in jobs:
        record = {"job_id": job_id, "status": "succeeded", "key": f"audio/vv/{job_id}.wav"}
        pipe.hset(state.key("results"), job_id, json.dumps(record))
    pipe.execute()
    # One row in ten still has its object.
    kept = jobs[::10]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda j: store.put(f"audio/vv/{j}.wav", b"x", fmt="wav", metadata={}), kept))

    started = time.monotonic()
    report = find_vanished(state, store)
    took = time.monotonic() - started
    print(f"\n[verify 10k] {rows} rows checked in {took:.1f} s ({rows / took:.0f} rows/s)")
    assert (report.checked, report.present, report.missing) == (rows, len(kept), rows - len(kept))
    assert took < 60
