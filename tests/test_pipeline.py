"""The whole pipeline on real services: producer -> Redis -> Celery worker processes ->
espeak-ng / fake engine -> SeaweedFS, with metrics in a real Pushgateway."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from core.errors import InvalidBatch
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import pushgateway_samples, queue_depth, run_cli, wait_for_task_counts

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "announcements.csv"


def rows(
    n: int, *, prefix: str = "r", text: str = "Platform {i} is now open."
) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": text.format(i=i), "speaker": "英文女"} for i in range(n)]


def fresh_text() -> str:
    """A text template never synthesized before in this bucket (so nothing is cached)."""
    return f"Gate {uuid.uuid4().hex[:8]} {{i}} closes soon."


def decode(store: AudioStore, key: str) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(store.get(key)), dtype="float32")
    return samples, rate


def test_example_batch_end_to_end_with_espeak(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    node = workers.start(engine="espeak", concurrency=2)
    producer = Producer(settings)
    seen: list[Any] = []
    batch = producer.submit_file(EXAMPLES)
    results = batch.wait(timeout=180, on_progress=seen.append)

    assert len(results) == 12
    assert {r.status for r in results} == {"succeeded"}, [r.error for r in results]
    progress = batch.progress()
    assert (progress.total, progress.succeeded, progress.failed, progress.pending) == (12, 12, 0, 0)
    assert seen[-1].done and seen[0].total == 12

    store = AudioStore.from_settings(settings)
    texts = {line.split(",")[0]: line for line in EXAMPLES.read_text().splitlines()[1:]}
    for result in results:
        assert result.uri == f"s3://{settings.s3_bucket}/{result.key}"
        assert result.key is not None and result.row_id not in result.key
        samples, rate = decode(store, result.key)
        assert rate == 22050
        seconds = len(samples) / rate
        # Speech at espeak's pace: longer than a beep, shorter than a second per character.
        assert 1.0 < seconds < len(texts[result.row_id]), (result.row_id, seconds)
        assert abs(seconds - (result.audio_seconds or 0)) < 0.01
        rms = float(np.sqrt(np.mean(samples**2)))
        assert rms > 0.01, f"{result.row_id} is silent"
        head = store.head(result.key)
        assert head is not None
        assert head.metadata["engine"] == "espeak"
        assert head.metadata["sample-rate"] == "22050"
        assert len(head.metadata["text-sha256"]) == 64

    # The node pushed one group, the sum of its processes: every job counted once.
    wait_for_task_counts(settings.pushgateway_url, node.hostname, 12, timeout=30)
    groups = {
        tuple(sorted(labels))
        for labels, _ in pushgateway_samples(settings.pushgateway_url, "tts_tasks_total")
        if labels.get("worker") == node.hostname
    }
    assert groups == {("instance", "job", "status", "worker")}


def test_rows_with_the_same_content_share_one_synthesis(settings: Settings, workers: Any) -> None:
    node = workers.start(concurrency=2)
    same = [{"id": f"dup{i}", "text": "Mind the gap.", "speaker": "英文男"} for i in range(5)]
    batch = Producer(settings).submit_batch([*same, *rows(3)])
    assert batch.report.jobs_sent == 4
    results = batch.wait(timeout=60)
    assert len(results) == 8 and all(r.ok for r in results)
    assert len({r.key for r in results if r.row_id.startswith("dup")}) == 1
    assert batch.progress().succeeded == 8
    wait_for_task_counts(settings.pushgateway_url, node.hostname, 4)


def test_resubmitting_a_batch_enqueues_only_what_is_not_done(
    settings: Settings, workers: Any
) -> None:
    producer = Producer(settings)
    first = producer.submit_batch(rows(6), batch_id="resubmit")
    assert first.report.jobs_sent == 6
    # No worker yet: all six are queued. Resubmitting now enqueues nothing new.
    again = producer.submit_batch(rows(6), batch_id="resubmit")
    assert (again.report.jobs_sent, again.report.jobs_in_flight) == (0, 6)
    workers.start(concurrency=2)
    first.wait(timeout=60)
    # Two more rows in the file: only they are enqueued; progress counts 8 rows once each.
    third = producer.submit_batch(rows(8), batch_id="resubmit")
    assert (third.report.jobs_sent, third.report.jobs_already_done) == (2, 6)
    results = third.wait(timeout=60)
    assert len(results) == 8 and all(r.ok for r in results)
    progress = third.progress()
    assert (progress.total, progress.succeeded) == (8, 8)


def test_same_text_in_a_new_batch_is_served_from_storage(settings: Settings, workers: Any) -> None:
    workers.start(concurrency=1)
    producer = Producer(settings)
    # Text never used before in this bucket, so that the first batch really synthesizes.
    fresh = fresh_text()
    one = producer.submit_batch(rows(3, text=fresh), batch_id="first").wait(timeout=60)
    two = producer.submit_batch(rows(3, text=fresh), batch_id="second").wait(timeout=60)
    assert [r.status for r in one] == ["succeeded"] * 3
    assert [r.status for r in two] == ["cached"] * 3
    assert [r.key for r in one] == [r.key for r in two]


def test_an_invalid_row_refuses_the_batch_unless_skipped(settings: Settings, workers: Any) -> None:
    import redis

    producer = Producer(settings)
    bad = [*rows(3), {"id": "bad", "text": "   ", "speaker": "英文女"}]
    with pytest.raises(InvalidBatch) as info:
        producer.submit_batch(bad, batch_id="refused")
    assert "row 4, field 'text'" in str(info.value)
    broker = redis.Redis.from_url(settings.broker_url)
    assert queue_depth(broker) == 0
    assert not producer.batch("refused").progress().total

    batch = producer.submit_batch(bad, batch_id="skipping", skip_invalid=True)
    assert batch.report.rejected_count == 1 and batch.report.rejected[0].field == "text"
    workers.start(concurrency=1)
    results = batch.wait(timeout=60)
    assert [r.row_id for r in results] == ["r0", "r1", "r2"]


def test_single_submit(settings: Settings, workers: Any) -> None:
    workers.start(concurrency=1)
    job = Producer(settings).submit("Doors closing.", speaker="英文女", job_id="one")
    result = job.wait(timeout=60)
    assert result.row_id == "one" and result.ok and result.audio_seconds


def test_cli_submit_wait_manifest_status_fetch(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=2)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows(4, text=fresh_text())) + "\n",
        encoding="utf-8",
    )
    manifest = tmp_path / "manifest.jsonl"
    done = run_cli(
        settings,
        "submit",
        str(jobs),
        "--batch-id",
        "clibatch",
        "--wait",
        "--manifest",
        str(manifest),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "clibatch"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["r0", "r1", "r2", "r3"]
    assert all(line["status"] == "succeeded" and line["uri"].startswith("s3://") for line in lines)

    status = run_cli(settings, "status", "clibatch", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout) == {
        "batch_id": "clibatch",
        "total": 4,
        "succeeded": 4,
        "cached": 0,
        "failed": 0,
        "pending": 0,
        "cancelled": 0,
        "rejected": 0,
    }
    out = tmp_path / "audio"
    fetched = run_cli(settings, "fetch", "clibatch", "--to", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in out.iterdir()) == ["r0.wav", "r1.wav", "r2.wav", "r3.wav"]
    assert sf.info(str(out / "r0.wav")).samplerate == 16000


def test_cli_exit_codes_for_bad_input(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,speaker\nok1,hello,英文女\nbad1,hello,nobody\n", encoding="utf-8")
    refused = run_cli(settings, "submit", str(bad))
    assert refused.returncode == 2
    assert "row 3, field 'speaker'" in refused.stderr
    missing = run_cli(settings, "submit", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    usage = run_cli(settings, "submit")
    assert usage.returncode == 2


def test_cli_reports_failures_with_exit_code_1(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    # The producer accepts a speaker the worker's engine does not have: the worker refuses it.
    workers.start(concurrency=1)
    wide = Settings.from_env({**settings.to_env(), "TTS_SPEAKERS": "英文女,robot"})
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("id,text,speaker\na,hello,英文女\nb,hello,robot\n", encoding="utf-8")
    manifest = tmp_path / "m.jsonl"
    done = run_cli(wide, "submit", str(jobs), "--wait", "--manifest", str(manifest))
    assert done.returncode == 1, done.stderr
    by_id = {line["id"]: line for line in map(json.loads, manifest.read_text().splitlines())}
    assert by_id["a"]["status"] == "succeeded"
    assert (by_id["b"]["status"], by_id["b"]["reason"]) == ("failed", "unknown_speaker")


def test_failed_jobs_are_listed_and_retried(settings: Settings, workers: Any) -> None:
    # Jobs sent with a 1 s time limit to a worker whose engine takes 3 s: they fail as timeouts.
    tight = Settings.from_env(
        {
            **settings.to_env(),
            "TTS_TASK_TIME_BASE_SECONDS": "1",
            "TTS_TASK_TIME_PER_CHAR_SECONDS": "0",
            "TTS_TASK_TIME_GRACE_SECONDS": "5",
        }
    )
    slow = workers.start(concurrency=2, fake_delay=3.0)
    batch = Producer(tight).submit_batch(rows(2, text=fresh_text()), batch_id="slow")
    results = batch.wait(timeout=60)
    assert {(r.status, r.reason) for r in results} == {("failed", "timeout")}

    listed = run_cli(settings, "failed", "slow")
    assert listed.returncode == 1
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(line["id"] for line in lines) == ["r0", "r1"]
    assert all(line["reason"] == "timeout" and line["attempts"] == 1 for line in lines)

    # With a worker that is fast enough, `retry` enqueues them again and they succeed.
    slow.stop()
    workers.start(concurrency=2)
    retried = run_cli(settings, "retry", "slow")
    assert retried.returncode == 0 and retried.stdout.startswith("2 ")
    results = Producer(settings).batch("slow").wait(timeout=60)
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    progress = Producer(settings).batch("slow").progress()
    assert (progress.total, progress.succeeded, progress.failed) == (2, 2, 0)


def test_enqueue_progress_is_reported_per_chunk(settings: Settings, tmp_path: Path) -> None:
    jobs = tmp_path / "many.csv"
    lines = ["id,text,speaker"] + [f"m{i},Notice {i}.,英文女" for i in range(1200)]
    jobs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    calls: list[tuple[int, int]] = []
    batch = Producer(settings).submit_file(jobs, on_enqueued=lambda d, t: calls.append((d, t)))
    assert calls == [(500, 1200), (1000, 1200), (1200, 1200)]
    assert batch.report.jobs_sent == 1200
