"""The project's own LLM decode loop against upstream's, on the tiny random model: the same
log-probabilities teacher-forced, the same speech tokens free-running under the same seed.

The figures of the full-size model come from `python -m benchmarks.cosyvoice_parity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.cosyvoice_parity import (
    TEXTS,
    compare_log_probs,
    llm_parity,
    references,
    sft_inputs,
    upstream_teacher_forced,
    upstream_tokens,
)
from core.errors import ConfigError
from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)


@pytest.fixture(scope="module")
def upstream_engine(tiny_model_dir: Path) -> CosyVoiceSynthesizer:
    return CosyVoiceSynthesizer(str(tiny_model_dir), threads=1, preset="upstream")


def _decode_args(model_input: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch

    text = model_input["text"]
    return text, torch.tensor([text.shape[1]], dtype=torch.int32), model_input["llm_embedding"]


@pytest.mark.parametrize("index", [0, 1], ids=["zh", "en"])
def test_teacher_forced_log_probs_match_upstream(
    upstream_engine: CosyVoiceSynthesizer, tiny_engine: CosyVoiceSynthesizer, index: int
) -> None:
    lang, speaker, text = TEXTS[index]
    llm = upstream_engine.upstream.model.llm
    for model_input in sft_inputs(upstream_engine.upstream, text, speaker, lang):
        tokens = upstream_tokens(llm, model_input, seed=3)
        assert len(tokens) > 256  # past the position tables' first growth
        reference = upstream_teacher_forced(llm, model_input, tokens)
        ours = tiny_engine.decoder.teacher_forced(*_decode_args(model_input), tokens)
        parity = compare_log_probs(reference, ours)
        assert parity.steps == len(tokens) + 1
        assert parity.max_relative_difference < 1e-4, parity
        assert parity.top1_agreement == 1.0, parity


def test_free_running_tokens_match_upstream_on_every_text(
    upstream_engine: CosyVoiceSynthesizer, tiny_engine: CosyVoiceSynthesizer
) -> None:
    refs = references(upstream_engine.upstream, TEXTS, seed=0)
    report = llm_parity(tiny_engine.decoder, refs, seed=0)
    free = report["free_running"]
    assert free["chunks"] >= 22
    assert free["identical"] == free["chunks"], free["divergences"]
    assert report["teacher_forced"]["max_relative_difference"] < 1e-4


def test_a_divergent_token_is_detected(
    upstream_engine: CosyVoiceSynthesizer, tiny_engine: CosyVoiceSynthesizer
) -> None:
    # The control of the comparison above: a different seed gives different tokens.
    lang, speaker, text = TEXTS[1]
    (model_input,) = sft_inputs(upstream_engine.upstream, text, speaker, lang)
    import torch

    torch.manual_seed(1)
    ours = list(tiny_engine.decoder.generate(*_decode_args(model_input)))
    assert ours != upstream_tokens(upstream_engine.upstream.model.llm, model_input, seed=0)


def test_position_tables_equal_the_projection_of_every_position(
    tiny_engine: CosyVoiceSynthesizer,
) -> None:
    import torch

    tables = tiny_engine.decoder.positions
    tables.ensure(600)
    encoder = tiny_engine.upstream.model.llm.llm
    pe = encoder.embed.pos_enc.pe[0]
    center = pe.shape[0] // 2
    rows = pe[center - 599 : center + 1].flip(0)  # relative positions 0..599
    for layer, table in zip(encoder.encoders, tables.tables, strict=True):
        with torch.inference_mode():
            expected = layer.self_attn.linear_pos(rows)
        got = table[:, :600].transpose(0, 1).reshape(600, -1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_exact_preset_gives_upstream_audio(
    upstream_engine: CosyVoiceSynthesizer, tiny_engine: CosyVoiceSynthesizer
) -> None:
    import numpy as np

    lang, speaker, text = TEXTS[0]
    reference = upstream_engine.synthesize(text, speaker=speaker, lang=lang)
    ours = tiny_engine.synthesize(text, speaker=speaker, lang=lang)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert tiny_engine.last_stages.speech_tokens == upstream_engine.last_stages.speech_tokens > 0


def test_upstream_preset_is_upstream_inference_sft(
    upstream_engine: CosyVoiceSynthesizer,
) -> None:
    import numpy as np
    import torch

    lang, speaker, text = TEXTS[1]
    audio = upstream_engine.synthesize(text, speaker=speaker, lang=lang)
    torch.manual_seed(0)  # the engine's seed
    model = upstream_engine.upstream.model
    pieces = [
        out["tts_speech"].reshape(-1).numpy()
        for model_input in sft_inputs(upstream_engine.upstream, text, speaker, lang)
        for out in model.tts(**model_input, stream=False, speed=1.0)
    ]
    assert np.array_equal(np.concatenate(pieces), audio)


def test_unsupported_llm_is_refused_with_the_setting_to_use() -> None:
    import torch

    from worker.engines.cosyvoice.decode import SpeechTokenDecoder

    with pytest.raises(ConfigError, match="TTS_COSYVOICE_PRESET=upstream"):
        SpeechTokenDecoder(torch.nn.Linear(2, 2))
