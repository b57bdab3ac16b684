"""The flow stage on the tiny random model: our ODE loop against upstream, the ONNX Runtime
estimator against PyTorch, fewer-step options, and the export cache.

Tolerances: at upstream settings our loop must be bit-identical (same operations in the same
order, same RNG draw). ONNX Runtime fuses and reorders fp32 arithmetic (layer norm, GELU,
attention), so its velocity differs by rounding: measured ~1e-6 relative here, bounded at 1e-5
per call (10x margin); over 10 Euler steps the errors add, bounded at 1e-4.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.engines.cosyvoice.export_cache import artifact_key_parts, cache_dirs, cached_artifact

pytest_plugins = ("tests.support.cosyvoice_fixtures",)

MEL_FRAMES_PER_SECOND = 22050 / 256


@pytest.fixture(scope="module")
def tiny_flow(tiny_model_dir: Path) -> Any:
    import torch

    from worker.engines.cosyvoice.flow_solver import load_flow

    torch.set_num_threads(1)
    return load_flow(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_flow: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.engines.cosyvoice.flow_onnx import export_estimator

    path = tmp_path_factory.mktemp("onnx") / "estimator.onnx"
    # Exported at 200 frames: every other length below goes through the dynamic axis.
    export_estimator(tiny_flow.decoder.estimator, path, frames=200)
    return path


def _flow_args(
    tokens: int, *, prompt_tokens: int = 0, cached_frames: int = 0, seed: int = 3
) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    prompt_frames = int(prompt_tokens / 50 * 22050 / 256)
    return {
        "token": torch.randint(0, 4096, (1, tokens), generator=g, dtype=torch.int32),
        "token_len": torch.tensor([tokens], dtype=torch.int32),
        "prompt_token": torch.randint(0, 4096, (1, prompt_tokens), generator=g, dtype=torch.int32),
        "prompt_token_len": torch.tensor([prompt_tokens], dtype=torch.int32),
        "prompt_feat": torch.randn(1, prompt_frames, 80, generator=g),
        "prompt_feat_len": torch.tensor([prompt_frames], dtype=torch.int32),
        "embedding": torch.randn(1, 192, generator=g),
        "flow_cache": torch.randn(1, 80, cached_frames, 2, generator=g),
    }


def _rel(a: Any, b: Any) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.cosyvoice
@pytest.mark.parametrize(
    ("prompt_tokens", "cached_frames"),
    [(0, 0), (20, 0), (0, 40)],
    ids=["sft", "with-prompt", "streaming-cache"],
)
def test_own_loop_at_upstream_settings_equals_upstream(
    tiny_flow: Any, prompt_tokens: int, cached_frames: int
) -> None:
    import torch

    from worker.engines.cosyvoice.flow_solver import UPSTREAM, flow_inference

    args = _flow_args(60, prompt_tokens=prompt_tokens, cached_frames=cached_frames)
    torch.manual_seed(11)
    want_mel, want_cache = tiny_flow.inference(
        **_flow_args(60, prompt_tokens=prompt_tokens, cached_frames=cached_frames)
    )
    after_upstream = torch.rand(1)
    torch.manual_seed(11)
    mel, cache = flow_inference(tiny_flow, **args, options=UPSTREAM)
    after_ours = torch.rand(1)

    assert mel.shape == want_mel.shape == (1, 80, int(60 / 50 * MEL_FRAMES_PER_SECOND))
    assert torch.equal(mel, want_mel)
    assert torch.equal(cache, want_cache)
    # The same global-RNG consumption: the next draw matches too.
    assert torch.equal(after_ours, after_upstream)


@pytest.mark.cosyvoice
def test_time_tables() -> None:
    import torch

    from worker.engines.cosyvoice.flow_solver import UPSTREAM, FlowOptions

    upstream = 1 - torch.cos(torch.linspace(0, 1, 11) * 0.5 * torch.pi)
    assert torch.equal(UPSTREAM.time_table(), upstream)
    for steps in (4, 5, 6, 7, 8):
        table = FlowOptions(steps, "pruned").time_table()
        assert len(table) == steps + 1
        assert all(bool((upstream == t).any()) for t in table)  # a subset of upstream's
    for options in (FlowOptions(5, "sway", sway=-0.6), FlowOptions(6, "linear")):
        table = options.time_table()
        assert table[0] == 0 and table[-1] == 1 and bool((table.diff() > 0).all())
    assert torch.allclose(
        FlowOptions(6, "sway", sway=-1.0).time_table(),
        FlowOptions(6, "cosine").time_table(),
        atol=1e-6,
    )
    with pytest.raises(ValueError):
        FlowOptions(9, "pruned")
    with pytest.raises(ValueError):
        FlowOptions(5, "sway", sway=-1.5)


@pytest.mark.cosyvoice
@pytest.mark.parametrize(
    "options",
    [("pruned", "euler", 5), ("sway", "euler", 6), ("cosine", "ab2", 5), ("cosine", "midpoint", 3)],
    ids=lambda o: f"{o[2]}-{o[1]}-{o[0]}",
)
def test_fewer_steps_run_and_differ(tiny_flow: Any, options: tuple[Any, Any, int]) -> None:
    import torch

    from worker.engines.cosyvoice.flow_solver import FlowOptions, flow_inference

    schedule, solver, steps = options
    opts = FlowOptions(steps, schedule, solver, sway=-0.6 if schedule == "sway" else -1.0)
    calls = 0
    estimator = tiny_flow.decoder.estimator

    def counting(*inputs: Any) -> Any:
        nonlocal calls
        calls += 1
        return estimator(*inputs)

    args = _flow_args(60)
    torch.manual_seed(11)
    reference, _ = tiny_flow.inference(**args)
    torch.manual_seed(11)
    mel, _ = flow_inference(tiny_flow, **args, options=opts, estimator=counting)

    assert calls == opts.estimator_calls
    assert mel.shape == reference.shape
    assert bool(torch.isfinite(mel).all())
    # Approximate: not upstream's mel, but the same noise gives a related one.
    assert 1e-4 < _rel(mel, reference) < 0.5


@pytest.mark.cosyvoice
@pytest.mark.parametrize("seconds", [1, 5, 15, 30])
def test_ort_estimator_matches_pytorch_through_the_dynamic_axis(
    tiny_flow: Any, tiny_onnx: Path, seconds: int
) -> None:
    import torch

    from worker.engines.cosyvoice.flow_onnx import OrtEstimator, example_inputs

    frames = round(seconds * MEL_FRAMES_PER_SECOND)
    inputs = example_inputs(frames, seed=frames)
    with torch.inference_mode():
        want = tiny_flow.decoder.estimator(*inputs)
    got = OrtEstimator(tiny_onnx, threads=1)(*inputs)
    assert got.shape == want.shape == (2, 80, frames)
    assert _rel(got, want) < 1e-5


@pytest.mark.cosyvoice
def test_ort_flow_matches_pytorch_flow(tiny_flow: Any, tiny_onnx: Path) -> None:
    import torch

    from worker.engines.cosyvoice.flow_onnx import OrtEstimator
    from worker.engines.cosyvoice.flow_solver import flow_inference

    args = _flow_args(250)  # 5 s
    torch.manual_seed(11)
    want, _ = flow_inference(tiny_flow, **args)
    torch.manual_seed(11)
    got, _ = flow_inference(tiny_flow, **args, estimator=OrtEstimator(tiny_onnx, threads=1))
    assert 0 < _rel(got, want) < 1e-4  # 0 would mean the ORT path was not taken


# The export cache: no torch needed.


def _builder(content: bytes) -> tuple[Callable[[Path], None], list[Path]]:
    built: list[Path] = []

    def build(path: Path) -> None:
        built.append(path)
        path.write_bytes(content)

    return build, built


def test_cache_builds_once_and_reuses(tmp_path: Path) -> None:
    build, built = _builder(b"graph-1")
    dirs = [tmp_path / "model" / ".tts-cache", tmp_path / "fallback"]
    first = cached_artifact("est.onnx", ["model=a", "exporter=1"], build, dirs)
    second = cached_artifact("est.onnx", ["model=a", "exporter=1"], build, dirs)

    assert isinstance(first, Path) and first == second
    assert first.is_relative_to(dirs[0]) and first.read_bytes() == b"graph-1"
    assert first.stat().st_mode & 0o044 == 0o044  # readable by other users' workers
    assert len(built) == 1
    assert not [p for p in first.parent.iterdir() if p.name != "est.onnx"]  # no tmp left

    other = cached_artifact("est.onnx", ["model=b", "exporter=1"], build, dirs)
    assert other != first and len(built) == 2


def test_unwritable_model_dir_falls_back(tmp_path: Path) -> None:
    # A file where the cache folder would go: unwritable even for root (a chmod is not).
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / ".tts-cache").write_text("not a folder")
    build, built = _builder(b"graph")
    dirs = cache_dirs(model_dir, tmp_path / "fallback")

    got = cached_artifact("est.onnx", ["k"], build, dirs)
    assert isinstance(got, Path) and got.is_relative_to(tmp_path / "fallback")
    assert got.read_bytes() == b"graph" and len(built) == 1
    assert cached_artifact("est.onnx", ["k"], build, dirs) == got and len(built) == 1


def test_nothing_writable_gives_bytes(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    build, built = _builder(b"in-memory graph")
    got = cached_artifact("est.onnx", ["k"], build, [blocker / "a", blocker / "b"])
    assert got == b"in-memory graph" and len(built) == 1


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    def build(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("exporter failed")

    with pytest.raises(RuntimeError, match="exporter failed"):
        cached_artifact("est.onnx", ["k"], build, [tmp_path])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_concurrent_builders_never_expose_a_partial_file(tmp_path: Path) -> None:
    content = bytes(range(256)) * 4096  # 1 MiB, written in pieces
    seen: list[bytes] = []
    started = threading.Barrier(2)

    def build(path: Path) -> None:
        started.wait(timeout=10)
        with open(path, "wb") as f:
            for i in range(0, len(content), 65536):
                f.write(content[i : i + 65536])
                final = path.parent / "est.onnx"
                if final.exists():  # another builder finished: it must be whole
                    seen.append(final.read_bytes())

    results: list[Path | bytes] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(cached_artifact("est.onnx", ["k"], build, [tmp_path]))
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert len(results) == 2 and results[0] == results[1]
    final = results[0]
    assert isinstance(final, Path) and final.read_bytes() == content
    assert all(s == content for s in seen)
    assert [p.name for p in final.parent.iterdir()] == ["est.onnx"]


@pytest.mark.cosyvoice
def test_key_parts_follow_the_model_and_versions(tiny_model_dir: Path) -> None:
    parts = artifact_key_parts(tiny_model_dir, "estimator-1")
    assert parts[0].startswith("model=") and "exporter=estimator-1" in parts
    assert any(p.startswith("torch=") for p in parts)
    assert any(p.startswith("onnxruntime=") for p in parts)
    assert artifact_key_parts(tiny_model_dir, "estimator-2") != parts


@pytest.mark.cosyvoice
def test_bf16_is_never_silent(tiny_flow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from worker.engines.cosyvoice import flow_solver
    from worker.engines.cosyvoice.flow_onnx import example_inputs

    monkeypatch.setattr(flow_solver, "native_bf16", lambda: False)
    with pytest.raises(RuntimeError, match="no native bf16"):
        flow_solver.Bf16Estimator(tiny_flow.decoder.estimator)
    bf16 = flow_solver.Bf16Estimator(tiny_flow.decoder.estimator, force=True)
    inputs = example_inputs(200, seed=200)
    with torch.inference_mode():
        want = tiny_flow.decoder.estimator(*inputs)
        got = bf16(*inputs)
    assert got.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: ~1e-2 relative, but not bit-identical.
    assert 0 < _rel(got, want) < 5e-2
