"""The HiFT vocoder three ways on the full-size RANDOM-weights model: figures, not a test.

    python -m benchmarks.cosyvoice_vocoder_bench [--model-dir DIR] [--threads 2] [--repeats 3]
        [--out FILE.json] [--compile]

Upstream PyTorch fp32 (weight norm as a parametrization), weight norm folded, and ONNX Runtime
(exported with weight norm folded), on random mel of 1, 5 and 30 s of audio (22050 Hz, 256
samples a frame), with the f0 predictor rescaled to speech-like pitch. Medians of `--repeats`
runs (variants interleaved) after one warm-up; the waveform is compared with upstream's for
the same seed. `--compile` adds `torch.compile` of the folded model (minutes).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.cpu import cpu_flags

DEFAULT_DIR = Path("/tmp/tts-batch-cosyvoice-full")
SECONDS = (1, 5, 30)
SAMPLE_RATE = 22050
HOP = 256
SEED = 1234


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and process CPU seconds of one seeded call. CPU time is steadier when other
    processes share the cores (it still counts the threads' spin-waiting)."""
    import torch

    torch.manual_seed(SEED)
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    import torch

    from tests.support.hift_voicing import give_speech_like_f0
    from worker.engines.cosyvoice.vocoder import (
        OnnxHift,
        export_hift_onnx,
        load_hift,
        strip_weight_norm,
    )

    torch.set_num_threads(args.threads)
    upstream = load_hift(args.model_dir)
    # Random weights predict ~0.1 Hz (all unvoiced): speech-like pitch puts the harmonic source,
    # and its phase drift between runtimes, into the comparison. Speed does not change.
    give_speech_like_f0(
        upstream, torch.randn(1, 80, 300, generator=torch.Generator().manual_seed(99))
    )
    folded = copy.deepcopy(upstream)
    removed = strip_weight_norm(folded)
    scratch = tempfile.TemporaryDirectory(prefix="hift-onnx-")  # 82 MB, gone at exit
    workdir = Path(scratch.name)
    started = time.perf_counter()
    export_hift_onnx(upstream, workdir / "hift.onnx")
    export_seconds = time.perf_counter() - started
    onnx_hift = OnnxHift(workdir / "hift.onnx", threads=args.threads)
    variants: dict[str, Callable[[Any], Any]] = {
        "upstream": lambda mel: upstream.inference(mel)[0],
        "weight_norm_removed": lambda mel: folded.inference(mel)[0],
        "onnxruntime": lambda mel: onnx_hift.inference(mel)[0],
    }
    compile_seconds = None
    if args.compile:
        compiled: Any = torch.compile(folded)
        started = time.perf_counter()
        with torch.inference_mode():
            compiled.inference(torch.randn(1, 80, 87))
        compile_seconds = time.perf_counter() - started
        variants["compiled"] = lambda mel: compiled.inference(mel)[0]

    report: dict[str, Any] = {
        "cpu_flags": cpu_flags(),
        "threads": args.threads,
        "torch": torch.__version__,
        "weight_norms_removed": removed,
        "onnx_export_seconds": round(export_seconds, 2),
        "onnx_file_mb": round((workdir / "hift.onnx").stat().st_size / 1e6, 1),
        "compile_first_call_seconds": compile_seconds,
        "results": [],
    }
    print("cpu flags:", " ".join(report["cpu_flags"]))
    print(f"onnx export {export_seconds:.1f} s, {removed} weight norms folded", flush=True)
    warm = torch.randn(1, 80, 87)
    for fn in variants.values():
        fn(warm)
    for seconds in SECONDS:
        frames = -(-seconds * SAMPLE_RATE // HOP)
        mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(seconds))
        walls: dict[str, list[float]] = {name: [] for name in variants}
        cpus: dict[str, list[float]] = {name: [] for name in variants}
        waves: dict[str, Any] = {}
        # Variants interleaved run by run, so that load from other processes hits all alike.
        for _ in range(args.repeats):
            for name, fn in variants.items():
                wall, cpu, waves[name] = timed(functools.partial(fn, mel))
                walls[name].append(wall)
                cpus[name].append(cpu)
        reference = waves["upstream"]
        for name in variants:
            median = statistics.median(walls[name])
            diff = (waves[name] - reference).abs()
            row = {
                "audio_seconds": seconds,
                "variant": name,
                "median_seconds": round(median, 3),
                "runs": [round(t, 3) for t in walls[name]],
                "median_cpu_seconds": round(statistics.median(cpus[name]), 3),
                "rtf": round(median / seconds, 4),
                "max_abs_diff": float(diff.max()),
                "max_rel_diff_to_peak": float(diff.max() / reference.abs().max()),
                "rel_l2_diff": float(diff.norm() / reference.norm()),
                "peak": float(reference.abs().max()),
            }
            report["results"].append(row)
            print(
                f"{seconds:>3} s {name:<20} {median:7.3f} s  RTF {row['rtf']:.4f}  "
                f"runs {row['runs']}  cpu {row['median_cpu_seconds']:.2f} s  "
                f"max|diff| {row['max_abs_diff']:.2e}  "
                f"rel-to-peak {row['max_rel_diff_to_peak']:.2e}  rel-L2 {row['rel_l2_diff']:.2e}",
                flush=True,
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
