"""The HiFT vocoder speed-ups against upstream PyTorch on the tiny random model: weight norm
folded exactly, and the ONNX Runtime path equal within tolerance, RNG use included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

# 22050 Hz and 256 samples per mel frame: 86.1 frames per second of audio.
FRAMES_1S = 87
FRAMES_30S = 2584


@pytest.fixture()
def hift(tiny_model_dir: Path) -> Any:
    """A fresh upstream HiFT per test (tests fold its weight norm in place)."""
    from worker.engines.cosyvoice.vocoder import load_hift

    return load_hift(tiny_model_dir)


def _mel(frames: int, seed: int = 0) -> Any:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 80, frames, generator=generator)


def _run(vocoder: Any, mel: Any, cache: Any = None, seed: int = 7) -> tuple[Any, Any, Any]:
    """`vocoder.inference` from a seeded global RNG; also the next draw after it, which shows
    how much of the RNG the call consumed."""
    import torch

    torch.manual_seed(seed)
    if cache is None:
        speech, source = vocoder.inference(mel)
    else:
        speech, source = vocoder.inference(mel, cache_source=cache)
    return speech, source, torch.rand(4)


def test_weight_norm_removal_is_exact(hift: Any) -> None:
    import torch
    from torch.nn.utils import parametrize

    from worker.engines.cosyvoice.vocoder import strip_weight_norm

    mel = _mel(300)
    before = _run(hift, mel)
    # The tiny HiFT has 57 weight-normed convolutions (f0 predictor 5, conv_pre/post 2,
    # upsamplers 2, 8 residual blocks of 6).
    assert strip_weight_norm(hift) == 57
    assert not any(parametrize.is_parametrized(m) for m in hift.modules())
    assert strip_weight_norm(hift) == 0
    after = _run(hift, mel)
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)


def test_old_hook_style_weight_norm_is_removed_too() -> None:
    import torch
    from torch.nn.utils import weight_norm

    from worker.engines.cosyvoice.vocoder import strip_weight_norm

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        weight_norm(torch.nn.Conv1d(4, 4, 3, padding=1)), torch.nn.Conv1d(4, 4, 1)
    )
    x = torch.randn(1, 4, 10)
    expected = net(x)
    assert strip_weight_norm(net) == 1
    assert not hasattr(net[0], "weight_g")
    assert torch.equal(net(x), expected)
