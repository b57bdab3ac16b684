"""What a rendition from a cached master costs against a synthesis, for espeak and CosyVoice.

    python -m benchmarks.rendition_bench --out FILE [--quick] [--skip-cosyvoice]
        [--model-dir DIR] [--threads N]

In this process, no services (no S3, no Redis): for a few announcements, (a) the engine's
synthesis of the text, (b) what a job whose master is stored does instead (worker/master.py
then worker/render.py): decode the 24-bit FLAC master and render one rendition from it
(resample, loudness, encode). Wall time, median of several repeats, after one warm-up call of
each; printed side by side with the ratio synthesis / rendition. The S3 round trips (the
master's GET, the rendition's PUT) are left out on purpose: they are the same with or without
a synthesis (benchmarks.plumbing_bench measures them).

CosyVoice runs the full-size RANDOM-weights model that benchmarks.cosyvoice_bench builds
(speed figures only: noise, run to the LLM's cap of 20 speech tokens per text token).
`--quick`: two texts for espeak, one for CosyVoice, fewer repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu import cpu_flags, cpu_model
from core.contract import JobSpec
from worker.audio import decode_master, encode_master
from worker.render import render

SPEAKER = "英文女"
# Announcements of about 2 to 10 s of speech (espeak at its default rate).
TEXTS = (
    "The train on platform two is delayed by ten minutes.",
    "The next train to the airport leaves from platform two in five minutes.",
    "Attention please: the eighteen forty-five service to Edinburgh will now depart from "
    "platform nine instead of platform four. Please mind the gap when boarding.",
)
# The three renditions of the demo announcement (examples/renditions.csv): name -> options.
RENDITIONS: dict[str, dict[str, Any]] = {
    "pa-48k-wav-16lufs": {"fmt": "wav", "sample_rate": 48000, "loudness": -16.0},
    "ivr-8k-wav": {"fmt": "wav", "sample_rate": 8000},
    "mp3-24k": {"fmt": "mp3", "sample_rate": 24000},
}
DEFAULT_MODEL_DIR = Path("/tmp/tts-batch-cosyvoice-full")


def median_ms(call: Callable[[], object], repeats: int, *, warm_up: bool = True) -> float:
    """Median wall milliseconds of `call` over `repeats` runs, after one warm-up run."""
    if warm_up:
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1e3, 2)


def measure_text(
    engine: Any, text: str, *, synth_repeats: int, render_repeats: int
) -> dict[str, Any]:
    """One text on one engine: synthesis against decode-master + render, per rendition."""
    # This first synthesis is the warm-up, and gives the master.
    samples = np.asarray(engine.synthesize(text, speaker=SPEAKER, lang="en"), np.float32)
    rate = engine.sample_rate
    synthesis_ms = median_ms(
        lambda: engine.synthesize(text, speaker=SPEAKER, lang="en"), synth_repeats, warm_up=False
    )
    master = encode_master(samples, sample_rate=rate)
    decode_ms = median_ms(lambda: decode_master(master), render_repeats)
    renditions = {}
    for name, options in RENDITIONS.items():
        spec = JobSpec(text=text, speaker=SPEAKER, lang="en", **options)

        def from_master(spec: JobSpec = spec) -> bytes:
            audio, source_rate = decode_master(master)
            return render(audio, source_rate=source_rate, spec=spec).data

        ms = median_ms(from_master, render_repeats)
        renditions[name] = {
            "ms": ms,
            "bytes": len(from_master()),
            "synthesis_over_rendition": round(synthesis_ms / ms, 1),
        }
    return {
        "text": text,
        "audio_seconds": round(samples.size / rate, 2),
        "synthesis_ms": synthesis_ms,
        # Seconds of synthesis per second of audio (real-time factor).
        "synthesis_rtf": round(synthesis_ms / 1e3 / (samples.size / rate), 4),
        "master_bytes": len(master),
        "master_decode_ms": decode_ms,
        "renditions": renditions,
    }


def run_engine(
    name: str, engine: Any, texts: tuple[str, ...], *, synth_repeats: int, render_repeats: int
) -> dict[str, Any]:
    rows = []
    for text in texts:
        row = measure_text(engine, text, synth_repeats=synth_repeats, render_repeats=render_repeats)
        # Progress: a CosyVoice text takes minutes on 2 cores.
        print(
            f"{name}: {row['audio_seconds']} s of audio, synthesis {row['synthesis_ms']} ms",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    return {
        "model": engine.model_id,
        "sample_rate": engine.sample_rate,
        "synthesis_repeats": synth_repeats,
        "render_repeats": render_repeats,
        "texts": rows,
        # Per rendition, across texts: how many renditions from a master cost one synthesis.
        "median_ratio": {
            r: round(
                statistics.median(row["renditions"][r]["synthesis_over_rendition"] for row in rows),
                2,
            )
            for r in RENDITIONS
        },
    }


def espeak_engine() -> Any:
    from worker.engines.espeak import EspeakSynthesizer

    return EspeakSynthesizer()


def cosyvoice_engine(model_dir: Path, threads: int) -> Any:
    from benchmarks.cosyvoice_bench import ensure_model
    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    ensure_model(model_dir)
    engine = CosyVoiceSynthesizer(str(model_dir), threads=threads)
    engine.prepare_process()
    return engine


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "flags": cpu_flags(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def format_table(report: dict[str, Any]) -> str:
    lines = [
        f"cpu: {report['machine']['cpu']} ({report['machine']['cores']} cores)",
        f"cpu flags: {' '.join(report['machine']['flags'])}",
        f"load average (1, 5, 15 min) at start {report['machine']['load_average']}, "
        f"at end {report['machine'].get('load_average_at_end')}",
        "wall ms, median; ratio = synthesis / (decode master + render)",
    ]
    head = f"{'engine':10} {'audio s':>7} {'synth ms':>9} {'rtf':>7} {'decode ms':>9}"
    for r in RENDITIONS:
        head += f" {r + ' ms':>22} {'ratio':>7}"
    lines.append(head)
    for engine, figures in report["engines"].items():
        for row in figures["texts"]:
            line = (
                f"{engine:10} {row['audio_seconds']:>7} {row['synthesis_ms']:>9} "
                f"{row['synthesis_rtf']:>7} {row['master_decode_ms']:>9}"
            )
            for r in RENDITIONS:
                cell = row["renditions"][r]
                line += f" {cell['ms']:>22} {'x' + str(cell['synthesis_over_rendition']):>7}"
            lines.append(line)
        ratios = ", ".join(f"{r} x{v}" for r, v in figures["median_ratio"].items())
        lines.append(f"{engine:10} median ratio: {ratios}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rendition_bench")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="fewer texts and repeats")
    parser.add_argument("--skip-cosyvoice", action="store_true", help="espeak only")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    render_repeats = 3 if args.quick else 7
    report: dict[str, Any] = {"machine": machine(), "renditions": RENDITIONS, "engines": {}}
    report["engines"]["espeak"] = run_engine(
        "espeak",
        espeak_engine(),
        TEXTS[:2] if args.quick else TEXTS,
        synth_repeats=3 if args.quick else 5,
        render_repeats=render_repeats,
    )
    if not args.skip_cosyvoice:
        report["cosyvoice_threads"] = args.threads
        report["engines"]["cosyvoice"] = run_engine(
            "cosyvoice",
            cosyvoice_engine(args.model_dir, args.threads),
            TEXTS[:1] if args.quick else TEXTS,
            # A synthesis takes seconds: the median of 3 (quick: 1) after the warm-up.
            synth_repeats=1 if args.quick else 3,
            render_repeats=render_repeats,
        )
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print("renditions from a cached master against a synthesis")
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
