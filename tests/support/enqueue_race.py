"""Run in a subprocess by tests/test_enqueue_once.py: one producer submitting a batch of
generated rows, with settings from the environment; prints its SubmitReport as JSON.

    python -m tests.support.enqueue_race BATCH_ID ROWS TAG [--ready FILE --go FILE]
                                         [--send-delay SECONDS]

`--ready`/`--go`: write FILE `ready` once imported and connected, then wait for `go` to exist
(so that two producers start their submissions together). `--send-delay`: sleep this long
after each message sent, so that a test can kill the producer in the middle of a chunk.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

SPEAKER = "英文女"


def rows(n: int, tag: str) -> list[dict[str, str]]:
    """The rows every producer of a test submits: the same for the same (n, tag)."""
    return [{"id": f"r{i}", "text": f"{tag} number {i}.", "speaker": SPEAKER} for i in range(n)]


class SlowSender:
    """Sends one message at a time, pausing after each."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner = inner
        self._delay = delay

    def send(self, messages: Sequence[dict[str, Any]], **options: Any) -> None:
        for message in messages:
            self._inner.send([message], **options)
            time.sleep(self._delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("batch_id")
    parser.add_argument("rows", type=int)
    parser.add_argument("tag")
    parser.add_argument("--ready", type=Path)
    parser.add_argument("--go", type=Path)
    parser.add_argument("--send-delay", type=float, default=0.0)
    args = parser.parse_args()

    from core.settings import Settings
    from producer.api import Producer

    producer = Producer(Settings.from_env())
    producer._redis.ping()
    if args.send_delay:
        producer._sender = SlowSender(producer._sender, args.send_delay)  # type: ignore[assignment]
    batch = rows(args.rows, args.tag)
    if args.ready is not None and args.go is not None:
        args.ready.write_text("ready")
        deadline = time.monotonic() + 60
        while not args.go.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no go after 60 s")
            time.sleep(0.001)
    started = time.perf_counter()
    report = producer.submit_batch(batch, batch_id=args.batch_id).report
    figures = asdict(report)
    figures.pop("rejected")
    figures["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
