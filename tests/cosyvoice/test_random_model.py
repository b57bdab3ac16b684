"""The random model builder: a complete directory, marked as noise, never over a real model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.settings import COSYVOICE_SFT_SPEAKERS
from worker.engines.cosyvoice.model_dir import RANDOM_MARKER, REQUIRED_FILES, check_model_dir

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)


def test_tiny_model_is_complete_and_marked(tiny_model_dir: Path) -> None:
    assert check_model_dir(str(tiny_model_dir)) == tiny_model_dir
    marker = json.loads((tiny_model_dir / RANDOM_MARKER).read_text(encoding="utf-8"))
    assert marker["random_weights"] is True
    assert "testing only" in marker["purpose"]
    assert marker["size"] == "tiny"
    assert (
        (tiny_model_dir / "cosyvoice.yaml")
        .read_text(encoding="utf-8")
        .startswith("# RANDOM WEIGHTS")
    )


def test_speakers_are_the_seven_sft_ids(tiny_model_dir: Path) -> None:
    import torch

    spk2info = torch.load(tiny_model_dir / "spk2info.pt", map_location="cpu")
    assert tuple(spk2info) == COSYVOICE_SFT_SPEAKERS
    for info in spk2info.values():
        assert info["embedding"].shape == (1, 192)


def test_onnx_files_run_with_the_published_inputs(tiny_model_dir: Path) -> None:
    import onnxruntime

    campplus = onnxruntime.InferenceSession(str(tiny_model_dir / "campplus.onnx"))
    assert [i.name for i in campplus.get_inputs()] == ["input"]
    fbank = np.random.default_rng(0).standard_normal((1, 120, 80), dtype=np.float32)
    (embedding,) = campplus.run(None, {"input": fbank})
    assert embedding.shape == (1, 192)

    tokenizer = onnxruntime.InferenceSession(str(tiny_model_dir / "speech_tokenizer_v1.onnx"))
    assert [i.name for i in tokenizer.get_inputs()] == ["feats", "feats_length"]
    mel = np.random.default_rng(1).standard_normal((1, 128, 50), dtype=np.float32)
    tokens = tokenizer.run(None, {"feats": mel, "feats_length": np.array([50], dtype=np.int32)})
    assert tokens[0].shape == (1, 50) and tokens[0].dtype == np.int32
    assert tokens[0].min() >= 0 and tokens[0].max() < 4096


def test_state_dicts_match_the_config(tiny_model_dir: Path) -> None:
    import torch
    from hyperpyyaml import load_hyperpyyaml

    with open(tiny_model_dir / "cosyvoice.yaml", encoding="utf-8") as f:
        configs = load_hyperpyyaml(f)
    for part in ("llm", "flow", "hift"):
        state = torch.load(tiny_model_dir / f"{part}.pt", map_location="cpu")
        expected = configs[part].state_dict()
        assert state.keys() == expected.keys()
        assert all(state[k].shape == expected[k].shape for k in state)


def test_a_real_model_is_never_overwritten(tmp_path: Path, cosyvoice_runtime: None) -> None:
    from worker.engines.cosyvoice.random_model import make_random_model

    real = tmp_path / "real"
    real.mkdir()
    (real / "llm.pt").write_bytes(b"trained weights")
    with pytest.raises(FileExistsError, match="not random"):
        make_random_model(real, size="tiny")
    assert (real / "llm.pt").read_bytes() == b"trained weights"


def test_unknown_size_is_refused(tmp_path: Path, cosyvoice_runtime: None) -> None:
    from worker.engines.cosyvoice.random_model import make_random_model

    with pytest.raises(ValueError, match="size must be one of"):
        make_random_model(tmp_path / "m", size="huge")
    assert not any((tmp_path / "m" / n).exists() for n in REQUIRED_FILES)
