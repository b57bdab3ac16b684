"""The CosyVoice engine inside the real pipeline: a tiny random-weights model through the real
loader and real SFT inference in a real Celery worker, landing as audio objects in S3; and a
worker pointed at a missing model directory exits at once with one line naming what is missing.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import pushgateway_samples, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cosyvoice]
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

ROWS = [
    {"id": "zh", "text": "各位旅客请注意，列车即将进站。", "speaker": "中文女"},
    {"id": "en", "text": "The train to the airport leaves now.", "speaker": "英文男", "lang": "en"},
]


def test_tiny_model_in_a_real_worker_lands_in_s3(
    settings: Settings, workers: Any, tiny_model_dir: Path
) -> None:
    node = workers.start(
        concurrency=2, engine="cosyvoice", model_dir=str(tiny_model_dir), threads=1
    )
    results = Producer(settings).submit_batch(ROWS).wait(timeout=600)
    assert [r.status for r in results] == ["succeeded", "succeeded"], [r.error for r in results]

    store = AudioStore.from_settings(settings)
    for row, result in zip(ROWS, results, strict=True):
        assert result.key is not None
        samples, rate = sf.read(io.BytesIO(store.get(result.key)), dtype="float32")
        assert rate == 22050
        assert np.isfinite(samples).all() and float(np.abs(samples).max()) > 0
        # At most 20 speech tokens (50 a second) per text token, and a text token per byte at
        # most: the random LLM runs to its cap, never past it.
        cap_seconds = 20 * len(row["text"].encode("utf-8")) / 50
        assert 0.1 < len(samples) / rate <= cap_seconds
        head = store.head(result.key)
        assert head is not None and head.metadata["engine"] == "cosyvoice"
        assert head.metadata["model"].startswith("cosyvoice-300m-sft-random-")

    # The engine was loaded once in the parent; its load time and model are in the metrics.
    info = wait_until(
        lambda: [
            labels
            for labels, _ in pushgateway_samples(settings.pushgateway_url, "tts_worker_info")
            if labels.get("worker") == node.hostname
        ],
        timeout=30,
        what="worker info pushed",
    )
    assert {labels["engine"] for labels in info} == {"cosyvoice"}
    loads = [
        value
        for labels, value in pushgateway_samples(
            settings.pushgateway_url, "tts_engine_load_seconds"
        )
        if labels.get("worker") == node.hostname
    ]
    assert loads and all(value > 0 for value in loads)


BATCH_ROWS = [
    {"id": "b-zh-long", "text": "本次列车终点站是上海虹桥，请带好随身物品。", "speaker": "中文女"},
    {"id": "b-en-short", "text": "Thank you.", "speaker": "英文男", "lang": "en"},
    {"id": "b-zh-short", "text": "欢迎乘坐本次列车。", "speaker": "中文男"},
    {"id": "b-en-long", "text": "Please mind the gap between the train and the platform.",
     "speaker": "英文女", "lang": "en"},
]  # fmt: skip


def test_a_batched_worker_decodes_jobs_together_and_each_sounds_as_alone(
    settings: Settings, workers: Any, tiny_model_dir: Path, tiny_engine: Any
) -> None:
    # One process holding 4 jobs (threads pool); a second of wait lets all four join at once.
    node = workers.start(
        engine="cosyvoice",
        model_dir=str(tiny_model_dir),
        threads=1,
        engine_batch=4,
        engine_batch_wait_ms=1000,
    )
    results = Producer(settings).submit_batch(BATCH_ROWS).wait(timeout=600)
    assert [r.status for r in results] == ["succeeded"] * 4, [r.error for r in results]
    store = AudioStore.from_settings(settings)
    for row, result in zip(BATCH_ROWS, results, strict=True):
        assert result.key is not None and not result.cached
        stored, _ = sf.read(io.BytesIO(store.get(result.key)), dtype="float32")
        alone = tiny_engine.synthesize(row["text"], speaker=row["speaker"], lang=row.get("lang"))
        assert stored.shape == alone.shape
        # The stored WAV is 16-bit: equal to the job synthesized alone within one step of it.
        assert float(np.abs(stored - np.clip(alone, -1, 1)).max()) <= 2 / 32768

    def batch_metrics() -> dict[str, float]:
        found = {}
        for name in (
            "tts_engine_batch_size_count",
            "tts_engine_batch_size_sum",
            "tts_engine_speech_tokens_total",
        ):
            found[name] = sum(
                value
                for labels, value in pushgateway_samples(settings.pushgateway_url, name)
                if labels.get("worker") == node.hostname
            )
        return found

    metrics = wait_until(
        lambda: (m := batch_metrics())["tts_engine_batch_size_count"] > 0 and m,
        timeout=30,
        what="batch metrics pushed",
    )
    steps, rows = metrics["tts_engine_batch_size_count"], metrics["tts_engine_batch_size_sum"]
    # Each row of a step is one speech token; steps were shared (more rows than steps).
    assert metrics["tts_engine_speech_tokens_total"] == rows
    assert rows / steps > 1.5, metrics
    node.stop()


@pytest.mark.parametrize("preset", ["upstream", "fast"])
def test_each_preset_lands_in_s3_under_its_own_key(
    settings: Settings, workers: Any, tiny_model_dir: Path, preset: str
) -> None:
    # The default (exact) preset is the test above; a row keyed under one preset is never
    # served to another, since the preset is part of the engine identity.
    node = workers.start(
        concurrency=1,
        engine="cosyvoice",
        model_dir=str(tiny_model_dir),
        threads=1,
        cosyvoice_preset=preset,
    )
    rows = [{**ROWS[1], "id": f"en-{preset}"}]
    (result,) = Producer(settings).submit_batch(rows).wait(timeout=600)
    assert result.status == "succeeded", result.error
    assert result.key is not None and not result.cached
    head = AudioStore.from_settings(settings).head(result.key)
    assert head is not None and head.metadata["engine"] == "cosyvoice"
    node.stop()


@pytest.mark.parametrize("missing", ["dir", "llm.pt"])
def test_worker_with_a_broken_model_dir_exits_with_one_line(
    settings: Settings, tiny_model_dir: Path, tmp_path: Path, missing: str
) -> None:
    if missing == "dir":
        model_dir = tmp_path / "no-such-model"
    else:
        import shutil

        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir)
        (model_dir / missing).unlink()
    env = {
        **os.environ,
        **settings.to_env(),
        "TTS_ENGINE": "cosyvoice",
        "TTS_MODEL_DIR": str(model_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "producer.cli", "worker", "--concurrency", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 78, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("tts-batch worker:")]
    assert len(lines) == 1, done.stderr[-2000:]
    assert str(model_dir) in lines[0]
    if missing != "dir":
        assert missing in lines[0]
    assert "Traceback" not in done.stderr
