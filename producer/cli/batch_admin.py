"""Batch administration: list recent batches, cancel one."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from core.settings import Settings
from producer.cli.errors import EXIT_OK

# Columns of `tts-batch batches`, in order (the JSON objects carry the same names).
_COUNTS = ("total", "succeeded", "cached", "failed", "pending", "cancelled", "rejected")


def register(sub: Any) -> None:
    p = sub.add_parser("batches", help="recent batches, newest first, with their counts")
    p.add_argument("--json", action="store_true", help="print one JSON array")
    p.add_argument(
        "--limit", type=_positive, default=20, help="how many batches at most (default 20)"
    )
    p.set_defaults(run=_cmd_batches)

    p = sub.add_parser(
        "cancel", help="cancel a batch: jobs not started never run, running ones finish"
    )
    p.add_argument("batch_id")
    p.set_defaults(run=_cmd_cancel)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _producer(settings: Settings) -> Any:
    from producer.api import Producer

    return Producer(settings)


def _cmd_batches(args: argparse.Namespace, settings: Settings) -> int:
    summaries = _producer(settings).batches(limit=args.limit)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries]))
        return EXIT_OK
    header = ["batch", "submitted (UTC)", *_COUNTS]
    rows = [header]
    for s in summaries:
        row = s.to_dict()
        submitted = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.created_at))
        name = s.batch_id + (" (cancelled)" if s.cancelled_at else "")
        rows.append([name, submitted, *(str(row[c]) for c in _COUNTS)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if not summaries:
        print("no batches (batches are kept TTS_BATCH_TTL_SECONDS after their last change)")
    return EXIT_OK


def _cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    report = _producer(settings).cancel(args.batch_id)
    print(
        f"batch {args.batch_id}: {report.rows_cancelled} rows cancelled "
        f"({report.jobs_cancelled} jobs)"
        + (
            f"; {report.rows_running} rows running finish (tts-batch status {args.batch_id})"
            if report.rows_running
            else ""
        )
    )
    return EXIT_OK
