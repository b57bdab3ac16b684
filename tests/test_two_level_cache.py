"""Two cache levels on real services: one synthesis per synthesis key, stored as a lossless
master; every new rendition (format, rate, loudness, silence) made from it with no engine call.
Engine calls are counted by the fake engine's marker files, one per synthesize() call."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from core.contract import master_key, synthesis_key, validate_spec
from core.settings import COSYVOICE_SFT_SPEAKERS, Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import pushgateway_samples, wait_for_task_counts, wait_until
from worker.engines.fake import FakeSynthesizer
from worker.text.prepare import text_rules

pytestmark = pytest.mark.integration

SPEAKER = "英文女"


def fake_identity() -> dict[str, str | int]:
    """The fake engine's identity with the text rules a worker without lexicons applies."""
    return {**FakeSynthesizer().identity(), "text_rules": text_rules([])}


def renditions(url: str, worker: str) -> dict[str, float]:
    """tts_renditions_total of one node, summed by source."""
    totals: dict[str, float] = {}
    for labels, value in pushgateway_samples(url, "tts_renditions_total"):
        if labels.get("worker") == worker:
            totals[labels["source"]] = totals.get(labels["source"], 0.0) + value
    return totals


def test_a_new_rendition_never_synthesizes_again(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    node = workers.start(concurrency=1, fake_marker_dir=str(markers))
    producer = Producer(settings)
    text = f"Platform {uuid.uuid4().hex[:8]}: the train to Leeds is delayed."

    first = producer.submit(text, speaker=SPEAKER).wait(timeout=60)
    assert first.status == "succeeded"
    assert len(list(markers.iterdir())) == 1

    asks: list[dict[str, Any]] = [
        {"fmt": "mp3"},
        {"fmt": "wav", "sample_rate": 8000},
        {"fmt": "flac", "sample_rate": 48000, "loudness": -16, "lead_silence_ms": 500},
        {"fmt": "opus"},
    ]
    for ask in asks:
        result = producer.submit(text, speaker=SPEAKER, **ask).wait(timeout=60)
        # A new object (not a cached one), made with no engine call.
        assert result.status == "succeeded", result.error
        assert len(list(markers.iterdir())) == 1, ask
    # The same rendition again is the first level: cached, no rendition made.
    again = producer.submit(text, speaker=SPEAKER, fmt="mp3").wait(timeout=60)
    assert again.status == "cached"

    # The master: lossless FLAC at the engine's rate, under the synthesis key.
    spec = validate_spec(
        {"text": text, "speaker": SPEAKER},
        speakers=frozenset(COSYVOICE_SFT_SPEAKERS),
        max_chars=500,
    )
    store = AudioStore.from_settings(settings)
    master = store.get(master_key(synthesis_key(fake_identity(), spec)))
    info = sf.info(io.BytesIO(master))
    assert (info.format, info.subtype, info.samplerate) == ("FLAC", "PCM_24", 16000)

    # Metrics count renditions apart from syntheses.
    wait_for_task_counts(settings.pushgateway_url, node.hostname, 6)
    wait_until(
        lambda: (
            renditions(settings.pushgateway_url, node.hostname) == {"synthesis": 1.0, "master": 4.0}
        ),
        timeout=30,
        what="1 rendition from a synthesis and 4 from the master",
    )
    syntheses = [
        value
        for labels, value in pushgateway_samples(
            settings.pushgateway_url, "tts_inference_duration_seconds_count"
        )
        if labels.get("worker") == node.hostname
    ]
    assert sum(syntheses) == 1


def test_renditions_asked_at_once_share_one_synthesis(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    # Four processes, a slow engine: the renditions are in flight together.
    workers.start(concurrency=4, fake_marker_dir=str(markers), fake_delay=1.0)
    text = f"Gate {uuid.uuid4().hex[:8]} is now closed."
    rows = [
        {"id": f"r{i}", "text": text, "speaker": SPEAKER, "format": fmt, "sample_rate": rate}
        for i, (fmt, rate) in enumerate(
            [("wav", 8000), ("mp3", 44100), ("ogg", 24000), ("flac", 48000)]
        )
    ]
    results = Producer(settings).submit_batch(rows).wait(timeout=120)
    assert {r.status for r in results} == {"succeeded"}, [r.error for r in results]
    assert len(list(markers.iterdir())) == 1


def test_another_speed_is_another_synthesis() -> None:
    # Speed changes the speech itself; format, rate, loudness and silence do not.
    speakers = frozenset(COSYVOICE_SFT_SPEAKERS)
    identity = FakeSynthesizer().identity()

    def key(**fields: Any) -> str:
        spec = validate_spec(
            {"text": "Hi", "speaker": SPEAKER, **fields}, speakers=speakers, max_chars=500
        )
        return synthesis_key(identity, spec)

    base = key()
    assert base == key(format="mp3", sample_rate=8000, loudness=-16, lead_silence_ms=100)
    assert base != key(speed=1.5)
    assert base != key(lang="en")
    # A lexicon (its digest in the worker's text rules) is another synthesis.
    spec = validate_spec({"text": "Hi", "speaker": SPEAKER}, speakers=speakers, max_chars=500)
    assert synthesis_key({**identity, "text_rules": "1:abc"}, spec) != base


def test_the_demo_announcement_in_three_renditions_with_espeak(
    settings: Settings, workers: Any
) -> None:
    # What `make demo` shows: PA 48 kHz at -16 LUFS, IVR 8 kHz, MP3, from one synthesis.
    from worker.render import integrated_loudness

    example = Path(__file__).resolve().parent.parent / "examples" / "renditions.csv"
    node = workers.start(engine="espeak", concurrency=2)
    results = {r.row_id: r for r in Producer(settings).submit_file(example).wait(timeout=180)}
    assert {r.status for r in results.values()} == {"succeeded"}
    store = AudioStore.from_settings(settings)
    expected = {"pa-48k": (48000, -16.0), "ivr-8k": (8000, -18.0), "web-mp3": (24000, -16.0)}
    for row_id, (rate, target) in expected.items():
        key = results[row_id].key
        assert key is not None
        audio, got = sf.read(io.BytesIO(store.get(key)), dtype="float32")
        assert got == rate and audio.ndim == 1
        assert abs(integrated_loudness(audio, rate) - target) < 0.5, row_id
    wait_for_task_counts(settings.pushgateway_url, node.hostname, 3)
    wait_until(
        lambda: (
            renditions(settings.pushgateway_url, node.hostname) == {"synthesis": 1.0, "master": 2.0}
        ),
        timeout=30,
        what="one synthesis, two renditions from its master",
    )
