"""`make bench`: every benchmark, one after the other; each writes JSON into bench-results/ and
prints a one-line summary. Figures, not tests.

    python -m benchmarks.run [--skip-cosyvoice]
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-cosyvoice", action="store_true", help="skip the full-size CosyVoice runs (~45 min)"
    )
    args = parser.parse_args()
    runs = [
        ["benchmarks.pipeline_bench", "--out", "bench-results/pipeline.json"],
        # fake and espeak, pushing on and off alternated, 3 rounds (~3 min); the full run
        # (5 rounds, longer phases) alone: python -m benchmarks.metrics_bench --out FILE.
        ["benchmarks.metrics_bench", "--quick", "--out", "bench-results/metrics.json"],
        # The pipeline against a bare Celery task and one making only its S3 calls (~2.5 min).
        ["benchmarks.plumbing_bench", "--quick", "--out", "bench-results/plumbing.json"],
    ]
    # A rendition from a cached master against a synthesis, in-process (espeak < 1 min; with
    # CosyVoice's full-size random model ~6 min on 2 cores).
    renditions = ["benchmarks.rendition_bench", "--out", "bench-results/renditions.json"]
    if args.skip_cosyvoice:
        renditions.append("--skip-cosyvoice")
    runs.append(renditions)
    if not args.skip_cosyvoice:
        runs.append(["benchmarks.cosyvoice_bench", "--out", "bench-results/cosyvoice.json"])
        runs.append(
            ["benchmarks.cosyvoice_threads", "--out", "bench-results/cosyvoice-threads.json"]
        )
        # Batch sizes 1-16, both presets, one worker process (< 15 min): prints the table and
        # writes bench-results/batch.png. The full grid (2 processes, 2-30 s jobs) runs alone:
        # python -m benchmarks.batch_bench --out FILE.
        runs.append(["benchmarks.batch_bench", "--quick", "--out", "bench-results/batch.json"])
    failed = 0
    for module, *rest in runs:
        # One interpreter per benchmark: import times and peak RSS are its own.
        failed |= subprocess.run([sys.executable, "-m", module, *rest], check=False).returncode
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
