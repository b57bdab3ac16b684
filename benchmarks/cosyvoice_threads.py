"""One 2-thread process against two 1-thread processes, stage by stage: figures, not a test.

    python -m benchmarks.cosyvoice_threads [--model-dir DIR] [--preset exact] [--out FILE]

A worker machine with two cores can run one engine process with two torch threads, or two
processes with one thread each (`TTS_CONCURRENCY=2`, `TTS_THREADS=0`: the default). Batch-1
decoding is bound by memory bandwidth, so threads may help less than processes. Each process
loads the engine, says it is ready, and starts the en sentence when all are ready; the table
gives each layout's aggregate throughput per stage: LLM speech tokens/s, and seconds of audio
per second for flow, vocoder and the whole synthesis.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.cosyvoice_bench import DEFAULT_DIR, SENTENCES, ensure_model, machine


def child(model_dir: Path, preset: str, threads: int) -> None:
    """Load, report ready, wait for the go line, synthesize, print the stage figures."""
    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    engine = CosyVoiceSynthesizer(str(model_dir), threads=threads, preset=preset)
    engine.prepare_process()
    engine.stages.open_sessions()
    lang, speaker, text = SENTENCES["en"]
    engine.synthesize("Warm up.", speaker=speaker, lang=lang)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    audio = engine.synthesize(text, speaker=speaker, lang=lang)
    total = time.perf_counter() - started
    stages = engine.last_stages
    figures = {
        "audio_seconds": audio.size / engine.sample_rate,
        "tokens": stages.speech_tokens,
        "llm": stages.llm,
        "flow": stages.flow,
        "hift": stages.hift,
        "total": total,
    }
    print(json.dumps(figures), flush=True)


def layout(model_dir: Path, preset: str, processes: int, threads: int) -> dict[str, Any]:
    """Run `processes` children of `threads` threads at once; their aggregate throughput."""
    command = [
        sys.executable, "-m", "benchmarks.cosyvoice_threads", "--child",
        "--model-dir", str(model_dir), "--preset", preset, "--threads", str(threads),
    ]  # fmt: skip
    children = [
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for proc in children:
        assert proc.stdout is not None
        while proc.stdout.readline().strip() != "ready":
            if proc.poll() is not None:
                raise RuntimeError("a benchmark child exited before it was ready")
    for proc in children:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in children:
        out, _ = proc.communicate(timeout=3600)
        results.append(json.loads(out.strip().splitlines()[-1]))

    def rate(amount: str, seconds: str) -> float:
        # Each process's rate over its own stage time, summed: they ran side by side.
        return round(float(sum(r[amount] / r[seconds] for r in results)), 3)

    return {
        "processes": processes,
        "threads": threads,
        "llm_tokens_per_second": rate("tokens", "llm"),
        "flow_audio_seconds_per_second": rate("audio_seconds", "flow"),
        "hift_audio_seconds_per_second": rate("audio_seconds", "hift"),
        "audio_seconds_per_second": rate("audio_seconds", "total"),
        "runs": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_threads")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--preset", default="exact")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.model_dir, args.preset, args.threads)
        return 0
    ensure_model(args.model_dir)
    report = {"machine": machine(), "preset": args.preset, "layouts": []}
    print(f"machine: {json.dumps(report['machine'])}", flush=True)
    for processes, threads in ((1, 2), (2, 1)):
        result = layout(args.model_dir.resolve(), args.preset, processes, threads)
        report["layouts"].append(result)
        shown = {k: v for k, v in result.items() if k != "runs"}
        print(json.dumps(shown), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
