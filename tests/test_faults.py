"""Fault tests on real processes: pool processes and whole worker nodes killed mid-job, S3,
Redis and the Pushgateway stopped mid-batch, a job that keeps killing its worker, two jobs
racing for one content key, and a graceful shutdown with a job in hand.

Each test prints what it did and what it counted (run pytest with -s to see it). Kills are
made to land provably inside a synthesis: the fake engine sleeps `fake_delay` seconds and drops
a marker file `<pid>-<ns>` (holding the text) in `fake_marker_dir` when a synthesis starts.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import soundfile as sf
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.batch_state import BatchState
from core.settings import Settings
from core.storage import AudioStore
from devstack.procs import is_alive
from producer.api import BatchHandle, JobResult, Producer
from tests.support.helpers import (
    pushgateway_samples,
    queue_depth,
    run_cli,
    wait_for_task_counts,
    wait_until,
)

pytestmark = pytest.mark.integration

SPEAKER = "英文女"


@dataclass(frozen=True)
class Marker:
    """One synthesis start, as dropped by the fake engine."""

    pid: int
    started: float
    text: str


def read_markers(folder: Path, *, text: str | None = None) -> list[Marker]:
    """Synthesis starts in `folder`, oldest first (optionally only those of `text`)."""
    out = []
    for path in folder.iterdir():
        pid, _, ns = path.name.partition("-")
        try:
            body = path.read_text(encoding="utf-8")
        except OSError:
            continue
        out.append(Marker(pid=int(pid), started=int(ns) / 1e9, text=body))
    out.sort(key=lambda m: m.started)
    return [m for m in out if text is None or m.text == text]


def marker_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


def texts(n: int, tag: str) -> list[str]:
    """`n` texts never synthesized before in the session's bucket (so nothing is cached)."""
    token = uuid.uuid4().hex[:8]
    return [f"{tag} {token} number {i}." for i in range(n)]


def submit(
    settings: Settings, bodies: list[str], *, batch_id: str, **worker_changes: Any
) -> BatchHandle:
    # The producer derives each job's time limits from its settings: give it the worker's.
    producer = Producer(replace(settings, **worker_changes))
    rows = [{"id": f"r{i}", "text": t, "speaker": SPEAKER} for i, t in enumerate(bodies)]
    return producer.submit_batch(rows, batch_id=batch_id)


def row_of(text: str) -> str:
    """The row id `submit` gave a text made by `texts` (its number, prefixed by r)."""
    return "r" + text.rsplit(" ", 1)[1].rstrip(".")


def job_of(batch: BatchHandle, text: str) -> str:
    return next(r.job_id for r in batch.results() if r.row_id == row_of(text))


def _batch_hash(settings: Settings, batch_id: str, part: str) -> dict[str, int]:
    client = redis.Redis.from_url(settings.broker_url, decode_responses=True)
    raw = client.hgetall(BatchState(client, batch_id, ttl_seconds=60).key(part))
    return {str(k): int(v) for k, v in raw.items()}


def attempts(settings: Settings, batch_id: str) -> dict[str, int]:
    """Deliveries started per job id (the batch's attempts hash)."""
    return _batch_hash(settings, batch_id, "attempts")


def counts(settings: Settings, batch_id: str) -> dict[str, int]:
    """The batch's outcome counters, as stored (each job must be counted once)."""
    return _batch_hash(settings, batch_id, "counts")


def assert_valid_object(store: AudioStore, result: JobResult, text: str) -> None:
    """Exactly one object under the job's key, decodable, of the fake engine's length."""
    assert result.key is not None
    listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix=result.key)
    assert [o["Key"] for o in listed.get("Contents", [])] == [result.key]
    samples, rate = sf.read(io.BytesIO(store.get(result.key)), dtype="float32")
    assert rate == 16000
    # The fake engine's tone lasts 0.3 s + 0.06 s per character: a partial write would not.
    assert abs(len(samples) / rate - (0.3 + 0.06 * len(text))) < 0.01


def wait_on_time(seconds: float) -> None:
    """A deliberate outage: a wait on the clock, with a deadline like every other wait."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, timeout=seconds + 5, interval=0.5)


def wait_for_lost_jobs(
    settings: Settings, batch: BatchHandle, lost: list[Marker], *, timeout: float
) -> dict[str, float]:
    """Wait until the whole batch is done; for each lost job (its synthesis start in `lost`),
    the seconds from that lost start until its result was recorded by another delivery."""
    lost_jobs = {job_of(batch, m.text): m for m in lost}
    came_back: dict[str, float] = {}
    state = BatchState(redis.Redis.from_url(settings.broker_url), batch.batch_id, ttl_seconds=60)

    def all_done() -> bool:
        for job_id in lost_jobs.keys() - came_back.keys():
            if state.result(job_id):
                came_back[job_id] = time.time()
        return batch.progress().done

    wait_until(all_done, timeout=timeout, interval=0.2, what="every job done")
    return {j: round(came_back[j] - lost_jobs[j].started, 1) for j in lost_jobs}


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return int(stat.rsplit(")", 1)[-1].split()[1])


# -- 1. a pool process killed inside a synthesis -----------------------------------------------


def test_pool_process_killed_mid_synthesis_is_redelivered_and_stored_once(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node = workers.start(concurrency=1, fake_delay=3.0, fake_marker_dir=str(markers))
    (text,) = texts(1, "Pool kill")
    batch = submit(settings, [text], batch_id="pool-kill")

    first = wait_until(lambda: read_markers(markers), timeout=30, what="a synthesis start")[0]
    # The kill lands mid-job: a pool child of this node is inside the engine, nothing recorded.
    assert parent_of(first.pid) == node.pid
    assert batch.progress().succeeded == 0
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.time()

    (result,) = batch.wait(timeout=60)
    starts = read_markers(markers)
    delivered = attempts(settings, "pool-kill")[result.job_id]
    print(
        f"\n[pool kill] killed pool pid {first.pid} {killed_at - first.started:.2f} s into its "
        f"synthesis; deliveries={delivered}, synthesis starts={len(starts)} "
        f"(pids {[m.pid for m in starts]}), outcome={result.status}, counts="
        f"{counts(settings, 'pool-kill')}"
    )
    assert result.status == "succeeded", result
    assert delivered >= 2 and len(starts) >= 2
    assert starts[-1].pid != first.pid
    assert counts(settings, "pool-kill") == {"succeeded": 1}
    assert_valid_object(AudioStore.from_settings(settings), result, text)


# -- 2. a whole worker node killed -------------------------------------------------------------


def test_killed_worker_node_jobs_come_back_after_the_visibility_timeout(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    visibility = 10
    # Coherent test-sized limits: the longest job (6 + 1 s) and retry wait (1.2 s) stay below
    # the visibility timeout, as Settings.from_env insists.
    limits: dict[str, Any] = {
        "visibility_timeout": visibility,
        "task_time_base_seconds": 6.0,
        "task_time_per_char_seconds": 0.0,
        "task_time_grace_seconds": 1.0,
    }
    markers = marker_dir(tmp_path)
    node_a = workers.start(concurrency=2, fake_delay=5.0, fake_marker_dir=str(markers), **limits)
    bodies = texts(6, "Node kill")
    batch = submit(settings, bodies, batch_id="node-kill", **limits)

    in_flight = wait_until(
        lambda: (m := read_markers(markers)) and len(m) == 2 and m,
        timeout=30,
        what="both pool processes inside a synthesis",
    )
    children = [m.pid for m in in_flight]
    assert all(parent_of(pid) == node_a.pid for pid in children)
    # The parent and its pool, all at once: nobody is left to reject or re-queue anything.
    node_a.stack.kill(node_a.name, group=True)
    wait_until(
        lambda: not any(is_alive(p) for p in [node_a.pid, *children]),
        timeout=10,
        what="node A gone",
    )
    assert batch.progress().succeeded == 0

    node_b = workers.start(concurrency=2, fake_delay=0.2, fake_marker_dir=str(markers), **limits)
    delays = wait_for_lost_jobs(settings, batch, in_flight, timeout=60)
    results = list(batch.results())
    counted = wait_for_task_counts(
        settings.pushgateway_url, node_b.hostname, len(bodies), timeout=30
    )
    tries = attempts(settings, "node-kill")
    print(
        f"\n[node kill] SIGKILLed node A (pid {node_a.pid}) and its pool {children} mid-synthesis;"
        f"\n  {len(delays)} jobs in flight finished on node B {sorted(delays.values())} s after "
        f"their lost start (visibility timeout {visibility} s);"
        f" deliveries {sorted(tries.values())};"
        f" outcomes {[r.status for r in results]}; counts {counts(settings, 'node-kill')};"
        f" node B tts_tasks_total {counted:.0f}"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    # Not before the timeout; and soon after it (kombu's default sweep would take ~100 s).
    assert all(visibility <= delay < visibility + 10 for delay in delays.values())
    assert all(tries[j] == 2 for j in delays)
    assert counts(settings, "node-kill") == {"succeeded": len(bodies)}
    progress = batch.progress()
    assert (progress.total, progress.succeeded, progress.failed) == (len(bodies), len(bodies), 0)


# -- 3. a job that keeps killing its worker ----------------------------------------------------


class Assassin:
    """Kills, from a thread, every process that starts synthesizing `text`."""

    def __init__(self, folder: Path, text: str) -> None:
        self._folder = folder
        self._text = text
        self._stop = threading.Event()
        self.killed: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Assassin:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        seen: set[tuple[int, float]] = set()
        while not self._stop.wait(0.05):
            for marker in read_markers(self._folder, text=self._text):
                if (marker.pid, marker.started) in seen:
                    continue
                seen.add((marker.pid, marker.started))
                try:
                    os.kill(marker.pid, signal.SIGKILL)
                    self.killed.append(marker.pid)
                except ProcessLookupError:
                    pass


def test_a_job_that_keeps_killing_its_worker_is_dead_lettered(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    redeliveries = 2
    workers.start(
        concurrency=1,
        fake_delay=2.0,
        fake_marker_dir=str(markers),
        max_redeliveries=redeliveries,
    )
    poison, *fine = texts(3, "Poison")
    batch = submit(settings, [poison, *fine], batch_id="poison")
    with Assassin(markers, poison) as assassin:
        results = batch.wait(timeout=90)
    by_row = {r.row_id: r for r in results}
    dead = by_row["r0"]
    failed = run_cli(settings, "failed", "poison")
    listed = [json.loads(line) for line in failed.stdout.splitlines() if line.startswith("{")]
    print(
        f"\n[poison] killed {len(assassin.killed)} pool processes that started the poison text;"
        f" outcome {dead.status}/{dead.reason} after {dead.attempts} deliveries; other rows "
        f"{[by_row[r].status for r in ('r1', 'r2')]}; `tts-batch failed` listed {listed}"
    )
    assert (dead.status, dead.reason) == ("failed", "worker_lost")
    # Deliveries 1..N+1 were killed; delivery N+2 saw N+1 losses and dead-lettered it.
    assert len(assassin.killed) == redeliveries + 1
    assert dead.attempts == redeliveries + 2
    assert len(read_markers(markers, text=poison)) == redeliveries + 1
    assert [by_row[r].status for r in ("r1", "r2")] == ["succeeded", "succeeded"]
    assert counts(settings, "poison") == {"failed": 1, "succeeded": 2}
    assert [(e["id"], e["reason"]) for e in listed] == [("r0", "worker_lost")]


# -- 4. S3 stopped for 20 s --------------------------------------------------------------------


def test_s3_outage_of_20_seconds_is_ridden_out_by_retries(
    settings: Settings, stack: Any, workers: Any
) -> None:
    outage = 20.0
    node = workers.start(concurrency=2, fake_delay=0.5, max_retries=10, retry_base_seconds=0.5)
    bodies = texts(12, "Storage outage")
    batch = submit(settings, bodies, batch_id="s3-outage", max_retries=10, retry_base_seconds=0.5)
    wait_until(lambda: batch.progress().succeeded >= 2, timeout=30, what="2 jobs done")
    done_before = batch.progress().succeeded
    try:
        stack.stop("s3")
        wait_on_time(outage)
    finally:
        stack.start("s3")
    back = time.monotonic()
    results = batch.wait(timeout=100)
    tail = time.monotonic() - back
    retries = wait_until(
        lambda: sum(
            v
            for labels, v in pushgateway_samples(settings.pushgateway_url, "tts_task_retries_total")
            if labels.get("worker") == node.hostname and labels.get("reason") == "storage_error"
        ),
        timeout=30,
        what="storage_error retries on the Pushgateway",
    )
    print(
        f"\n[s3 outage] {done_before} of {len(bodies)} done, S3 stopped {outage:.0f} s; after it"
        f" returned the rest finished in {tail:.1f} s; outcomes "
        f"{sorted({r.status for r in results})}; counts {counts(settings, 's3-outage')};"
        f" tts_task_retries_total{{reason=storage_error}} = {retries:.0f}"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert counts(settings, "s3-outage") == {"succeeded": len(bodies)}
    assert retries >= 1


# -- 5. Redis restarted, and what a SIGKILL of Redis loses -------------------------------------


# A message taken, or being acked, just as Redis goes away stays in the unacked set until the
# visibility timeout: coherent test-sized limits make that wait 10 s instead of an hour.
SHORT_VISIBILITY: dict[str, Any] = {
    "visibility_timeout": 10,
    "task_time_base_seconds": 6.0,
    "task_time_per_char_seconds": 0.0,
    "task_time_grace_seconds": 1.0,
}


def test_clean_redis_restart_mid_batch_loses_nothing(
    settings: Settings, stack: Any, workers: Any
) -> None:
    node = workers.start(concurrency=2, fake_delay=0.3, **SHORT_VISIBILITY)
    bodies = texts(20, "Redis restart")
    batch = submit(settings, bodies, batch_id="redis-restart", **SHORT_VISIBILITY)
    wait_until(lambda: batch.progress().succeeded >= 3, timeout=30, what="3 jobs done")
    done_before = batch.progress().succeeded
    started = time.monotonic()
    stack.restart("redis")
    restart_seconds = time.monotonic() - started
    results = batch.wait(timeout=90)
    counted = wait_for_task_counts(settings.pushgateway_url, node.hostname, len(bodies), timeout=30)
    print(
        f"\n[redis restart] {done_before} of {len(bodies)} done, Redis restarted in "
        f"{restart_seconds:.2f} s; outcomes {sorted({r.status for r in results})}; counts "
        f"{counts(settings, 'redis-restart')}; tts_tasks_total {counted:.0f}"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert counts(settings, "redis-restart") == {"succeeded": len(bodies)}


def test_redis_outage_longer_than_client_retries_loses_nothing(
    settings: Settings, stack: Any, workers: Any
) -> None:
    outage = 8.0
    node = workers.start(concurrency=2, fake_delay=0.3, **SHORT_VISIBILITY)
    bodies = texts(20, "Redis outage")
    batch = submit(settings, bodies, batch_id="redis-outage", **SHORT_VISIBILITY)
    wait_until(lambda: batch.progress().succeeded >= 3, timeout=30, what="3 jobs done")
    done_before = batch.progress().succeeded
    try:
        stack.stop("redis")
        wait_on_time(outage)
    finally:
        stack.start("redis")
    results = batch.wait(timeout=90)
    print(
        f"\n[redis outage] {done_before} of {len(bodies)} done, Redis stopped {outage:.0f} s;"
        f" outcomes {sorted({r.status for r in results})};"
        f" counts {counts(settings, 'redis-outage')};"
        f" deliveries {sorted(attempts(settings, 'redis-outage').values())}"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert counts(settings, "redis-outage") == {"succeeded": len(bodies)}
    assert node.pid


def test_redis_sigkill_under_appendfsync_everysec(settings: Settings, stack: Any) -> None:
    """Measures how many acknowledged writes a SIGKILL of Redis loses (AOF, fsync everysec)."""
    rounds = []
    for round_no in range(3):
        acked, killed_at = _write_until_killed(settings, stack, prefix=f"aof{round_no}:")
        client = redis.Redis.from_url(settings.broker_url)
        present = len(client.keys(f"aof{round_no}:*"))
        # A write Redis applied but whose reply the kill cut off is kept, unacknowledged.
        lost, unacked_kept = max(len(acked) - present, 0), max(present - len(acked), 0)
        window = killed_at - acked[present] if lost > 0 else 0.0
        rate = len(acked) / (acked[-1] - acked[0])
        rounds.append((len(acked), rate, lost, unacked_kept, window))
        # Keys are written in order: what survives is a prefix.
        assert client.exists(f"aof{round_no}:{present - 1}")
        assert not client.exists(f"aof{round_no}:{present}")
    print("\n[redis sigkill] appendonly yes, appendfsync everysec; per round:")
    for n, rate, lost, kept, window in rounds:
        print(
            f"  {n} writes acknowledged at {rate:.0f}/s, then SIGKILL: {lost} lost after restart"
            f" (the last {window * 1000:.0f} ms); {kept} applied but unacknowledged, kept"
        )
    # A killed process leaves its AOF writes in the page cache: only an OS crash or power loss
    # drops the unsynced second that everysec allows.
    assert all(window <= 2.0 for *_, window in rounds)


def _write_until_killed(
    settings: Settings, stack: Any, *, prefix: str
) -> tuple[list[float], float]:
    """Acknowledged SETs (their times) written one by one until Redis is SIGKILLed; then
    Redis is started again. Returns the acknowledgement times and the time of the kill."""
    # No retries: the writer must see the kill, not paper over it for seconds.
    client = redis.Redis.from_url(
        settings.broker_url, retry=Retry(NoBackoff(), 0), socket_timeout=2
    )
    acked: list[float] = []

    def writer() -> None:
        while True:
            try:
                client.set(f"{prefix}{len(acked)}", "x" * 100)
            except redis.RedisError:
                return
            acked.append(time.monotonic())

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    wait_until(lambda: len(acked) >= 5000, timeout=30, what="5000 acknowledged writes")
    stack.kill("redis")
    killed_at = time.monotonic()
    thread.join(timeout=10)
    assert not thread.is_alive()
    stack.start("redis")
    return acked, killed_at


# -- 6. Pushgateway down -----------------------------------------------------------------------


def test_pushgateway_outage_fails_no_task_and_counts_catch_up(
    settings: Settings, stack: Any, workers: Any
) -> None:
    node = workers.start(concurrency=2)
    bodies = texts(8, "Pushgateway outage")
    try:
        stack.stop("pushgateway")
        results = submit(settings, bodies, batch_id="pg-outage").wait(timeout=60)
    finally:
        stack.start("pushgateway")
    back = time.monotonic()
    counted = wait_for_task_counts(settings.pushgateway_url, node.hostname, len(bodies), timeout=60)
    print(
        f"\n[pushgateway outage] {len(bodies)} jobs ran with the Pushgateway stopped: outcomes "
        f"{sorted({r.status for r in results})}; after it returned, the node's tts_tasks_total "
        f"({counted:.0f}) caught up in {time.monotonic() - back:.1f} s"
    )
    assert [r.status for r in results] == ["succeeded"] * len(bodies)


# -- 7. one content key, two batches -----------------------------------------------------------


def both_in_flight(settings: Settings, batch_ids: tuple[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        return all(sum(attempts(settings, b).values()) == 1 for b in batch_ids)

    return check


def test_same_content_key_in_two_batches_synthesizes_once(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    workers.start(concurrency=2, fake_delay=3.0, fake_marker_dir=str(markers))
    (text,) = texts(1, "Shared key")
    one = submit(settings, [text], batch_id="lease-a")
    two = submit(settings, [text], batch_id="lease-b")
    wait_until(lambda: read_markers(markers), timeout=30, what="the first synthesis")
    # Both jobs started while the first is still synthesizing: the second waits on the lease.
    wait_until(both_in_flight(settings, ("lease-a", "lease-b")), timeout=5, what="both started")
    assert one.progress().succeeded + two.progress().succeeded == 0
    (first,) = one.wait(timeout=60)
    (second,) = two.wait(timeout=60)
    starts = read_markers(markers, text=text)
    print(
        f"\n[lease] two batches, one content key, in flight at once: synthesis starts="
        f"{len(starts)}, outcomes {first.status}/{second.status},"
        f" same key {first.key == second.key}"
    )
    assert len(starts) == 1
    assert sorted([first.status, second.status]) == ["cached", "succeeded"]
    assert first.key == second.key


def test_a_lease_whose_holder_died_lapses(settings: Settings, workers: Any, tmp_path: Path) -> None:
    markers = marker_dir(tmp_path)
    lease = 3.0
    workers.start(concurrency=2, fake_delay=3.0, fake_marker_dir=str(markers), lease_seconds=lease)
    (text,) = texts(1, "Dead holder")
    one = submit(settings, [text], batch_id="holder-a")
    two = submit(settings, [text], batch_id="holder-b")
    holder = wait_until(lambda: read_markers(markers), timeout=30, what="the lease holder")[0]
    wait_until(both_in_flight(settings, ("holder-a", "holder-b")), timeout=5, what="both started")
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    (first,) = one.wait(timeout=60)
    (second,) = two.wait(timeout=60)
    took = time.monotonic() - killed_at
    starts = read_markers(markers, text=text)
    print(
        f"\n[dead lease holder] SIGKILLed the holder (pid {holder.pid}) mid-synthesis; both jobs"
        f" done {took:.1f} s later (lease {lease} s): synthesis starts={len(starts)}, outcomes"
        f" {first.status}/{second.status}"
    )
    assert sorted([first.status, second.status]) == ["cached", "succeeded"]
    assert len(starts) == 2
    assert first.key == second.key
    assert_valid_object(AudioStore.from_settings(settings), first, text)


def test_a_stalled_holder_whose_lease_lapsed_does_not_replace_the_object(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    # The lease lapses under a holder that is stopped (SIGSTOP: its renewals stop too) and the
    # waiting job synthesizes and stores the object. The holder then resumes: its upload is
    # conditional, the server refuses it (412), and the holder's job ends as cached.
    markers = marker_dir(tmp_path)
    lease = 3.0
    workers.start(concurrency=2, fake_delay=2.0, fake_marker_dir=str(markers), lease_seconds=lease)
    (text,) = texts(1, "Stalled holder")
    one = submit(settings, [text], batch_id="stalled-a")
    two = submit(settings, [text], batch_id="stalled-b")
    holder = wait_until(lambda: read_markers(markers), timeout=30, what="the lease holder")[0]
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: len(read_markers(markers, text=text)) == 2, timeout=30, what="2nd")
        wait_until(
            lambda: one.progress().succeeded + two.progress().succeeded == 1,
            timeout=30,
            what="the second synthesis stored",
        )
        store = AudioStore.from_settings(settings)
        (stored,) = [r for b in (one, two) for r in b.results() if r.status == "succeeded"]
        assert stored.key is not None
        before = store._client.head_object(Bucket=store.bucket, Key=stored.key)
        # An overwrite now would show in LastModified (whole seconds).
        wait_on_time(1.5)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    (first,) = one.wait(timeout=60)
    (second,) = two.wait(timeout=60)
    after = store._client.head_object(Bucket=store.bucket, Key=stored.key)
    print(
        f"\n[stalled lease holder] SIGSTOP of the holder (pid {holder.pid}) past its {lease} s "
        f"lease: synthesis starts={len(read_markers(markers, text=text))}, outcomes "
        f"{first.status}/{second.status}; object written {before['LastModified']}, "
        f"after the holder resumed {after['LastModified']}"
    )
    assert sorted([first.status, second.status]) == ["cached", "succeeded"]
    assert len(read_markers(markers, text=text)) == 2
    assert after["LastModified"] == before["LastModified"] and after["ETag"] == before["ETag"]
    assert_valid_object(store, first, text)


# -- 8. graceful shutdown ----------------------------------------------------------------------


def test_graceful_shutdown_finishes_the_job_in_hand(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = marker_dir(tmp_path)
    node = workers.start(concurrency=1, fake_delay=3.0, fake_marker_dir=str(markers))
    bodies = texts(4, "Shutdown")
    batch = submit(settings, bodies, batch_id="shutdown")
    in_hand = wait_until(lambda: read_markers(markers), timeout=30, what="a job in hand")[0]
    started = time.monotonic()
    node.stop()  # SIGTERM to the parent: a warm shutdown
    stop_seconds = time.monotonic() - started
    done = [r for r in batch.results() if r.status != "pending"]
    queued = int(queue_depth(redis.Redis.from_url(settings.broker_url)))

    workers.start(concurrency=1, fake_marker_dir=str(markers))
    results = batch.wait(timeout=60)
    starts = read_markers(markers)
    print(
        f"\n[graceful shutdown] SIGTERM to the parent with a job in hand: the node"
        f" stopped in {stop_seconds:.1f} s having finished "
        f"{[r.row_id for r in done]}, {queued} jobs back in the queue; a new node finished the "
        f"rest: outcomes {[r.status for r in results]}, synthesis starts {len(starts)}, counts "
        f"{counts(settings, 'shutdown')}"
    )
    assert [r.row_id for r in done] == [row_of(in_hand.text)]
    assert done[0].status == "succeeded"
    assert queued == len(bodies) - 1
    assert [r.status for r in results] == ["succeeded"] * len(bodies)
    assert len(starts) == len(bodies)
    assert counts(settings, "shutdown") == {"succeeded": len(bodies)}
