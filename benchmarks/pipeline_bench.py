"""Pipeline throughput, side by side in one run, on a local stack started for the purpose.

Scenarios (each a fresh batch of unique texts unless said otherwise):
  fake engine, 1 process vs 2 processes   -> what a second process buys on this machine
  espeak, 2 processes: new texts vs the same texts again (served from S3) -> what the cache buys

    python -m benchmarks.pipeline_bench [--jobs 300] [--out bench-results/pipeline.json]

Figures, not assertions: these machines are noisy; compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from core.settings import Settings
from devstack.stack import LocalStack, StackLayout, StackPorts
from producer.api import Producer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "announcements.csv"


def _rows(n: int, tag: str) -> list[dict[str, Any]]:
    lines = EXAMPLES.read_text(encoding="utf-8").splitlines()[1:]
    import csv

    examples = list(csv.reader(lines))
    out = []
    for i in range(n):
        row_id, text, speaker, lang, _fmt = examples[i % len(examples)]
        out.append(
            {"id": f"{row_id}-{i}", "text": f"{text} ({tag} {i})", "speaker": speaker, "lang": lang}
        )
    return out


def _run_batch(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, float]:
    producer = Producer(settings)
    started = time.perf_counter()
    results = producer.submit_batch(rows).wait(timeout=1800)
    seconds = time.perf_counter() - started
    ok = sum(r.ok for r in results)
    audio = sum(r.audio_seconds or 0.0 for r in results)
    cached = sum(r.cached for r in results)
    return {
        "jobs": len(rows),
        "ok": ok,
        "cached": cached,
        "seconds": round(seconds, 3),
        "jobs_per_second": round(len(rows) / seconds, 2),
        "audio_seconds": round(audio, 1),
        "audio_seconds_per_second": round(audio / seconds, 2),
    }


def _scenario(
    stack: LocalStack, name: str, settings: Settings, *, concurrency: int, batches: list[Any]
) -> list[dict[str, float]]:
    node = LocalStack(stack.layout, base_settings=settings, ready_timeout=300)
    worker = f"worker-bench-{name}"
    node.up([worker], concurrency=concurrency)
    try:
        return [_run_batch(stack.settings(), rows) for rows in batches]
    finally:
        node.stop(worker)


def run(jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as state:
        base = Settings(pushgateway_url="", batch_ttl_seconds=3600)
        stack = LocalStack(
            StackLayout(Path(state), ports=StackPorts.find_free()), base_settings=base
        )
        stack.up(["redis", "s3"])
        try:
            fake = replace(base, engine="fake")
            tag = uuid.uuid4().hex[:6]
            [one] = _scenario(stack, "f1", fake, concurrency=1, batches=[_rows(jobs, tag + "a")])
            [two] = _scenario(stack, "f2", fake, concurrency=2, batches=[_rows(jobs, tag + "b")])
            espeak_rows = _rows(max(jobs // 5, 24), tag + "e")
            fresh, again = _scenario(
                stack,
                "e2",
                replace(base, engine="espeak"),
                concurrency=2,
                batches=[espeak_rows, espeak_rows],
            )
            redis.Redis.from_url(stack.settings().broker_url).flushdb()
        finally:
            stack.down()
    return {
        "machine": {"cpus": _cpus(), "python": platform.python_version(), "node": platform.node()},
        "fake_1_process": one,
        "fake_2_processes": two,
        "espeak_2_processes_new_text": fresh,
        "espeak_2_processes_cached": again,
        "ratios": {
            "fake_2_vs_1_processes": round(two["jobs_per_second"] / one["jobs_per_second"], 2),
            "espeak_cached_vs_new": round(again["jobs_per_second"] / fresh["jobs_per_second"], 2),
        },
    }


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("bench-results/pipeline.json"))
    args = parser.parse_args()
    figures = run(args.jobs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    f1, f2 = figures["fake_1_process"], figures["fake_2_processes"]
    e1, e2 = figures["espeak_2_processes_new_text"], figures["espeak_2_processes_cached"]
    r = figures["ratios"]
    print(
        f"pipeline: fake {f1['jobs_per_second']} jobs/s (1 proc) vs {f2['jobs_per_second']} "
        f"(2 procs), x{r['fake_2_vs_1_processes']}; espeak {e1['jobs_per_second']} jobs/s "
        f"({e1['audio_seconds_per_second']} audio s/s) vs cached {e2['jobs_per_second']}, "
        f"x{r['espeak_cached_vs_new']}  -> {args.out}"
    )


if __name__ == "__main__":
    main()
