"""The cosyvoice engine on a tiny random model: the real upstream loader and real SFT inference.

The random LLM rarely emits end-of-speech, so the audio length sits between the LLM's floor and
cap (2 and 20 speech tokens per text token; 50 speech tokens a second).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError, InvalidJob
from core.settings import COSYVOICE_SFT_SPEAKERS, Settings
from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer, default_threads
from worker.synth import load_engine

pytestmark = pytest.mark.cosyvoice
# Fixtures shared with the other CosyVoice tests (conftest.py is the harness's).
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

EN = "The next train to the airport leaves from platform two."
ZH = "各位旅客请注意，开往机场的列车即将进站。"


def _token_bounds(engine: CosyVoiceSynthesizer, text: str, lang: str | None) -> tuple[int, int]:
    """(min, max) samples the LLM's token floor and cap allow for `text`."""
    tokenizer = engine.upstream.frontend.tokenizer
    chunks = engine._splitter.split(text, lang=lang)
    n_tokens = [len(tokenizer.encode(c, allowed_special="all")) for c in chunks]
    per_token = engine.sample_rate / 50  # 50 speech tokens a second
    low = sum(int(2 * n) for n in n_tokens) * per_token * 0.9
    high = sum(int(20 * n) for n in n_tokens) * per_token * 1.1
    return int(low), int(high)


@pytest.mark.parametrize(("text", "speaker", "lang"), [(EN, "英文女", "en"), (ZH, "中文男", None)])
def test_sft_synthesis(
    tiny_engine: CosyVoiceSynthesizer, text: str, speaker: str, lang: str | None
) -> None:
    audio = tiny_engine.synthesize(text, speaker=speaker, lang=lang)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert np.isfinite(audio).all()
    assert 0 < np.abs(audio).max() <= 1.0
    low, high = _token_bounds(tiny_engine, text, lang)
    assert low <= audio.size <= high, (low, audio.size, high)


def test_engine_attributes(tiny_engine: CosyVoiceSynthesizer, tiny_model_dir: Path) -> None:
    assert tiny_engine.name == "cosyvoice"
    assert tiny_engine.sample_rate == 22050
    assert tiny_engine.speakers() == frozenset(COSYVOICE_SFT_SPEAKERS)
    assert tiny_engine.model_id.startswith("cosyvoice-300m-sft-random-")
    assert tiny_engine.load_seconds > 0
    identity = tiny_engine.identity()
    assert identity["model"] == tiny_engine.model_id
    assert identity["sample_rate"] == 22050


def test_same_request_same_audio(tiny_engine: CosyVoiceSynthesizer) -> None:
    a = tiny_engine.synthesize(EN, speaker="英文男", lang="en")
    b = tiny_engine.synthesize(EN, speaker="英文男", lang="en")
    c = tiny_engine.synthesize(EN, speaker="英文女", lang="en")
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.allclose(a, c)


def test_long_text_is_split_and_concatenated(tiny_engine: CosyVoiceSynthesizer) -> None:
    sentence = "Passengers for the ferry should proceed to gate number four now. "
    long_text = sentence * 12
    chunks = tiny_engine._splitter.split(long_text, lang="en")
    assert len(chunks) >= 2
    one = tiny_engine.synthesize(sentence, speaker="英文女", lang="en")
    many = tiny_engine.synthesize(long_text, speaker="英文女", lang="en")
    assert np.isfinite(many).all()
    assert many.size > 4 * one.size


def test_french_looking_text_keeps_english_rules(tiny_engine: CosyVoiceSynthesizer) -> None:
    # Two of the package's "French words" (car, or) plus a number: upstream would read the
    # number in French ("douze"); the engine keeps the English rules.
    chunks = tiny_engine._splitter.split("The car leaves at 12, or later.", lang=None)
    text = " ".join(chunks)
    assert "twelve" in text and "douze" not in text
    chunks = tiny_engine._splitter.split("Café ouvert jusqu'à 12 heures.", lang="en")
    assert "douze" not in " ".join(chunks)


def test_unknown_speaker_is_a_permanent_error(tiny_engine: CosyVoiceSynthesizer) -> None:
    with pytest.raises(InvalidJob, match="no speaker 'nobody'") as info:
        tiny_engine.synthesize(EN, speaker="nobody", lang="en")
    assert info.value.reason == "unknown_speaker"


def test_punctuation_only_text_is_invalid(tiny_engine: CosyVoiceSynthesizer) -> None:
    with pytest.raises(InvalidJob) as info:
        tiny_engine.synthesize("。。。", speaker="中文女", lang="zh")
    assert info.value.reason == "invalid_text"


def test_missing_file_fails_before_loading(copy_model: Callable[..., Path]) -> None:
    model = copy_model(without=("flow.pt", "spk2info.pt"))
    settings = Settings(engine="cosyvoice", model_dir=str(model))
    with pytest.raises(ConfigError, match=r"lacks 2 of 7 model files: flow.pt, spk2info.pt"):
        load_engine(settings)


def test_missing_directory_is_never_downloaded(tmp_path: Path) -> None:
    # Upstream takes a path that does not exist for a hub model id: refused before that.
    settings = Settings(engine="cosyvoice", model_dir=str(tmp_path / "iic" / "CosyVoice-300M-SFT"))
    with pytest.raises(ConfigError, match="is not a directory"):
        load_engine(settings)
    assert not (tmp_path / "iic").exists()


def test_threads_default_to_cores_per_process() -> None:
    base = Settings()
    assert default_threads(dataclasses.replace(base, threads=3)) == 3
    assert default_threads(dataclasses.replace(base, threads=0, concurrency=10_000)) == 1
    # A batched node is one process: it gets every core, whatever TTS_CONCURRENCY says.
    batched = dataclasses.replace(base, engine="cosyvoice", engine_batch=8, concurrency=10_000)
    assert default_threads(batched) == (os.cpu_count() or 1)


def _edit_tensor(path: Path, key: str) -> None:
    import torch

    state = torch.load(path, map_location="cpu")
    tensor = state[key]
    # Random, not uniform: a constant added to the LLM's output layer shifts every logit alike
    # and leaves the sampled tokens unchanged.
    noise = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(1))
    state[key] = tensor + noise * tensor.std()
    torch.save(state, path)


@pytest.mark.parametrize(
    ("file", "key"), [("llm.pt", "llm_decoder.weight"), ("flow.pt", "encoder_proj.weight")]
)
def test_output_follows_the_weights_on_disk(
    tiny_engine: CosyVoiceSynthesizer, copy_model: Callable[..., Path], file: str, key: str
) -> None:
    """A loader that skipped `file` would give the same audio after the edit."""
    baseline = tiny_engine.synthesize(EN, speaker="英文女", lang="en")
    model = copy_model()
    _edit_tensor(model / file, key)
    edited = CosyVoiceSynthesizer(str(model), threads=1)
    assert edited.model_id != tiny_engine.model_id
    audio = edited.synthesize(EN, speaker="英文女", lang="en")
    assert np.isfinite(audio).all()
    assert audio.shape != baseline.shape or not np.allclose(audio, baseline)


def test_unedited_copy_gives_the_same_audio(
    tiny_engine: CosyVoiceSynthesizer, copy_model: Callable[..., Path]
) -> None:
    """The control for the test above: a second load of the same weights gives the very same
    audio, so a difference there comes from the edited tensor."""
    baseline = tiny_engine.synthesize(EN, speaker="英文女", lang="en")
    again = CosyVoiceSynthesizer(str(copy_model()), threads=1)
    assert np.array_equal(again.synthesize(EN, speaker="英文女", lang="en"), baseline)


def test_speed_stretches_the_speech(tiny_engine: CosyVoiceSynthesizer) -> None:
    # The same tokens (same seed), the mel resampled before the vocoder: about half as long at
    # speed 2, as upstream's inference_sft(speed=2) would be.
    normal = tiny_engine.synthesize(EN, speaker="英文男", lang="en")
    fast = tiny_engine.synthesize(EN, speaker="英文男", lang="en", speed=2.0)
    slow = tiny_engine.synthesize(EN, speaker="英文男", lang="en", speed=0.5)
    hop = 256  # samples per mel frame (22050 Hz)
    assert abs(fast.size - normal.size / 2) <= 2 * hop, (fast.size, normal.size)
    assert abs(slow.size - normal.size * 2) <= 2 * hop, (slow.size, normal.size)
    assert np.isfinite(fast).all() and np.abs(fast).max() > 0
