"""Voices by name on real services: `tts-batch speakers` asks the running workers (Celery's
remote control, the `tts_engine` command); aliases in rows are the same jobs and audio as their
ids, on the producer and on the worker; a speaker whose language disagrees with the row's
`lang` is warned about, and the job still runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import BatchState
from core.contract import JobSpec, build_message, task_id_for
from core.settings import COSYVOICE_SFT_SPEAKERS, Settings
from producer.api import Producer
from producer.sender import JobSender, client_app
from tests.support.helpers import run_cli

pytestmark = pytest.mark.integration


def test_speakers_lists_what_each_running_worker_offers(settings: Settings, workers: Any) -> None:
    node = workers.start(concurrency=1)

    proc = run_cli(settings, "speakers", "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    info = answer["sources"][node.hostname]
    assert info["engine"] == "fake" and info["model"] is None
    assert info["speakers"] == list(COSYVOICE_SFT_SPEAKERS)
    assert info["aliases"]["en-female"] == "英文女"
    by_alias = {row["alias"]: row for row in answer["speakers"]}
    assert by_alias["ja-male"] == {
        "alias": "ja-male",
        "id": "日语男",
        "lang": "ja",
        "gender": "male",
        "workers": [node.hostname],
    }

    table = run_cli(settings, "speakers")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["alias", "id", "lang", "gender", "workers"]
    assert ["en-female", "英文女", "en", "female", node.hostname] in [ln.split() for ln in lines]


def test_speakers_with_no_worker_running_is_one_line_and_exit_1(settings: Settings) -> None:
    proc = run_cli(settings, "speakers", "--timeout", "0.5")
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "tts-batch: error: no worker answered within 0.5 s (is one running? `tts-batch up`; "
        "or name an engine: `tts-batch speakers --engine espeak`)"
    ]


def test_alias_rows_share_the_job_and_audio_of_their_id_and_mismatches_warn(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=1)
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "id,text,speaker,lang\n"
        "by-alias,Mind the gap.,en-female,en\n"
        "by-id,Mind the gap.,英文女,en\n"
        "odd,Mind the step.,en-female,zh\n",
        encoding="utf-8",
    )
    manifest = tmp_path / "manifest.jsonl"
    proc = run_cli(
        settings,
        "submit",
        str(rows),
        "--batch-id",
        "voices-1",
        "--wait",
        "--timeout",
        "120",
        "--manifest",
        str(manifest),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # The alias row and the id row are one job; the mismatched row is warned about (line 4 of
    # the file) and still enqueued.
    assert "batch voices-1: 3 rows, 2 jobs enqueued" in proc.stderr
    warnings = [ln.strip() for ln in proc.stderr.splitlines() if "warning:" in ln]
    assert warnings == [
        "warning: row 4: speaker en-female (英文女) speaks en, the row asks for lang=zh; "
        "enqueued anyway"
    ]
    results = {
        line["id"]: line
        for line in map(json.loads, manifest.read_text(encoding="utf-8").splitlines())
    }
    assert {r["status"] for r in results.values()} <= {"succeeded", "cached"}
    assert results["by-alias"]["key"] == results["by-id"]["key"]
    assert results["odd"]["key"] not in (None, results["by-id"]["key"])


def test_warnings_are_bounded_in_the_report_and_counted(settings: Settings, tmp_path: Path) -> None:
    mismatched = [
        {"id": f"r{i}", "text": f"Gate {i}.", "speaker": "zh-male", "lang": "en"} for i in range(25)
    ]
    report = Producer(settings).submit_batch(mismatched, batch_id="warn-api").report
    assert report.jobs_sent == 25  # warned, not refused
    assert report.warnings_count == 25
    assert len(report.warnings) == 20
    assert report.warnings[0].startswith("row 1: speaker zh-male (中文男) speaks zh")

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(row) + "\n" for row in mismatched), encoding="utf-8")
    proc = run_cli(settings, "submit", str(rows), "--batch-id", "warn-cli")
    assert proc.returncode == 0, proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "warning:" in ln]
    assert len(warned) == 21
    assert warned[-1].strip() == (
        "warning: and 5 more rows whose lang disagrees with their speaker"
    )


def test_a_worker_accepts_an_alias_from_a_producer_that_did_not_resolve_it(
    settings: Settings, workers: Any
) -> None:
    workers.start(concurrency=1)
    producer = Producer(settings)
    text = f"Doors closing {time.time_ns()}."
    first = producer.submit(text, speaker="英文男", job_id="by-id")
    by_id = first.wait(timeout=120)
    assert by_id.status == "succeeded", by_id

    # A message as an older producer would send it: the alias, unresolved.
    batch_id = "older-producer"
    spec = JobSpec(text=text, speaker="en-male", lang=None, fmt="wav")
    job_id = task_id_for(batch_id, spec.fingerprint())
    state = BatchState(redis.Redis.from_url(settings.broker_url), batch_id, ttl_seconds=3600)
    state.create()
    state.add_rows([("by-alias", job_id)])
    message = build_message(job_id=job_id, batch_id=batch_id, spec=spec, enqueued_at=time.time())
    JobSender(client_app(settings), settings).send([message])

    (by_alias,) = producer.batch(batch_id).wait(timeout=120)
    # Same content key as the id's job: found in the bucket, not synthesized again.
    assert by_alias.status == "cached", by_alias
    assert by_alias.key == by_id.key
