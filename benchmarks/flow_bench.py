"""The flow stage (speech tokens -> mel) on CPU: upstream, our loop, ONNX Runtime, fewer steps.

    python -m benchmarks.flow_bench --model-dir /tmp/tts-batch-cosyvoice-full --out flow.json

Figures, not a test. Loads only the flow from the model directory (random weights are fine:
cost does not depend on them; accuracy figures are indicative only). Parts:
- `lengths`: one estimator call (the CFG pair) at 1, 5, 15 and 30 s of audio, PyTorch vs ONNX
  Runtime, time per second of audio, the first call at a new length apart; ORT optimization
  levels at 5 s.
- `steps`: a 5 s utterance (250 random speech tokens) through upstream `flow.inference`, our
  loop at upstream settings, ORT, and fewer-step options; seconds, RTF and the mel's relative L2
  against upstream's on identical noise (same seed) and against a fine reference solve.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.cpu import cpu_flags
from worker.engines.cosyvoice.export_cache import (
    artifact_key_parts,
    cache_dirs,
    cached_artifact,
)
from worker.engines.cosyvoice.flow_onnx import (
    EXPORTER_VERSION,
    OptLevel,
    OrtEstimator,
    example_inputs,
    export_estimator,
)
from worker.engines.cosyvoice.flow_solver import (
    MEL_RATE,
    UPSTREAM,
    Bf16Estimator,
    FlowOptions,
    flow_inference,
    load_flow,
    native_bf16,
)

SEED = 1234
FEW_STEPS = [
    FlowOptions(5, "cosine"),
    FlowOptions(5, "pruned"),
    FlowOptions(5, "sway", sway=-0.6),
    FlowOptions(5, "cosine", "ab2"),
    FlowOptions(6, "cosine"),
    FlowOptions(6, "pruned"),
    FlowOptions(6, "cosine", "ab2"),
    FlowOptions(3, "cosine", "midpoint"),
]
# The "true" ODE solution to compare against: midpoint (2nd order) with 8 steps, 16 calls.
FINE = FlowOptions(8, "cosine", "midpoint")


def timed(fn: Callable[..., Any], repeats: int, *args: Any) -> tuple[list[float], Any]:
    runs, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn(*args)
        runs.append(time.perf_counter() - started)
    return runs, result


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def part_lengths(flow: Any, onnx: Path | bytes, threads: int, repeats: int) -> dict[str, Any]:
    estimator = flow.decoder.estimator
    ort_est = OrtEstimator(onnx, threads=threads)
    rows = []
    for seconds in (1, 5, 15, 30):
        frames = round(seconds * MEL_RATE)
        inputs = example_inputs(frames)
        with torch.inference_mode():
            estimator(*inputs)  # warm-up
            torch_runs, ref = timed(estimator, repeats, *inputs)
        first, _ = timed(ort_est, 1, *inputs)
        ort_runs, out = timed(ort_est, repeats, *inputs)
        row = {
            "seconds_audio": seconds,
            "frames": frames,
            "torch_s": statistics.median(torch_runs),
            "torch_runs": torch_runs,
            "ort_first_call_s": first[0],
            "ort_s": statistics.median(ort_runs),
            "ort_runs": ort_runs,
            "torch_s_per_audio_s": statistics.median(torch_runs) / seconds,
            "ort_s_per_audio_s": statistics.median(ort_runs) / seconds,
            "velocity_rel_l2": rel_l2(out, ref),
            "velocity_max_abs": float((out - ref).abs().max()),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    levels = []
    inputs = example_inputs(round(5 * MEL_RATE))
    level: OptLevel
    for level in ("disable", "basic", "extended", "all"):
        started = time.perf_counter()
        session = OrtEstimator(onnx, threads=threads, opt_level=level)
        session_s = time.perf_counter() - started
        session(*inputs)
        runs, _ = timed(session, repeats, *inputs)
        entry: dict[str, Any] = {"level": level, "session_s": session_s, "runs": runs}
        entry["call_s"] = statistics.median(runs)
        print(json.dumps(entry), flush=True)
        levels.append(entry)
    return {"estimator_call": rows, "ort_levels_5s": levels}


def part_interleaved(flow: Any, onnx: Path | bytes, threads: int, repeats: int) -> dict[str, Any]:
    """Torch, ORT and bf16 autocast calls alternated, lengths switching at every call: each
    pair ran under the same load (the ratio is what survives the noise), and ORT sees a new
    shape at every call (upstream's "unstable for variable lengths")."""
    estimator = flow.decoder.estimator
    ort_est = OrtEstimator(onnx, threads=threads)
    bf16 = Bf16Estimator(estimator) if native_bf16() else None
    lengths = (1, 5, 15)
    times: dict[str, dict[int, list[float]]] = {"torch": {}, "ort": {}, "bf16": {}}
    diffs: dict[int, dict[str, float]] = {}
    for _ in range(repeats):
        for seconds in lengths:
            inputs = example_inputs(round(seconds * MEL_RATE))
            with torch.inference_mode():
                runs, ref = timed(estimator, 1, *inputs)
                times["torch"].setdefault(seconds, []).extend(runs)
                runs, out = timed(ort_est, 1, *inputs)
                times["ort"].setdefault(seconds, []).extend(runs)
                diffs[seconds] = {"ort_rel_l2": rel_l2(out, ref)}
                if bf16 is not None:
                    runs, out = timed(bf16, 1, *inputs)
                    times["bf16"].setdefault(seconds, []).extend(runs)
                    diffs[seconds]["bf16_rel_l2"] = rel_l2(out, ref)
    rows = []
    for seconds in lengths:
        row: dict[str, Any] = {"seconds_audio": seconds, **diffs[seconds]}
        for name, by_length in times.items():
            if seconds in by_length:
                runs = by_length[seconds]
                row[f"{name}_runs"] = runs
                row[f"{name}_median_s_per_audio_s"] = statistics.median(runs) / seconds
                row[f"{name}_min_s_per_audio_s"] = min(runs) / seconds
                ratios = [t / o for t, o in zip(times["torch"][seconds], runs, strict=True)]
                row[f"torch_over_{name}_median"] = statistics.median(ratios)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"interleaved": rows}


def part_steps(flow: Any, onnx: Path | bytes, threads: int, repeats: int) -> dict[str, Any]:
    tokens = 250
    audio_s = int(tokens / 50 * 22050 / 256) / MEL_RATE
    g = torch.Generator().manual_seed(SEED)
    kwargs = {
        "token": torch.randint(0, 4096, (1, tokens), generator=g, dtype=torch.int32),
        "token_len": torch.tensor([tokens], dtype=torch.int32),
        "prompt_token": torch.zeros(1, 0, dtype=torch.int32),
        "prompt_token_len": torch.tensor([0], dtype=torch.int32),
        "prompt_feat": torch.zeros(1, 0, 80),
        "prompt_feat_len": torch.tensor([0], dtype=torch.int32),
        "embedding": torch.randn(1, 192, generator=g),
        "flow_cache": torch.zeros(1, 80, 0, 2),
    }

    def upstream() -> torch.Tensor:
        torch.manual_seed(SEED)
        mel: torch.Tensor = flow.inference(**kwargs)[0]
        return mel

    def ours(options: FlowOptions, estimator: Any = None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            torch.manual_seed(SEED)
            return flow_inference(flow, **kwargs, options=options, estimator=estimator)[0]

        return run

    rows: list[dict[str, Any]] = []

    def record(label: str, runs: list[float], mel: torch.Tensor, nfe: int) -> None:
        row = {
            "run": label,
            "estimator_calls": nfe,
            "seconds": statistics.median(runs),
            "runs": runs,
            "rtf": statistics.median(runs) / audio_s,
            "rel_l2_vs_upstream": rel_l2(mel, reference),
            "rel_l2_vs_fine": rel_l2(mel, fine),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)

    # Few-step options and the fine reference run on the ORT estimator (its velocity is within
    # ~2e-6 of PyTorch's, far below the few-step errors): the sweep costs a fraction of torch's.
    ort_est = OrtEstimator(onnx, threads=threads)
    runs, reference = timed(upstream, repeats)
    _, fine = timed(ours(FINE, ort_est), 1)
    record("upstream flow.inference 10 Euler", runs, reference, 10)
    runs, mel = timed(ours(UPSTREAM), repeats)
    record("own loop 10 Euler (upstream settings)", runs, mel, 10)
    exact = bool(torch.equal(mel, reference))
    runs, mel = timed(ours(UPSTREAM, ort_est), repeats)
    record("ORT estimator 10 Euler", runs, mel, 10)
    record("fine reference (ORT, midpoint 8 steps)", [float("nan")], fine, FINE.estimator_calls)
    for options in FEW_STEPS:
        runs, mel = timed(ours(options, ort_est), repeats)
        label = f"ORT {options.steps} {options.solver} {options.schedule}"
        if options.schedule == "sway":
            label += f" {options.sway}"
        record(label, runs, mel, options.estimator_calls)
    if native_bf16():
        bf16 = Bf16Estimator(flow.decoder.estimator)
        runs, mel = timed(ours(UPSTREAM, bf16), repeats)
        record("bf16 autocast 10 Euler", runs, mel, 10)
    return {"audio_seconds": audio_s, "own_loop_bit_exact": exact, "runs": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/tts-batch-cosyvoice-full"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="lengths,steps")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime

    report: dict[str, Any] = {
        "cpu_flags": cpu_flags(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
    }
    print(json.dumps(report), flush=True)
    flow = load_flow(args.model_dir)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        export_estimator(flow.decoder.estimator, Path(scratch) / "probe.onnx")
        report["export_s"] = time.perf_counter() - started
    print(json.dumps({"export_s": report["export_s"]}), flush=True)
    onnx = cached_artifact(
        "flow_estimator.fp32.onnx",
        artifact_key_parts(args.model_dir, EXPORTER_VERSION),
        lambda path: export_estimator(flow.decoder.estimator, path),
        cache_dirs(args.model_dir, Path(tempfile.gettempdir()) / "tts-batch-cache"),
    )
    parts = args.parts.split(",")
    if "lengths" in parts:
        report["lengths"] = part_lengths(flow, onnx, args.threads, args.repeats)
    if "interleaved" in parts:
        report["interleaved"] = part_interleaved(flow, onnx, args.threads, args.repeats)
    if "steps" in parts:
        report["steps"] = part_steps(flow, onnx, args.threads, args.repeats)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
