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


def _voiced_hift(model_dir: Path) -> Any:
    """The tiny upstream HiFT with speech-like pitch (the same weights at every call): a
    random f0 predictor leaves every frame unvoiced, which would leave the harmonic source
    untested."""
    from tests.support.hift_voicing import give_speech_like_f0
    from worker.engines.cosyvoice.vocoder import load_hift

    hift = load_hift(model_dir)
    give_speech_like_f0(hift, _mel(300, seed=99))
    return hift


@pytest.fixture()
def hift(tiny_model_dir: Path) -> Any:
    """A fresh upstream HiFT per test (tests fold its weight norm in place)."""
    return _voiced_hift(tiny_model_dir)


def test_the_test_model_has_voiced_and_unvoiced_frames(hift: Any) -> None:
    f0 = hift.f0_predictor(_mel(FRAMES_30S, seed=5)).detach()
    voiced = float((f0 > 10).float().mean())
    assert 0.5 < voiced < 0.995
    assert float(f0.max()) > 200


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


# Tolerances, ONNX Runtime vs upstream PyTorch with the same seed. The convolutions round
# differently (another summation order; the STFTs are direct DFTs): ~1e-7 on one frame. But the
# predicted f0's ~1e-7 relative differences are integrated by the excitation's running phase
# sum, so the source drifts apart along the utterance (a tiny phase shift, not a different
# sound). Measured on the tiny model, worst of speech / source: 2e-6 / 2.3e-5 at 1 s, 8.8e-5 /
# 7.9e-4 at 30 s (peak speech 0.06, source ~0.3). The limits leave ~5x room; a wrong draw,
# phase or sample offset gives differences of 1e-2 and more, and the first second of the
# source, before much drift, is held tighter.
SPEECH_ATOL = 5e-4
SOURCE_ATOL = 5e-3
FIRST_SECOND_ATOL = 2e-4
SAMPLES_1S = 22050


@pytest.fixture(scope="module")
def onnx_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.engines.cosyvoice.vocoder import export_hift_onnx

    path = tmp_path_factory.mktemp("hift") / "hift.onnx"
    export_hift_onnx(_voiced_hift(tiny_model_dir), path)
    return path


def _assert_same(expected: tuple[Any, Any, Any], actual: tuple[Any, Any, Any]) -> None:
    import torch

    (speech, source, after), (onnx_speech, onnx_source, onnx_after) = expected, actual
    assert onnx_speech.shape == speech.shape
    assert onnx_source.shape == source.shape
    assert onnx_speech.dtype == onnx_source.dtype == torch.float32
    assert float(speech.abs().max()) > 0.01  # a silent output would prove nothing
    assert float((onnx_speech - speech).abs().max()) <= SPEECH_ATOL
    assert float((onnx_source - source).abs().max()) <= SOURCE_ATOL
    start = (onnx_source - source)[..., :SAMPLES_1S]
    assert float(start.abs().max()) <= FIRST_SECOND_ATOL
    # The same RNG draws: the next random numbers after the call are the same.
    assert torch.equal(onnx_after, after)


@pytest.mark.parametrize("frames", [FRAMES_1S, 431, 1000, FRAMES_30S])
def test_onnx_matches_pytorch_across_lengths(hift: Any, onnx_file: Path, frames: int) -> None:
    """One exported file serves 1 s to 30 s of audio through its dynamic time axis."""
    from worker.engines.cosyvoice.vocoder import OnnxHift

    mel = _mel(frames, seed=frames)
    expected = _run(hift, mel)
    assert expected[0].shape == (1, frames * 256)
    _assert_same(expected, _run(OnnxHift(onnx_file), mel))


def test_onnx_keeps_the_cached_source(hift: Any, onnx_file: Path) -> None:
    """Streaming passes the previous chunk's source tail: it replaces the start of the new one."""
    import torch

    from worker.engines.cosyvoice.vocoder import OnnxHift

    mel = _mel(120)
    cache = 0.05 * torch.randn(1, 1, 480, generator=torch.Generator().manual_seed(1))
    expected = _run(hift, mel, cache)
    actual = _run(OnnxHift(onnx_file), mel, cache)
    _assert_same(expected, actual)
    assert torch.equal(actual[1][:, :, :480], cache)


def test_onnx_from_bytes_and_a_different_seed(hift: Any, onnx_file: Path) -> None:
    from worker.engines.cosyvoice.vocoder import OnnxHift

    mel = _mel(FRAMES_1S)
    vocoder = OnnxHift(onnx_file.read_bytes(), threads=1)
    _assert_same(_run(hift, mel, seed=3), _run(vocoder, mel, seed=3))
    # The noise really comes from the seed: another seed gives another source.
    other = _run(vocoder, mel, seed=4)
    assert float((other[1] - _run(vocoder, mel, seed=3)[1]).abs().max()) > 1e-3


def test_export_leaves_the_model_untouched(hift: Any, tmp_path: Path) -> None:
    import torch
    from torch.nn.utils import parametrize

    from worker.engines.cosyvoice.vocoder import export_hift_onnx

    mel = _mel(50)
    expected = _run(hift, mel)
    count = sum(parametrize.is_parametrized(m) for m in hift.modules())
    export_hift_onnx(hift, tmp_path / "h.onnx")
    assert sum(parametrize.is_parametrized(m) for m in hift.modules()) == count > 0
    for old, new in zip(expected, _run(hift, mel), strict=True):
        assert torch.equal(old, new)


def test_a_foreign_onnx_file_is_refused(tiny_model_dir: Path) -> None:
    from worker.engines.cosyvoice.vocoder import OnnxHift

    vocoder = OnnxHift(tiny_model_dir / "campplus.onnx")
    with pytest.raises(ValueError, match="export_hift_onnx"):
        vocoder.inference(_mel(10))


def test_stripping_a_copy_leaves_the_original_working(hift: Any) -> None:
    """torch shares a parametrized module's class with its deep copies; folding the copy must
    not break the original (the export folds a copy)."""
    import copy

    import torch

    from worker.engines.cosyvoice.vocoder import strip_weight_norm

    mel = _mel(50)
    expected = _run(hift, mel)
    clone = copy.deepcopy(hift)
    assert strip_weight_norm(clone) == 57
    for old, new in zip(expected, _run(hift, mel), strict=True):
        assert torch.equal(old, new)
    for old, new in zip(expected, _run(clone, mel), strict=True):
        assert torch.equal(old, new)


FORK_SCRIPT = """
import os, sys, torch
from worker.engines.cosyvoice.vocoder import OnnxHift
torch.set_num_threads(1)  # as a worker parent: no torch thread pool before the fork
vocoder = OnnxHift(sys.argv[1], threads=2)
mel = torch.randn(1, 80, 40, generator=torch.Generator().manual_seed(0))
torch.manual_seed(5)
expected = vocoder.inference(mel)[0]  # the parent's session and its 2-thread pool exist
pid = os.fork()
if pid == 0:
    torch.manual_seed(5)
    ok = torch.equal(vocoder.inference(mel)[0], expected)
    ok = ok and vocoder._session_pid == os.getpid()  # its own session and thread pool
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_onnx_runs_in_a_forked_child(onnx_file: Path, tmp_path: Path) -> None:
    """A worker builds its engine before forking: the child gets the same audio, from a
    session of its own (the parent's pool threads do not exist in the child; ONNX Runtime
    1.32 then runs the inherited session on the calling thread alone, slower but correct)."""
    import subprocess
    import sys

    script = tmp_path / "fork_probe.py"
    script.write_text(FORK_SCRIPT, encoding="utf-8")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(script), str(onnx_file)],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
