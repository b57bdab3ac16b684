"""Operating batches on real services: list them, cancel one, order them by priority, record
rows refused at submission, retry only what a retry can fix. CLI through a subprocess (or the
Python API), real Redis, SeaweedFS and Celery worker processes of the fake engine."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import BATCH_INDEX, BatchState
from core.delivery import queue_key
from core.settings import Settings
from producer.api import Producer
from tests.support.helpers import queue_depth, run_cli, wait_until

pytestmark = pytest.mark.integration

SPEAKER = "英文女"


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    lines = ["id,text,speaker"] + [",".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def fresh_rows(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    """Rows never synthesized before in this bucket (nothing cached)."""
    tag = uuid.uuid4().hex[:8]
    return [
        {"id": f"{prefix}{i}", "text": f"Notice {tag} number {i}.", "speaker": SPEAKER}
        for i in range(n)
    ]


def no_traceback(done: Any) -> None:
    assert "Traceback" not in done.stderr + done.stdout, done.stderr


def test_batches_lists_newest_first_with_counts_and_forgets_expired(
    settings: Settings, tmp_path: Path
) -> None:
    producer = Producer(settings)
    producer.submit_batch(fresh_rows(2), batch_id="older")
    jobs = write_csv(tmp_path / "newer.csv", [("a", "Gate one.", SPEAKER), ("b", "", SPEAKER)])
    submitted = run_cli(settings, "submit", str(jobs), "--batch-id", "newer", "--skip-invalid")
    assert submitted.returncode == 1, submitted.stderr  # a row was rejected

    listed = run_cli(settings, "batches", "--json")
    assert listed.returncode == 0, listed.stderr
    batches = json.loads(listed.stdout)
    assert [b["batch_id"] for b in batches] == ["newer", "older"]
    newer = batches[0]
    assert (newer["total"], newer["pending"], newer["rejected"]) == (1, 1, 1)
    assert batches[1]["created_at"] <= newer["created_at"]
    assert (batches[1]["total"], batches[1]["pending"], batches[1]["cancelled"]) == (2, 2, 0)

    table = run_cli(settings, "batches", "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert "newer" in table.stdout and "older" not in table.stdout

    # "older" expires (its keys' TTL passes): the listing and the index forget it.
    r = redis.Redis.from_url(settings.broker_url)
    BatchState(r, "older", ttl_seconds=1).touch()
    wait_until(lambda: not r.exists("tts:batch:older:meta"), timeout=10, what="older expired")
    after = json.loads(run_cli(settings, "batches", "--json").stdout)
    assert [b["batch_id"] for b in after] == ["newer"]
    assert r.zscore(BATCH_INDEX, "older") is None
    # The index itself expires once every batch has (no key in Redis lives for ever).
    assert 0 < int(r.ttl(BATCH_INDEX)) <= settings.batch_ttl_seconds


def test_rejected_rows_are_recorded_and_listed_by_failed(
    settings: Settings, tmp_path: Path
) -> None:
    jobs = write_csv(
        tmp_path / "mixed.csv",
        [
            ("a", "Platform one.", SPEAKER),
            ("b", "Platform two.", "nobody"),
            ("c", "Platform three.", SPEAKER),
            ("d", "!!!", SPEAKER),
        ],
    )
    submitted = run_cli(settings, "submit", str(jobs), "--batch-id", "mixed", "--skip-invalid")
    assert submitted.returncode == 1, submitted.stderr

    failed = run_cli(settings, "failed", "mixed", "--json")
    assert failed.returncode == 1, failed.stderr
    listing = json.loads(failed.stdout)
    assert listing["failed_rows"] == []
    rejected = {(e["line"], e["field"], e["reason"]) for e in listing["rejected_rows"]}
    assert rejected == {(3, "speaker", "unknown_speaker"), (5, "text", "invalid_text")}
    assert all(e["status"] == "rejected" and e["error"] for e in listing["rejected_rows"])

    # Without --json: one JSON line per row, the count on stderr.
    lines = run_cli(settings, "failed", "mixed")
    assert [json.loads(line)["line"] for line in lines.stdout.splitlines()] == [3, 5]
    assert "2 rejected rows" in lines.stderr

    status = json.loads(run_cli(settings, "status", "mixed", "--json").stdout)
    assert (status["total"], status["rejected"], status["pending"]) == (2, 2, 2)

    # Submitting the same file again records no row twice.
    run_cli(settings, "submit", str(jobs), "--batch-id", "mixed", "--skip-invalid")
    assert Producer(settings).batch("mixed").progress().rejected == 2

    unknown = run_cli(settings, "failed", "no-such-batch")
    assert unknown.returncode == 2
    assert "no batch 'no-such-batch'" in unknown.stderr
    no_traceback(unknown)


def test_cancel_stops_pending_jobs_and_lets_running_ones_finish(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    workers.start(concurrency=1, fake_delay=0.5, fake_marker_dir=str(markers))
    producer = Producer(settings)
    batch = producer.submit_batch(fresh_rows(40), batch_id="night")
    wait_until(lambda: batch.progress().succeeded >= 2, timeout=60, what="2 jobs done")

    cancelled = run_cli(settings, "cancel", "night")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "rows cancelled" in cancelled.stdout

    # Done once the running job finished; the worker drains the queue without synthesizing.
    wait_until(lambda: batch.progress().done, timeout=30, what="the cancelled batch done")
    wait_until(lambda: queue_depth(redis.Redis.from_url(settings.broker_url)) == 0, timeout=60)
    progress = batch.progress()
    results = list(batch.results())
    by_status = {s: [r for r in results if r.status == s] for s in ("succeeded", "cancelled")}
    assert progress.failed == 0
    assert progress.succeeded + progress.cancelled == 40
    assert progress.cancelled >= 10, progress  # 40 x 0.5 s queued: most had not started
    assert len(by_status["cancelled"]) == progress.cancelled
    assert len(by_status["succeeded"]) == progress.succeeded
    # Every synthesis left a marker: none for a cancelled job.
    synthesized = len(list(markers.iterdir()))
    assert synthesized == progress.succeeded, (synthesized, progress)

    status = run_cli(settings, "status", "night", "--json")
    assert status.returncode == 1  # done, but not every row has its audio
    figures = json.loads(status.stdout)
    assert (figures["cancelled"], figures["pending"]) == (progress.cancelled, 0)
    listed = json.loads(run_cli(settings, "batches", "--json").stdout)
    assert listed[0]["batch_id"] == "night" and listed[0]["cancelled_at"] is not None

    # A cancelled batch takes no new rows; an unknown batch cannot be cancelled.
    again = tmp_path / "again.csv"
    write_csv(again, [("z", "One more.", SPEAKER)])
    refused = run_cli(settings, "submit", str(again), "--batch-id", "night")
    assert refused.returncode == 2 and "was cancelled" in refused.stderr
    unknown = run_cli(settings, "cancel", "no-such-batch")
    assert unknown.returncode == 2 and "no batch 'no-such-batch'" in unknown.stderr
    no_traceback(unknown)


def test_a_worker_records_a_job_of_a_cancelled_batch_without_running_it(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    """Skip on receipt: the cancel mark alone (as a job sent after `cancel` recorded the
    others would meet it) makes the worker record the job cancelled, unrun."""
    batch = Producer(settings).submit_batch(fresh_rows(3), batch_id="marked")
    r = redis.Redis.from_url(settings.broker_url)
    r.hset("tts:batch:marked:meta", "cancelled_at", "1")  # the mark, no job recorded yet
    markers = tmp_path / "markers"
    markers.mkdir()
    workers.start(concurrency=1, fake_marker_dir=str(markers))
    results = batch.wait(timeout=60)
    assert [res.status for res in results] == ["cancelled"] * 3
    assert batch.progress().cancelled == 3
    assert list(markers.iterdir()) == []


def test_an_urgent_job_overtakes_a_nights_bulk_work(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    # One worker process, prefetch 1: it holds one job at a time.
    workers.start(concurrency=1, fake_delay=0.2)
    tag = uuid.uuid4().hex[:8]
    bulk = write_csv(
        tmp_path / "bulk.csv", [(f"n{i}", f"Night {tag} notice {i}.", SPEAKER) for i in range(60)]
    )
    sent = run_cli(settings, "submit", str(bulk), "--batch-id", "bulk", "--priority", "low")
    assert sent.returncode == 0, sent.stderr
    assert "60 jobs enqueued, priority low" in sent.stderr
    urgent = Producer(settings).submit(
        f"Urgent {tag}: platform change.", speaker=SPEAKER, job_id="urgent", priority="high"
    )
    done = urgent.wait(timeout=120)
    assert done.status == "succeeded"
    bulk_results = Producer(settings).batch("bulk").wait(timeout=120)
    assert all(res.ok for res in bulk_results)

    r = redis.Redis.from_url(settings.broker_url)
    state = BatchState(r, "bulk", ttl_seconds=60)
    finished = [state.result(res.job_id)["finished_at"] for res in bulk_results]  # type: ignore[index]
    urgent_at = BatchState(r, "job-urgent", ttl_seconds=60).result(done.job_id)["finished_at"]  # type: ignore[index]
    after = sum(1 for t in finished if t > urgent_at)
    print(f"\n[priorities] the urgent job finished before {after} of 60 bulk jobs")
    # The urgent job waits at most for the job in hand, plus those taken before it was sent.
    assert after >= 40, after


def test_retry_skips_bad_input_unless_named_and_counts_attempts(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    # The producer knows a speaker the worker's engine does not (unknown_speaker, bad input),
    # and sends with a 1 s time limit to an engine taking 3 s (timeout, worth a retry).
    producer_settings = Settings.from_env(
        {
            **replace(settings, speakers=(*settings.speakers, "ghost")).to_env(),
            "TTS_TASK_TIME_BASE_SECONDS": "1",
            "TTS_TASK_TIME_PER_CHAR_SECONDS": "0",
            "TTS_TASK_TIME_GRACE_SECONDS": "5",
        }
    )
    workers.start(concurrency=1, fake_delay=3.0)
    tag = uuid.uuid4().hex[:8]
    jobs = write_csv(
        tmp_path / "mixed.csv",
        [("slow", f"Slow {tag}.", SPEAKER), ("ghostly", f"Ghost {tag}.", "ghost")],
    )
    sent = run_cli(producer_settings, "submit", str(jobs), "--batch-id", "rb")
    assert sent.returncode == 0, sent.stderr
    batch = Producer(producer_settings).batch("rb")

    def failed() -> dict[str, dict[str, Any]]:
        listed = run_cli(producer_settings, "failed", "rb", "--json")
        return {e["id"]: e for e in json.loads(listed.stdout)["failed_rows"]}

    batch.wait(timeout=60)
    first = failed()
    assert {k: (v["reason"], v["attempts"]) for k, v in first.items()} == {
        "slow": ("timeout", 1),
        "ghostly": ("unknown_speaker", 1),
    }

    retried = run_cli(producer_settings, "retry", "rb")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith("1 failed jobs enqueued again")
    assert "skipped 1 failed jobs (unknown_speaker: 1)" in retried.stderr
    assert "--reason unknown_speaker" in retried.stderr
    wait_until(lambda: batch.progress().failed == 2, timeout=60, what="the retry failed again")
    second = failed()
    assert second["slow"]["attempts"] == 2  # attempts add up across retries
    assert second["ghostly"]["attempts"] == 1  # not run again

    named = run_cli(producer_settings, "retry", "rb", "--reason", "unknown_speaker")
    assert named.returncode == 0, named.stderr
    assert named.stdout.startswith("1 failed jobs enqueued again")
    assert "timeout: 1" in named.stderr
    wait_until(lambda: failed()["ghostly"]["attempts"] == 2, timeout=60, what="ghost retried")
    assert failed()["slow"]["attempts"] == 2

    bad = run_cli(producer_settings, "retry", "rb", "--reason", "no_such_reason")
    assert bad.returncode == 2
    no_traceback(bad)


def test_a_retry_is_sent_at_its_batchs_priority(settings: Settings, tmp_path: Path) -> None:
    # No worker: the retried job stays in the queue, on the list of its priority.
    jobs = write_csv(tmp_path / "low.csv", [("a", f"Low {uuid.uuid4().hex[:8]}.", SPEAKER)])
    sent = run_cli(settings, "submit", str(jobs), "--batch-id", "lowb", "--priority", "low")
    assert sent.returncode == 0, sent.stderr
    r = redis.Redis.from_url(settings.broker_url)
    assert (r.llen(queue_key("low")), queue_depth(r)) == (1, 1)
    raw = r.rpop(queue_key("low"))
    assert isinstance(raw, bytes)
    message = json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
    # The job fails as a worker records a timeout (its message kept for `retry`).
    state = BatchState(r, "lowb", ttl_seconds=3600)
    failure = {"job_id": message["job_id"], "status": "failed", "reason": "timeout"}
    state.record(message["job_id"], {**failure, "attempts": 1, "message": message})
    retried = run_cli(settings, "retry", "lowb")
    assert retried.returncode == 0 and retried.stdout.startswith("1 "), retried.stderr
    assert (r.llen(queue_key("low")), queue_depth(r)) == (1, 1)
