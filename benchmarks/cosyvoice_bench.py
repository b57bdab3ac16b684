"""CosyVoice-300M-SFT on CPU with a full-size RANDOM-weights model: figures, not a test.

    python -m benchmarks.cosyvoice_bench --out cosyvoice.json [--model-dir DIR] [--threads N]

Builds the full-size random model in DIR (a subprocess; reused when DIR already holds one),
then in this process: the runtime's import time, the load time, one Chinese and one English
sentence with per-stage times (LLM speech tokens per second, flow, vocoder) and RTF, and the
peak RSS. Random weights never emit end-of-speech, so each sentence runs to the LLM's cap of
20 speech tokens per text token; per-token cost does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SENTENCES = {
    "zh": ("中文女", "各位旅客请注意，开往机场的列车即将进站，请在黄线以外候车。"),
    "en": ("英文女", "The next train to the airport leaves from platform two in five minutes."),
}
DEFAULT_DIR = Path("/tmp/tts-batch-cosyvoice-full")


class StageTimer:
    """Wraps the upstream model's three stages to add up their wall time."""

    def __init__(self) -> None:
        self.seconds = {"llm": 0.0, "flow": 0.0, "hift": 0.0}
        self.tokens = 0

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        self.tokens = 0

    def wrap_generator(self, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            started = time.perf_counter()
            for token in fn(*args, **kwargs):
                self.tokens += 1
                yield token
            self.seconds["llm"] += time.perf_counter() - started

        return timed

    def wrap_call(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started

        return timed

    def install(self, upstream: Any) -> None:
        model = upstream.model
        model.llm.inference = self.wrap_generator(model.llm.inference)
        model.flow.inference = self.wrap_call("flow", model.flow.inference)
        model.hift.inference = self.wrap_call("hift", model.hift.inference)


def ensure_model(directory: Path) -> float:
    """Build the full-size random model in `directory` unless it is there; seconds taken."""
    from worker.engines.cosyvoice.model_dir import RANDOM_MARKER, REQUIRED_FILES

    if all((directory / n).is_file() for n in (*REQUIRED_FILES, RANDOM_MARKER)):
        marker = json.loads((directory / RANDOM_MARKER).read_text(encoding="utf-8"))
        if marker.get("size") == "full":
            return 0.0
    started = time.perf_counter()
    # A subprocess, so that this process's import time below is a cold one.
    subprocess.run(
        [sys.executable, "-m", "worker.engines.cosyvoice.random_model", "make-random",
         "--size", "full", str(directory)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def machine() -> dict[str, Any]:
    model = ""
    flags: set[str] = set()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "isa": isa,
        "python": platform.python_version(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def run(model_dir: Path, *, threads: int) -> dict[str, Any]:
    build_seconds = ensure_model(model_dir)
    started = time.perf_counter()
    from worker.engines.cosyvoice.loader import import_runtime

    import_runtime()  # the cold import of what the engine loads with is a figure

    import_seconds = time.perf_counter() - started

    import torch

    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    engine = CosyVoiceSynthesizer(str(model_dir), threads=threads)
    timer = StageTimer()
    timer.install(engine.upstream)
    results: dict[str, Any] = {}
    for lang, (speaker, text) in SENTENCES.items():
        timer.reset()
        started = time.perf_counter()
        audio = engine.synthesize(text, speaker=speaker, lang=lang)
        total = time.perf_counter() - started
        audio_seconds = audio.size / engine.sample_rate
        llm = timer.seconds["llm"]
        results[lang] = {
            "text": text,
            "audio_seconds": round(audio_seconds, 3),
            "total_seconds": round(total, 2),
            "rtf": round(total / audio_seconds, 2),
            "speech_tokens": timer.tokens,
            "llm_seconds": round(llm, 2),
            "llm_tokens_per_second": round(timer.tokens / llm, 2) if llm else None,
            "flow_seconds": round(timer.seconds["flow"], 2),
            "flow_rtf": round(timer.seconds["flow"] / audio_seconds, 2),
            "hift_seconds": round(timer.seconds["hift"], 2),
            "hift_rtf": round(timer.seconds["hift"] / audio_seconds, 2),
        }
    return {
        "model": "CosyVoice-300M-SFT architecture, RANDOM weights (noise; speed figures only)",
        "model_id": engine.model_id,
        "machine": machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "build_seconds": round(build_seconds, 1),
        "import_seconds": round(import_seconds, 2),
        "load_seconds": round(engine.load_seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "sentences": results,
    }


def summary(report: dict[str, Any]) -> str:
    s = report["sentences"]
    return (
        f"cosyvoice-300m (random weights) on {report['machine']['cores']} cores, "
        f"{report['threads']} threads: import {report['import_seconds']} s, "
        f"load {report['load_seconds']} s, peak RSS {report['peak_rss_gb']} GB; "
        f"zh RTF {s['zh']['rtf']} ({s['zh']['audio_seconds']} s audio), "
        f"en RTF {s['en']['rtf']}; LLM {s['en']['llm_tokens_per_second']} tokens/s, "
        f"flow RTF {s['en']['flow_rtf']}, vocoder RTF {s['en']['hift_rtf']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_bench")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    report = run(args.model_dir.resolve(), threads=args.threads)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
