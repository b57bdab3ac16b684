"""Job output options end to end: producer -> Redis -> real Celery worker -> SeaweedFS, every
format decoded from the bucket and measured; bad options refused at submit by row and field."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from core.contract import FORMATS
from core.errors import InvalidBatch
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import run_cli
from worker.render import integrated_loudness

pytestmark = pytest.mark.integration


def decode(store: AudioStore, key: str) -> tuple[np.ndarray, int, int]:
    samples, rate = sf.read(io.BytesIO(store.get(key)), dtype="float32", always_2d=True)
    return samples[:, 0], rate, samples.shape[1]


def test_every_format_through_a_worker_and_s3(settings: Settings, workers: Any) -> None:
    workers.start(concurrency=2)  # the fake engine: a 16 kHz tone
    text = f"Gate {uuid.uuid4().hex[:8]} closes in five minutes."
    rows = [
        {
            "id": f"{fmt}-{rate}",
            "text": text,
            "speaker": "英文女",
            "format": fmt,
            "sample_rate": rate,
            "loudness": -16 if rate == 48000 else -23,
            "lead_silence_ms": 300,
            "trail_silence_ms": 200,
        }
        for fmt in FORMATS
        for rate in (8000, 48000)
    ]
    results = Producer(settings).submit_batch(rows).wait(timeout=120)
    assert {r.status for r in results} == {"succeeded"}, [r.error for r in results]
    store = AudioStore.from_settings(settings)
    lengths = set()
    for result in results:
        fmt, rate_text = result.row_id.split("-")
        rate = int(rate_text)
        assert result.key is not None and result.key.endswith(f".{fmt}")
        audio, got_rate, channels = decode(store, result.key)
        assert (got_rate, channels) == (rate, 1), result.row_id
        target = -16 if rate == 48000 else -23
        assert abs(integrated_loudness(audio, rate) - target) < 0.5, result.row_id
        assert result.audio_seconds == pytest.approx(audio.shape[0] / rate, abs=0.002)
        # The lead is digital silence; a lossy codec may smear the onset back by a few ms.
        lead = round(0.3 * rate) - (1 if fmt in ("wav", "flac") else round(0.010 * rate))
        head = np.abs(audio[:lead])
        assert (not head.any()) if fmt in ("wav", "flac") else head.max() < 1e-3, result.row_id
        lengths.add(round(audio.shape[0] / rate, 2))
    # One tone in ten renditions: the same length whatever the format and rate.
    assert len(lengths) == 1, lengths


def test_defaults_are_the_old_output_and_rows_win_over_batch_defaults(
    settings: Settings, workers: Any
) -> None:
    workers.start(concurrency=1)
    text = f"Train {uuid.uuid4().hex[:8]} is delayed."
    plain = Producer(settings).submit(text, speaker="英文女").wait(timeout=60)
    store = AudioStore.from_settings(settings)
    assert plain.key is not None and plain.key.endswith(".wav")
    info = sf.info(io.BytesIO(store.get(plain.key)))
    assert (info.samplerate, info.subtype) == (16000, "PCM_16")

    rows = [
        {"id": "batch-default", "text": text, "speaker": "英文女"},
        {"id": "own-format", "text": text, "speaker": "英文女", "format": "flac"},
    ]
    defaults = {"format": "mp3", "sample_rate": 8000}
    results = {
        r.row_id: r
        for r in Producer(settings).submit_batch(rows, defaults=defaults).wait(timeout=60)
    }
    assert results["batch-default"].key is not None and results["own-format"].key is not None
    assert results["batch-default"].key.endswith(".mp3")
    assert results["own-format"].key.endswith(".flac")
    assert decode(store, results["own-format"].key)[1] == 8000


def test_bad_options_at_submit_are_row_and_field_errors(settings: Settings) -> None:
    rows: list[dict[str, Any]] = [
        {"id": "ok", "text": "Hello", "speaker": "英文女", "loudness": -16},
        {"id": "loud", "text": "Hello", "speaker": "英文女", "loudness": 3},
        {"id": "rate", "text": "Hello", "speaker": "英文女", "sample_rate": 11025},
        {"id": "sil", "text": "Hello", "speaker": "英文女", "lead_silence_ms": "soon"},
    ]
    with pytest.raises(InvalidBatch) as info:
        Producer(settings).submit_batch(rows)
    named = {(e.row, e.field) for e in info.value.errors}
    assert named == {(2, "loudness"), (3, "sample_rate"), (4, "lead_silence_ms")}


def test_cli_batch_defaults_and_bad_option_exit_codes(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=1)
    jobs = tmp_path / "jobs.csv"
    tag = uuid.uuid4().hex[:8]
    jobs.write_text(
        "id,text,speaker,format,loudness\n"
        f"a,Platform {tag} one,英文女,,\n"
        f"b,Platform {tag} two,英文女,ogg,-30\n",
        encoding="utf-8",
    )
    done = run_cli(
        settings,
        *("submit", str(jobs), "--batch-id", f"opts-{tag}", "--wait"),
        *("--format", "mp3", "--rate", "8000", "--loudness", "-16"),
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "audio"
    fetched = run_cli(settings, "fetch", f"opts-{tag}", "--to", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.mp3", "b.ogg"]
    for name, target in (("a.mp3", -16), ("b.ogg", -30)):
        audio, rate = sf.read(str(out / name), dtype="float32")
        assert rate == 8000
        assert abs(integrated_loudness(audio, rate) - target) < 0.5, name

    refused = run_cli(settings, "submit", str(jobs), "--loudness", "-90")
    assert refused.returncode == 2
    assert "row 2, field 'loudness'" in refused.stderr and "Traceback" not in refused.stderr
    bad_rate = run_cli(settings, "submit", str(jobs), "--rate", "fast")
    assert bad_rate.returncode == 2 and "field 'sample_rate'" in bad_rate.stderr
    assert "Traceback" not in bad_rate.stderr


def test_speed_is_refused_by_an_engine_without_it(settings: Settings, workers: Any) -> None:
    workers.start(concurrency=1)  # the fake engine has no speed
    result = (
        Producer(settings).submit("Mind the gap.", speaker="英文女", speed=1.5).wait(timeout=60)
    )
    assert (result.status, result.reason) == ("failed", "unsupported_format")
    assert result.error is not None and "speed" in result.error


def test_espeak_speed_changes_the_pace(settings: Settings, workers: Any) -> None:
    workers.start(engine="espeak", concurrency=1)
    producer = Producer(settings)
    text = f"The train to {uuid.uuid4().hex[:6]} departs from platform nine."
    normal = producer.submit(text, speaker="英文女").wait(timeout=120)
    fast = producer.submit(text, speaker="英文女", speed=2.0).wait(timeout=120)
    assert normal.ok and fast.ok, (normal.error, fast.error)
    assert normal.audio_seconds and fast.audio_seconds
    # Twice the words per minute: clearly shorter (espeak's pauses do not all scale).
    assert fast.audio_seconds < 0.75 * normal.audio_seconds
