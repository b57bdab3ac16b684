"""Lexicons and number rules end to end: `submit --lexicon`, the global TTS_LEXICON, real
Celery workers (the fake engine drops each text it is given into a folder), Redis and S3."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.lexicon import REDIS_PREFIX
from core.settings import Settings
from producer.api import Producer
from tests.support.helpers import queue_depth, run_cli

pytestmark = pytest.mark.integration


def engine_inputs(folder: Path) -> list[str]:
    """The texts the fake engine was asked to speak, one per synthesis."""
    return [p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())]


def write_rows(path: Path, token: str) -> Path:
    path.write_text(
        "id,text,speaker,lang\n"
        f"en1,Flight CA1234 to Paris and Lyon {token},en-female,en\n"
        f"zh1,G7次列车18:45发车，开往北京南 {token},zh-female,zh\n",
        encoding="utf-8",
    )
    return path


def test_lexicons_and_number_rules_reach_the_engine_and_the_key(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    spoken = tmp_path / "spoken"
    spoken.mkdir()
    everyone = tmp_path / "global.csv"
    everyone.write_text("lang,match,say\nen,Paris,Paris France\nen,Lyon,Lee-on\n", "utf-8")
    workers.start(concurrency=1, engine="fake", fake_marker_dir=str(spoken), lexicon=str(everyone))
    token = uuid.uuid4().hex
    rows = write_rows(tmp_path / "rows.csv", token)
    batch_lexicon = tmp_path / "batch.json"
    batch_lexicon.write_text(
        json.dumps({"en": {"paris": "Pa-ree"}, "zh": {"北京南": "北京南站"}}, ensure_ascii=False),
        "utf-8",
    )

    done = run_cli(settings, "submit", str(rows), "--lexicon", str(batch_lexicon), "--wait",
                   "--timeout", "120")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The batch lexicon wins over the global one (Paris); the global one still applies (Lyon);
    # the number rules rewrite what no entry produced.
    assert sorted(engine_inputs(spoken)) == sorted(
        [
            f"Flight C A one two three four to Pa-ree and Lee-on {token}",
            f"G 七次列车十八点四十五分发车，开往北京南站 {token}",
        ]
    )

    # The same rows and the same lexicon in another batch: served from storage, no synthesis.
    producer = Producer(settings)
    again = producer.submit_file(rows, lexicon=batch_lexicon).wait(timeout=120)
    assert [r.status for r in again] == ["cached", "cached"]
    assert len(engine_inputs(spoken)) == 2

    # A changed lexicon is a new content key: new audio from the new text.
    changed = tmp_path / "changed.csv"
    changed.write_text("lang,match,say\nen,Paris,Paree\nzh,北京南,北京南站\n", "utf-8")
    third = producer.submit_file(rows, lexicon=changed).wait(timeout=120)
    assert [r.status for r in third] == ["succeeded", "succeeded"]
    assert {r.key for r in third}.isdisjoint({r.key for r in again})
    assert f"Flight C A one two three four to Paree and Lee-on {token}" in engine_inputs(spoken)


def test_a_bad_lexicon_refuses_the_batch_with_one_line(settings: Settings, tmp_path: Path) -> None:
    rows = write_rows(tmp_path / "rows.csv", uuid.uuid4().hex)
    bad = tmp_path / "bad.csv"
    bad.write_text("lang,match,say\nen,Paris,Pa-ree\nfr,Lyon,Lee-on\n", "utf-8")
    refused = run_cli(settings, "submit", str(rows), "--lexicon", str(bad))
    assert refused.returncode == 2
    assert "Traceback" not in refused.stderr
    assert "lexicon bad.csv: row 3, field 'lang': unknown language 'fr'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert queue_depth(redis.Redis.from_url(settings.broker_url)) == 0


def test_a_job_whose_lexicon_expired_fails_naming_it(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    lexicon = tmp_path / "lexicon.csv"
    lexicon.write_text("lang,match,say\nen,Paris,Pa-ree\n", "utf-8")
    rows = [{"id": "a", "text": f"To Paris {uuid.uuid4().hex}", "speaker": "en-male"}]
    # No worker yet: the job waits in the queue while its lexicon vanishes (its TTL ran out).
    batch = Producer(settings).submit_batch(rows, lexicon=lexicon)
    client = redis.Redis.from_url(settings.broker_url)
    assert client.delete(*client.keys(REDIS_PREFIX + "*")) == 1
    workers.start(concurrency=1, engine="fake")
    [result] = batch.wait(timeout=120)
    assert result.status == "failed" and result.reason == "bad_message"
    assert "field 'lexicon'" in (result.error or "") and "no longer stored" in (result.error or "")


def test_a_worker_with_a_bad_global_lexicon_exits_naming_the_entry(
    settings: Settings, tmp_path: Path
) -> None:
    from core.exit_codes import EX_CONFIG
    from tests.test_bad_credentials import one_line, run_worker

    bad = tmp_path / "global.tsv"
    bad.write_text("lang\tmatch\tsay\tkind\nen\tGate (\\d+\tgate \\1\tregex\n", "utf-8")
    code, stderr, _ = run_worker(replace(settings, lexicon=str(bad)))
    assert code == EX_CONFIG, stderr[-3000:]
    line = one_line(stderr)
    assert "TTS_LEXICON: lexicon global.tsv: row 2, field 'match': not a valid regular" in line
