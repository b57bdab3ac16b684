"""A bounded soak on loopback: 10,000 jobs with the fake engine across two worker processes.

Nothing lost (every row succeeded), nothing duplicated (one start per job, one outcome per
job in the metrics, one object per content key), and Redis stays bounded: after the batch,
every key it holds expires on a documented schedule (batch state: TTS_BATCH_TTL_SECONDS
after its last write; Celery results: result_expires, 24 h) except the empty queue's own.
Prints the throughput. `pytest -m soak` runs it alone.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

import celeryconfig
from core.batch_state import PARTS, BatchState
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import pushgateway_samples, queue_depth, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.soak]

JOBS = 10_000
# The kombu Redis transport's own bookkeeping: permanent, but small and not per job.
KOMBU_KEYS = ("_kombu.binding", "unacked", "unacked_index", "unacked_mutex")


def used_memory_mb(r: redis.Redis) -> float:
    return int(r.info("memory")["used_memory"]) / 2**20


def bucket_keys(store: AudioStore) -> set[str]:
    """The audio objects (a finished batch's manifest object lives under batches/)."""
    keys: set[str] = set()
    pages = store._client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix="audio/"
    )
    for page in pages:
        keys.update(item["Key"] for item in page.get("Contents", []))
    return keys


def sum_samples(url: str, name: str, worker: str) -> float:
    return sum(v for labels, v in pushgateway_samples(url, name) if labels.get("worker") == worker)


def test_soak_10k_jobs_two_processes(settings: Settings, workers: Any) -> None:
    r = redis.Redis.from_url(settings.broker_url)
    # A bucket of its own, so that the object count is this batch's alone.
    bucket = f"tts-soak-{uuid.uuid4().hex[:8]}"
    node = workers.start(concurrency=2, s3_bucket=bucket)
    settings = Settings.from_env({**settings.to_env(), "TTS_S3_BUCKET": bucket})
    memory_before = used_memory_mb(r)
    run = uuid.uuid4().hex[:8]
    rows = [
        {"id": f"j{i:05d}", "text": f"Soak {run} announcement number {i}.", "speaker": "英文女"}
        for i in range(JOBS)
    ]
    started = time.monotonic()
    batch = Producer(settings).submit_batch(rows, batch_id=f"soak-{run}")
    enqueued = time.monotonic() - started
    assert batch.report.jobs_sent == JOBS
    memory_queued = used_memory_mb(r)
    peak = {"mb": memory_queued}

    def done() -> bool:
        peak["mb"] = max(peak["mb"], used_memory_mb(r))
        return batch.progress().done

    wait_until(done, timeout=780, interval=1.0, what=f"{JOBS} soak jobs")
    elapsed = time.monotonic() - started
    memory_after = used_memory_mb(r)
    print(
        f"soak: {JOBS} jobs, 1 node x 2 processes, fake engine: enqueued in {enqueued:.1f} s, "
        f"all done in {elapsed:.1f} s = {JOBS / elapsed:.0f} jobs/s; Redis used_memory "
        f"{memory_before:.1f} MB before, {memory_queued:.1f} MB queued, peak {peak['mb']:.1f} MB, "
        f"{memory_after:.1f} MB after"
    )

    # Nothing lost.
    progress = batch.progress()
    assert (progress.total, progress.succeeded, progress.failed) == (JOBS, JOBS, 0)
    assert progress.cached == 0
    results = batch.wait(timeout=10)
    keys = {res.key for res in results}
    assert len(keys) == JOBS and None not in keys
    # Nothing duplicated: each job started as often as it was tried (1, unless a transient
    # error scheduled a retry), never redelivered behind the worker's back; one object per key.
    state = BatchState(r, batch.batch_id, ttl_seconds=settings.batch_ttl_seconds)
    attempts: dict[bytes, bytes] = r.hgetall(state.key("attempts"))  # type: ignore[assignment]
    starts = {k.decode(): int(v) for k, v in attempts.items()}
    assert len(starts) == JOBS
    assert all(starts[res.job_id] == res.attempts for res in results)
    retried = sum(1 for res in results if (res.attempts or 1) > 1)
    print(f"jobs started more than once: {retried} (all of them retries)")
    assert bucket_keys(AudioStore.from_settings(settings)) == keys
    url, worker = settings.pushgateway_url, node.hostname
    wait_until(
        lambda: sum_samples(url, "tts_tasks_total", worker) == JOBS,
        timeout=30,
        what="tts_tasks_total == jobs",
    )
    assert sum_samples(url, "tts_inference_duration_seconds_count", worker) == JOBS
    assert sum_samples(url, "tts_errors_total", worker) == 0
    # Both processes worked.
    per_process = Counter(_result(state, j)["pid"] for j in _jobs(state))
    assert len(per_process) == 2 and min(per_process.values()) > JOBS * 0.2, per_process

    # Redis stays bounded: the queue is empty and every other key expires on schedule.
    assert queue_depth(r) == 0
    ttl_batch = settings.batch_ttl_seconds
    ttl_result = celeryconfig.result_expires
    counts: Counter[str] = Counter()
    for raw_key in r.scan_iter(count=1000):
        key = raw_key.decode()
        ttl = int(r.ttl(key))
        if key.startswith(f"tts:batch:{batch.batch_id}:"):
            assert key.rsplit(":", 1)[1] in PARTS
            assert 0 < ttl <= ttl_batch, (key, ttl)
            counts["batch"] += 1
        elif key.startswith("celery-task-meta-"):
            assert 0 < ttl <= ttl_result, (key, ttl)
            counts["result"] += 1
        elif key.startswith(KOMBU_KEYS):
            counts["kombu"] += 1
        else:
            assert ttl > 0, f"{key} never expires"
            counts["other"] += 1
    assert counts["result"] == JOBS and counts["kombu"] <= 5, counts
    assert int(r.hlen("unacked")) == 0
    # What a finished job leaves until it expires, per job.
    per_job_kb = (memory_after - memory_before) * 1024 / JOBS
    print(f"keys after the soak: {dict(counts)}; {per_job_kb:.2f} kB of Redis per finished job")
    assert per_job_kb < 4, per_job_kb
    assert elapsed < 600, elapsed


def _jobs(state: BatchState) -> list[str]:
    return [job_id for _, job_id, _ in state.iter_rows()]


def _result(state: BatchState, job_id: str) -> dict[str, Any]:
    record = state.result(job_id)
    assert record is not None, job_id
    return record
