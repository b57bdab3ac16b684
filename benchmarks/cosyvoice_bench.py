"""CosyVoice-300M-SFT on CPU, full-size RANDOM weights: one engine table from one run.

    python -m benchmarks.cosyvoice_bench --out FILE [--model-dir DIR] [--threads N] [--quick]

Rows: `upstream` (upstream's code for every stage), each lever alone, the `exact` default and
the `fast` preset. Each row runs in a fresh interpreter, one after the other, so that its
import, load time and peak RSS are its own. Columns per sentence (zh, en, and a text of about
30 s): speech tokens, LLM speech tokens/s, flow, vocoder and end-to-end RTF (seconds per
second of audio), and parity with upstream on identical inputs and noise:
- `token_agreement`: teacher-forced on upstream's speech tokens, the share of steps whose top-1
  equals upstream's (1.0 for upstream itself);
- `mel_rel_l2`: the row's flow on upstream's tokens against upstream's mel, same noise;
- `wave_snr_db`: the row's vocoder on upstream's mel against upstream's waveform, same noise.
Levers that leave the LLM alone are timed on upstream's tokens (flow and vocoder only): their
LLM and end-to-end columns are empty rather than borrowed.

Random weights never emit end-of-speech, so each text runs to the LLM's cap of 20 speech
tokens per text token; per-token cost does not depend on the weights. Random weights also lack
the outliers of trained ones: parity of the approximate levers is indicative only
(`python -m benchmarks.cosyvoice_parity --model-dir DIR` checks the published weights).

`--quick` runs only the en sentence for upstream, exact and fast (under 10 minutes) and writes
`presets.<preset>.en` with `rtf`, `llm_tokens_per_second` and `token_agreement`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks.cpu import cpu_flags, cpu_model

SENTENCES = {
    "zh": ("zh", "中文女", "各位旅客请注意，开往机场的列车即将进站，请在黄线以外候车。"),
    "en": (
        "en",
        "英文女",
        "The next train to the airport leaves from platform two in five minutes.",
    ),
    # 70 text tokens: one chunk, capped at 1,400 speech tokens (28 s) by the random LLM, which
    # with the engine's seed runs to the cap on this text (others sampled an early stop).
    "long": (
        "en",
        "英文男",
        "Attention please, the eighteen forty-five service to Edinburgh will now depart "
        "from platform nine instead of platform four, calling at York, Darlington, Durham and "
        "Newcastle; please take all your belongings, keep your tickets ready for inspection "
        "and mind the gap when boarding the train at the front of the platform. Thank you "
        "for travelling with us.",
    ),
}
DEFAULT_DIR = Path("/tmp/tts-batch-cosyvoice-full")
# Fixed seeds of the stage-parity passes, so that every row draws the same noise.
FLOW_SEED, HIFT_SEED = 1234, 4321
# Levers that leave the LLM alone: timed on upstream's tokens.
STAGE_ONLY = ("hift-fold", "hift-onnx", "flow-own-loop", "flow-onnx", "flow-steps")


def rows() -> dict[str, Any]:
    """Every row of the table: a name and the preset it runs."""
    from worker.engines.cosyvoice.presets import PRESETS

    upstream = PRESETS["upstream"]
    fast = PRESETS["fast"]
    return {
        "upstream": upstream,
        "decode-loop": replace(upstream, name="decode-loop", decode="exact"),
        "llm-int8": replace(upstream, name="llm-int8", decode="exact", llm_int8=True),
        "hift-fold": replace(upstream, name="hift-fold", hift_fold_weight_norm=True),
        "hift-onnx": replace(
            upstream, name="hift-onnx", hift_fold_weight_norm=True, hift_runtime="onnx"
        ),
        "flow-own-loop": replace(upstream, name="flow-own-loop", flow_runtime="torch"),
        "flow-onnx": replace(upstream, name="flow-onnx", flow_runtime="onnx"),
        "flow-steps": replace(
            upstream,
            name="flow-steps",
            flow_runtime="torch",
            flow_steps=fast.flow_steps,
            flow_schedule=fast.flow_schedule,
            flow_solver=fast.flow_solver,
        ),
        "exact": PRESETS["exact"],
        "fast": fast,
    }


def ensure_model(directory: Path) -> float:
    """Build the full-size random model in `directory` unless a model is there (a tiny one
    makes a quick smoke run of this script); seconds taken."""
    from worker.engines.cosyvoice.model_dir import REQUIRED_FILES

    if all((directory / n).is_file() for n in REQUIRED_FILES):
        return 0.0
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "worker.engines.cosyvoice.random_model", "make-random",
         "--size", "full", str(directory)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - started


def machine() -> dict[str, Any]:
    """The CPU, its SIMD features (every benchmark prints them), cores and memory."""
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "isa": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


# --- one row, in its own interpreter ----------------------------------------------------------


def run_row(
    name: str, model_dir: Path, threads: int, sentences: list[str], reference: Path
) -> dict[str, Any]:
    """Load the row's engine, synthesize each sentence, and measure parity with upstream's
    saved reference (written by the upstream row, which runs first)."""
    started = time.perf_counter()
    from worker.engines.cosyvoice.loader import import_runtime

    import_runtime()  # the cold import of what the engine loads with is a figure

    import_seconds = time.perf_counter() - started
    import torch

    from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

    preset = rows()[name]
    engine = CosyVoiceSynthesizer(str(model_dir), threads=threads, preset=preset)
    engine.prepare_process()
    engine.stages.open_sessions()
    is_reference = name == "upstream"
    if is_reference:
        recorder = TopOneRecorder(engine.upstream.model.llm)
    figures: dict[str, Any] = {}
    for key in sentences:
        lang, speaker, text = SENTENCES[key]
        ref_file = reference / f"{key}.pt"
        if name in STAGE_ONLY:
            figures[key] = stage_only(engine, torch.load(ref_file, weights_only=False))
            continue
        if is_reference:
            recorder.steps.clear()
        started = time.perf_counter()
        audio = engine.synthesize(text, speaker=speaker, lang=lang)
        total = time.perf_counter() - started
        stages = engine.last_stages
        seconds = audio.size / engine.sample_rate
        row: dict[str, Any] = {
            "audio_seconds": round(seconds, 2),
            "speech_tokens": stages.speech_tokens,
            "llm_tokens_per_second": round(stages.speech_tokens / stages.llm, 2),
            "llm_rtf": round(stages.llm / seconds, 3),
            "flow_rtf": round(stages.flow / seconds, 3),
            "hift_rtf": round(stages.hift / seconds, 3),
            "rtf": round(total / seconds, 3),
        }
        if is_reference:
            save_reference(engine, lang, speaker, text, recorder.steps, ref_file)
            row.update({"token_agreement": 1.0, "mel_rel_l2": 0.0, "wave_snr_db": None})
        else:
            ref = torch.load(ref_file, weights_only=False)
            row.update(llm_parity(engine, ref))
            row.update(stage_parity(engine, ref))
        figures[key] = row
    return {
        "preset": asdict(preset),
        "import_seconds": round(import_seconds, 2),
        "load_seconds": round(engine.load_seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **figures,
    }


class TopOneRecorder:
    """Records upstream's top-1 at each decode step (a hook on the LLM's output layer), so
    that the other rows can be compared teacher-forced without re-running upstream."""

    def __init__(self, llm: Any) -> None:
        self.steps: list[int] = []
        llm.llm_decoder.register_forward_hook(self._hook)

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        self.steps.append(int(output[-1].argmax()))


def save_reference(
    engine: Any, lang: str, speaker: str, text: str, top1: list[int], path: Path
) -> dict[str, Any]:
    """Upstream's tokens and top-1 per chunk (just decoded), and its mel and waveform for
    those tokens under the fixed stage seeds."""
    import torch

    from benchmarks.cosyvoice_parity import sft_inputs

    chunks: list[dict[str, Any]] = [
        {"model_input": model_input}
        for model_input in sft_inputs(engine.upstream, text, speaker, lang)
    ]
    # The recorder saw every chunk's steps in order: one step per token plus the final one
    # (end of speech, or the cap) per chunk.
    at = 0
    for chunk, chunk_tokens in zip(chunks, engine.last_stages.tokens, strict=True):
        # Upstream's loop ends at the cap without a further step, else on a sampled stop.
        cap = int(chunk["model_input"]["text"].shape[1] * 20)
        steps = len(chunk_tokens) + (0 if len(chunk_tokens) == cap else 1)
        chunk["tokens"] = chunk_tokens
        chunk["top1"] = top1[at : at + steps]
        at += steps
        torch.manual_seed(FLOW_SEED)
        chunk["mel"] = engine.stages.flow_mel(chunk_tokens, chunk["model_input"])
        torch.manual_seed(HIFT_SEED)
        chunk["wave"] = engine.stages.vocode(chunk["mel"])
    reference = {"chunks": chunks}
    torch.save(reference, path)
    return reference


def llm_parity(engine: Any, ref: dict[str, Any]) -> dict[str, Any]:
    import torch

    if engine.decoder is None:
        return {"token_agreement": None}
    agree = steps = 0
    for chunk in ref["chunks"]:
        text = chunk["model_input"]["text"]
        log_probs = engine.decoder.teacher_forced(
            text,
            torch.tensor([text.shape[1]], dtype=torch.int32),
            chunk["model_input"]["llm_embedding"],
            chunk["tokens"],
        )
        ours = log_probs.argmax(dim=-1).tolist()[: len(chunk["top1"])]
        agree += sum(a == b for a, b in zip(ours, chunk["top1"], strict=True))
        steps += len(ours)
    return {"token_agreement": round(agree / steps, 4)}


def stage_parity(engine: Any, ref: dict[str, Any]) -> dict[str, Any]:
    """The row's flow on upstream's tokens and its vocoder on upstream's mel, same seeds."""
    import torch

    from benchmarks.cosyvoice_parity import waveform_snr_db

    l2_num = l2_den = 0.0
    waves, ref_waves = [], []
    for chunk in ref["chunks"]:
        torch.manual_seed(FLOW_SEED)
        mel = engine.stages.flow_mel(chunk["tokens"], chunk["model_input"])
        l2_num += float(((mel - chunk["mel"]) ** 2).sum())
        l2_den += float((chunk["mel"] ** 2).sum())
        torch.manual_seed(HIFT_SEED)
        waves.append(engine.stages.vocode(chunk["mel"]))
        ref_waves.append(chunk["wave"])
    import numpy as np

    snr = waveform_snr_db(np.concatenate(ref_waves), np.concatenate(waves))
    return {"mel_rel_l2": round((l2_num / l2_den) ** 0.5, 6), "wave_snr_db": round(snr, 1)}


def stage_only(engine: Any, ref: dict[str, Any]) -> dict[str, Any]:
    """Flow and vocoder of a lever that leaves the LLM alone, on upstream's tokens."""
    flow = hift = 0.0
    samples = 0
    for chunk in ref["chunks"]:
        started = time.perf_counter()
        mel = engine.stages.flow_mel(chunk["tokens"], chunk["model_input"])
        flow_done = time.perf_counter()
        wave = engine.stages.vocode(mel)
        hift += time.perf_counter() - flow_done
        flow += flow_done - started
        samples += wave.size
    seconds = samples / engine.sample_rate
    row = {
        "audio_seconds": round(seconds, 2),
        "flow_rtf": round(flow / seconds, 3),
        "hift_rtf": round(hift / seconds, 3),
    }
    row.update(stage_parity(engine, ref))
    return row


# --- the table --------------------------------------------------------------------------------


def run(
    model_dir: Path, threads: int, names: list[str], sentences: list[str], out: Path
) -> dict[str, Any]:
    build_seconds = ensure_model(model_dir)
    report: dict[str, Any] = {
        "model": "CosyVoice-300M-SFT architecture, RANDOM weights (noise; speed figures only)",
        "machine": machine(),
        "threads": threads,
        "build_seconds": round(build_seconds, 1),
        "presets": {},
    }
    print(f"machine: {json.dumps(report['machine'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cosyvoice-bench-") as reference:
        for name in names:
            command = [
                sys.executable, "-m", "benchmarks.cosyvoice_bench", "--row", name,
                "--model-dir", str(model_dir), "--threads", str(threads),
                "--sentences", ",".join(sentences), "--reference", reference,
            ]  # fmt: skip
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
                report["presets"][name] = {"error": done.stderr[-500:]}
                continue
            report["presets"][name] = json.loads(done.stdout.strip().splitlines()[-1])
            print(row_line(name, report["presets"][name], report["presets"].get("upstream")))
            out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return report


def row_line(name: str, row: dict[str, Any], upstream: dict[str, Any] | None) -> str:
    """One printed line per row and sentence, with the ratio to upstream's RTF."""
    lines = []
    for key in (k for k in SENTENCES if k in row):
        s = row[key]
        base = (upstream or {}).get(key, {})
        ratio = ""
        if "rtf" in s and base.get("rtf"):
            ratio = f" x{base['rtf'] / s['rtf']:.2f} vs upstream"
        elif "flow_rtf" in s and base.get("flow_rtf"):
            stages = s["flow_rtf"] + s["hift_rtf"]
            ratio = f" flow+vocoder x{(base['flow_rtf'] + base['hift_rtf']) / stages:.2f}"
        figures = ", ".join(f"{k} {v}" for k, v in s.items())
        lines.append(f"{name:12} {key:5} {figures}{ratio}")
    lines.append(
        f"{name:12} load {row['load_seconds']} s (import {row['import_seconds']} s), "
        f"peak RSS {row['peak_rss_gb']} GB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_bench")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="en only; upstream, exact, fast")
    parser.add_argument("--rows", help="comma-separated rows (default: all)")
    # Internal: one row in this interpreter.
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument(
        "--sentences", default=",".join(SENTENCES), help="comma-separated, of: zh, en, long"
    )
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        result = run_row(
            args.row, args.model_dir, args.threads, args.sentences.split(","), args.reference
        )
        print(json.dumps(result, ensure_ascii=False))
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    names = ["upstream", "exact", "fast"] if args.quick else list(rows())
    if args.rows:
        names = ["upstream", *[n for n in args.rows.split(",") if n != "upstream"]]
    sentences = ["en"] if args.quick else args.sentences.split(",")
    report = run(args.model_dir.resolve(), args.threads, names, sentences, args.out)
    failed = [name for name, row in report["presets"].items() if "error" in row]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
