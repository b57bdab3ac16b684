"""CosyVoice start-up: cold import and load seconds, upstream `CosyVoice(dir)` against the
project's loader, each run in a fresh interpreter (medians of `--runs`).

    python -m benchmarks.cosyvoice_startup --model-dir /tmp/tts-batch-cosyvoice-full --runs 3

"upstream" imports `cosyvoice.cli.cosyvoice` and calls `CosyVoice(dir)`; "loader" calls
`worker.engines.cosyvoice.loader.import_runtime()` then `load_cosyvoice(dir, cache_dir=...)`
(the first loader run of a fresh cache builds the normalizer FSTs; `--warm-cache` builds them
before timing). Both load with one torch thread, as the engine does before a worker forks.
Wall seconds suffer from the machine's other users; the process's CPU seconds (user + system)
much less so, and are reported beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# Runs in a fresh interpreter: prints one JSON line with the figures of one start.
_CHILD = """
import json, resource, sys, time
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
started, started_cpu = time.perf_counter(), cpu()
import torch
torch.set_num_threads(1)
path, model_dir, cache_dir = sys.argv[1], sys.argv[2], sys.argv[3]
if path == "upstream":
    from cosyvoice.cli.cosyvoice import CosyVoice
    imported, imported_cpu = time.perf_counter(), cpu()
    model = CosyVoice(model_dir)
else:
    from worker.engines.cosyvoice import loader
    loader.import_runtime()
    imported, imported_cpu = time.perf_counter(), cpu()
    model = loader.load_cosyvoice(model_dir, cache_dir=cache_dir)
loaded, loaded_cpu = time.perf_counter(), cpu()
assert model.list_available_spks()
print(json.dumps({
    "import_seconds": imported - started,
    "load_seconds": loaded - imported,
    "import_cpu_seconds": imported_cpu - started_cpu,
    "load_cpu_seconds": loaded_cpu - imported_cpu,
    "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
}))
"""


def one_start(path: str, model_dir: Path, cache_dir: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, path, str(model_dir), str(cache_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def summarize(path: str, samples: list[dict[str, float]]) -> dict[str, Any]:
    report: dict[str, Any] = {"path": path, "runs": samples}
    keys = ("import_seconds", "load_seconds", "import_cpu_seconds", "load_cpu_seconds")
    for key in (*keys, "peak_rss_gb"):
        values = [s[key] for s in samples]
        report[key] = {
            "median": round(statistics.median(values), 2),
            "min": round(min(values), 2),
            "max": round(max(values), 2),
        }
    totals = [s["import_seconds"] + s["load_seconds"] for s in samples]
    report["total_seconds"] = {"median": round(statistics.median(totals), 2)}
    cpu = [s["import_cpu_seconds"] + s["load_cpu_seconds"] for s in samples]
    report["total_cpu_seconds"] = {"median": round(statistics.median(cpu), 2)}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cosyvoice_startup")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default="upstream,loader")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--warm-cache", action="store_true", help="build the cache untimed")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cv-startup-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        if args.warm_cache:
            one_start("loader", args.model_dir, cache_dir)
        paths = args.paths.split(",")
        samples: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
        # Interleaved, so that both paths see the same noise from the machine's other users.
        for _ in range(args.runs):
            for p in paths:
                samples[p].append(one_start(p, args.model_dir, cache_dir))
        reports = [summarize(p, samples[p]) for p in paths]
    for r in reports:
        print(
            f"{r['path']}: import {r['import_seconds']['median']} s "
            f"[{r['import_seconds']['min']}-{r['import_seconds']['max']}], "
            f"load {r['load_seconds']['median']} s "
            f"[{r['load_seconds']['min']}-{r['load_seconds']['max']}], "
            f"total {r['total_seconds']['median']} s "
            f"(CPU: import {r['import_cpu_seconds']['median']} s, "
            f"load {r['load_cpu_seconds']['median']} s, "
            f"total {r['total_cpu_seconds']['median']} s), "
            f"peak RSS {r['peak_rss_gb']['median']} GB"
        )
    if args.out:
        args.out.write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
