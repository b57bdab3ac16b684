"""Run in a subprocess by tests/test_large_input.py: read (or submit) a job file and print
JSON figures: rows, seconds, and the growth of the process's peak RSS while doing it.

    python -m tests.support.enqueue_probe submit FILE BATCH_ID  # Producer.submit_file (env)
    python -m tests.support.enqueue_probe hold FILE             # every row kept as a dict

A `-traced` mode (`submit-traced`) also runs tracemalloc and reports the peak of memory that
Python allocated during the work (precise, but several times slower). The RSS growth is the
sampled peak during the work minus the RSS just before it (imports and clients done).
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any


def rss_mb() -> float:
    """The process's resident set now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakSampler:
    """Samples the current RSS every few milliseconds on a thread and keeps the maximum: unlike
    ru_maxrss, a transient peak before the work (imports) cannot hide growth during it."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peak = rss_mb()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_mb())


def main(argv: list[str]) -> dict[str, Any]:
    trace = argv[0].endswith("-traced")
    mode, path = argv[0].removesuffix("-traced"), Path(argv[1])
    from core.settings import Settings
    from producer.api import Producer
    from producer.rows import read_rows

    producer = Producer(Settings.from_env())
    # Warm the broker connection and the clients so that their buffers count as baseline.
    producer._redis.ping()
    with producer._sender._app.producer_or_acquire():
        pass
    before = rss_mb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if mode == "submit":
            report = producer.submit_file(path, batch_id=argv[2]).report
            rows, jobs = report.rows, report.jobs_sent
        else:
            held = [fields for _, fields in read_rows(path)]
            rows, jobs = len(held), 0
    seconds = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    return {
        "traced_peak_mb": None if traced_peak is None else round(traced_peak, 1),
        "rows": rows,
        "jobs_sent": jobs,
        "seconds": round(seconds, 2),
        "rss_before_mb": round(before, 1),
        "rss_growth_mb": round(sampler.peak - before, 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
