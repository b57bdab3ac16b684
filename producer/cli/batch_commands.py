"""Batch commands: submit, status, verify, failed, retry (fetch and manifest: results_commands)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from core.errors import InvalidBatch
from core.settings import Settings
from producer.cli.errors import EXIT_FAILED, EXIT_OK


def register(sub: Any) -> None:

    p = sub.add_parser("submit", help="validate and enqueue a CSV or JSONL file")
    p.add_argument(
        "file", type=Path, help="CSV with a header, or JSONL: id,text,speaker[,lang,format]"
    )
    p.add_argument(
        "--batch-id", help="name of the batch (resubmitting it enqueues only what is not done)"
    )
    p.add_argument(
        "--skip-invalid", action="store_true", help="enqueue valid rows, report bad ones"
    )
    p.add_argument("--wait", action="store_true", help="wait for the batch with a progress bar")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait at most")
    p.add_argument(
        "--manifest",
        type=Path,
        help="write one JSON line per row with its result and the batch id (without --wait: "
        "as things stand; `tts-batch manifest ID` writes it later)",
    )
    p.set_defaults(run=_cmd_submit)

    p = sub.add_parser("status", help="progress of a batch")
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser(
        "verify", help="check that every succeeded row's object is still in the bucket"
    )
    p.add_argument("batch_id")
    p.add_argument(
        "--repair", action="store_true", help="enqueue the jobs of missing objects again"
    )
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser("failed", help="list a batch's failed jobs (dead letters)")
    p.add_argument("batch_id")
    p.set_defaults(run=_cmd_failed)

    p = sub.add_parser("retry", help="enqueue a batch's failed jobs again")
    p.add_argument("batch_id")
    p.set_defaults(run=_cmd_retry)


def _producer(settings: Settings) -> Any:
    from producer.api import Producer

    return Producer(settings)


def _cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    producer = _producer(settings)
    handle = producer.submit_file(
        args.file,
        batch_id=args.batch_id,
        skip_invalid=args.skip_invalid,
        on_enqueued=_enqueue_bar(sys.stderr),
    )
    report = handle.report
    print(
        f"batch {handle.batch_id}: {report.rows} rows, {report.jobs_sent} jobs enqueued"
        + (
            f" ({report.jobs_taken_over} from a producer that died mid-send)"
            if report.jobs_taken_over
            else ""
        )
        + (f", {report.jobs_already_done} already done" if report.jobs_already_done else "")
        + (f", {report.jobs_in_flight} already queued" if report.jobs_in_flight else "")
        + (f", {report.rejected_count} rows rejected" if report.rejected_count else ""),
        file=sys.stderr,
    )
    for exc in report.rejected:
        print(f"  rejected: {exc}", file=sys.stderr)
    print(handle.batch_id)
    if not args.wait and args.manifest is None:
        return EXIT_FAILED if report.rejected_count else EXIT_OK
    results = (
        handle.wait(timeout=args.timeout, on_progress=_progress_bar(sys.stderr))
        if args.wait
        else list(handle.results())
    )
    if args.manifest is not None:
        from producer.cli.results_commands import write_manifest

        write_manifest(args.manifest, handle, report.rejected)
        pending = sum(r.status == "pending" for r in results)
        print(
            f"manifest: {args.manifest}"
            + (
                f" ({pending} rows pending: `tts-batch manifest {handle.batch_id} --out "
                f"{args.manifest}` writes it again later)"
                if pending
                else ""
            ),
            file=sys.stderr,
        )
    failed = [r for r in results if not r.ok]
    for result in failed[:20]:
        print(
            f"  {result.row_id}: {result.status} {result.reason or ''} {result.error or ''}",
            file=sys.stderr,
        )
    return EXIT_FAILED if failed or report.rejected_count else EXIT_OK


def _enqueue_bar(stream: TextIO) -> Callable[[int, int], None]:
    """A progress bar for sending a large file (shown once it has more than one chunk)."""
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            if done >= total:
                return  # one chunk: done before a bar would be worth drawing
            bar["bar"] = tqdm(total=total, unit="row", desc="enqueue", file=stream)
        bar["bar"].update(done - bar["bar"].n)
        if done >= total:
            bar["bar"].close()

    return update


def _progress_bar(stream: TextIO) -> Callable[[Any], None]:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(progress: Any) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=progress.total, unit="row", file=stream, dynamic_ncols=True)
        done = progress.succeeded + progress.failed
        bar["bar"].set_postfix(
            ok=progress.succeeded, failed=progress.failed, cached=progress.cached
        )
        bar["bar"].update(done - bar["bar"].n)
        if progress.done:
            bar["bar"].close()

    return update


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    handle = _producer(settings).batch(args.batch_id)
    progress = handle.progress()
    if progress.total == 0:
        raise InvalidBatch(f"no batch {args.batch_id!r} (expired or never submitted)")
    figures = {
        "batch_id": args.batch_id,
        "total": progress.total,
        "succeeded": progress.succeeded,
        "cached": progress.cached,
        "failed": progress.failed,
        "pending": progress.pending,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print("  ".join(f"{k}={v}" for k, v in figures.items()))
    return EXIT_OK if progress.done and progress.failed == 0 else EXIT_FAILED


def _cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    def show(row: Any) -> None:
        print(json.dumps(row.to_dict(), ensure_ascii=False), flush=True)

    report = _producer(settings).verify(args.batch_id, repair=args.repair, on_missing=show)
    print(report.summary(args.batch_id), file=sys.stderr)
    if report.repaired:
        print(
            f"{report.jobs_enqueued} jobs enqueued again; their rows are pending until done "
            f"(tts-batch status {args.batch_id})",
            file=sys.stderr,
        )
    if args.repair and report.unrepaired:
        print(
            f"{report.unrepaired} missing rows not enqueued: recorded without their message "
            "(submitting those rows under a new batch id makes their objects again), or changed "
            "since verify read them (run verify again)",
            file=sys.stderr,
        )
    # Exit 0 when nothing is missing, or when --repair enqueued every missing row again.
    return EXIT_FAILED if report.unrepaired else EXIT_OK


def _cmd_failed(args: argparse.Namespace, settings: Settings) -> int:
    handle = _producer(settings).batch(args.batch_id)
    failed = handle.failed()
    for result in failed:
        print(
            json.dumps(
                {
                    "id": result.row_id,
                    "job_id": result.job_id,
                    "reason": result.reason,
                    "attempts": result.attempts,
                    "error": result.error,
                },
                ensure_ascii=False,
            )
        )
    print(f"{len(failed)} failed rows", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    count = _producer(settings).retry_failed(args.batch_id)
    print(f"{count} failed jobs enqueued again")
    return EXIT_OK
