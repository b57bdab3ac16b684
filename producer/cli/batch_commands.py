"""Batch commands: submit, status, verify, failed, retry (fetch and manifests: results_commands)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from core.delivery import DEFAULT_PRIORITY, PRIORITIES
from core.errors import ERROR_REASONS, INPUT_REASONS, InvalidBatch, InvalidJob
from core.settings import Settings
from producer.cli.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, still_running_hint
from producer.cli.output import (
    add_output_options,
    batch_progress,
    count_progress,
    print_json,
    say,
)


def register(sub: Any) -> None:

    p = sub.add_parser("submit", help="validate and enqueue a CSV or JSONL file")
    p.add_argument(
        "file",
        type=Path,
        help="CSV with a header, or JSONL: id,text,speaker[,lang,format,sample_rate,loudness,...]",
    )
    p.add_argument(
        "--batch-id", help="name of the batch (resubmitting it enqueues only what is not done)"
    )
    p.add_argument(
        "--skip-invalid", action="store_true", help="enqueue valid rows, report bad ones"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the batch (a progress bar on a terminal, a line every 10 s otherwise)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait at most (then exit 1; the batch keeps running)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        help="write one JSON line per row with its result and the batch id (without --wait: "
        "as things stand; `tts-batch manifest ID` writes it later)",
    )
    add_output_options(p)
    p.add_argument(
        "--priority",
        choices=tuple(PRIORITIES),
        default=DEFAULT_PRIORITY,
        help="queue order: workers take high before normal before low (default normal)",
    )
    # Per-batch output defaults; a row's own column or field wins (core.contract checks them).
    p.add_argument("--format", dest="out_format", help="wav, flac, ogg, opus or mp3")
    p.add_argument("--rate", dest="out_rate", help="sample rate in Hz (8000 ... 48000)")
    p.add_argument("--loudness", dest="out_loudness", help="target loudness, LUFS (-40 .. -5)")
    p.add_argument(
        "--lexicon",
        type=Path,
        help="a CSV, TSV or JSON file: how words or patterns are spoken, per language "
        "(docs/lexicon.md); applied to every job of this submission",
    )
    p.set_defaults(run=_cmd_submit)

    p = sub.add_parser("status", help="progress of a batch")
    p.add_argument("batch_id")
    add_output_options(p)
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser(
        "verify", help="check that every succeeded row's object is still in the bucket"
    )
    p.add_argument("batch_id")
    p.add_argument(
        "--repair", action="store_true", help="enqueue the jobs of missing objects again"
    )
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser(
        "failed",
        help="list a batch's failed jobs (dead letters) and rows rejected at submit: one JSON "
        "line each, or --json",
    )
    p.add_argument("batch_id")
    add_output_options(p)
    p.set_defaults(run=_cmd_failed)

    p = sub.add_parser(
        "retry",
        help="enqueue a batch's failed jobs again (bad-input reasons only with --reason)",
    )
    p.add_argument("batch_id")
    p.add_argument(
        "--reason",
        action="append",
        choices=ERROR_REASONS,
        metavar="REASON",
        help="retry only jobs that failed for REASON (repeatable); names bad-input reasons "
        f"({', '.join(sorted(INPUT_REASONS))}), which are skipped otherwise",
    )
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
        on_enqueued=count_progress(sys.stderr, "enqueue", quiet=args.quiet),
        priority=args.priority,
        defaults={
            "format": args.out_format,
            "sample_rate": args.out_rate,
            "loudness": args.out_loudness,
        },
        lexicon=args.lexicon,
    )
    report = handle.report
    say(_submit_summary(handle.batch_id, report, args.priority), quiet=args.quiet)
    for exc in report.rejected:
        print(f"  rejected: {exc}", file=sys.stderr)
    _print_warnings(report, sys.stderr)
    document: dict[str, Any] = {
        "batch_id": handle.batch_id,
        "rows": report.rows,
        "jobs_enqueued": report.jobs_sent,
        "jobs_taken_over": report.jobs_taken_over,
        "jobs_already_done": report.jobs_already_done,
        "jobs_already_queued": report.jobs_in_flight,
        "rejected": [_rejected_line(exc) for exc in report.rejected],
        "warnings": list(report.warnings),
        "warnings_count": report.warnings_count,
    }
    if not args.json:
        print(handle.batch_id, flush=True)
    try:
        return _finish_submit(args, handle, document)
    except KeyboardInterrupt:
        # Ctrl-C stops the waiting, not the batch: the jobs are in the queue already.
        print(
            f"tts-batch: interrupted; {still_running_hint(handle.batch_id)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def _finish_submit(args: argparse.Namespace, handle: Any, document: dict[str, Any]) -> int:
    rejected_count = handle.report.rejected_count
    if not args.wait and args.manifest is None:
        if args.json:
            print_json(document)
        return EXIT_FAILED if rejected_count else EXIT_OK
    try:
        results = (
            handle.wait(
                timeout=args.timeout,
                on_progress=batch_progress(sys.stderr, handle.batch_id, quiet=args.quiet),
            )
            if args.wait
            else list(handle.results())
        )
    except TimeoutError as exc:
        print(f"tts-batch: error: {exc}; {still_running_hint(handle.batch_id)}", file=sys.stderr)
        if args.json:
            print_json({**document, "finished": False, **_counts(handle.progress())})
        return EXIT_FAILED
    if args.manifest is not None:
        from producer.cli.results_commands import write_manifest

        write_manifest(args.manifest, handle)
        pending = sum(r.status == "pending" for r in results)
        say(
            f"manifest: {args.manifest}"
            + (
                f" ({pending} rows pending: `tts-batch manifest {handle.batch_id} --out "
                f"{args.manifest}` writes it again later)"
                if pending
                else ""
            ),
            quiet=args.quiet,
        )
    failed = [r for r in results if not r.ok]
    for result in failed[:20]:
        print(
            f"  {result.row_id}: {result.status} {result.reason or ''} {result.error or ''}",
            file=sys.stderr,
        )
    if args.json:
        finished = args.wait or not any(r.status == "pending" for r in results)
        print_json(
            {
                **document,
                "finished": finished,
                **_counts(handle.progress()),
                "failed_rows": [_failed_line(r) for r in failed if r.status == "failed"],
            }
        )
    return EXIT_FAILED if failed or rejected_count else EXIT_OK


def _submit_summary(batch_id: str, report: Any, priority: str) -> str:
    return (
        f"batch {batch_id}: {report.rows} rows, {report.jobs_sent} jobs enqueued"
        + (
            f" ({report.jobs_taken_over} from a producer that died mid-send)"
            if report.jobs_taken_over
            else ""
        )
        + (f", {report.jobs_already_done} already done" if report.jobs_already_done else "")
        + (f", {report.jobs_in_flight} already queued" if report.jobs_in_flight else "")
        + (f", {report.rejected_count} rows rejected" if report.rejected_count else "")
        + (f", priority {priority}" if priority != DEFAULT_PRIORITY else "")
    )


def _counts(progress: Any) -> dict[str, int]:
    return {
        "total": progress.total,
        "succeeded": progress.succeeded,
        "cached": progress.cached,
        "failed": progress.failed,
        "pending": progress.pending,
        "cancelled": progress.cancelled,
        "rejected": progress.rejected,
    }


def _print_warnings(report: Any, stream: TextIO) -> None:
    """One line per warned row (the report keeps the first ones), then how many more."""
    for warning in report.warnings:
        print(f"  warning: {warning}", file=stream)
    more = report.warnings_count - len(report.warnings)
    if more > 0:
        print(
            f"  warning: and {more} more rows whose lang disagrees with their speaker", file=stream
        )


def _rejected_line(exc: InvalidJob) -> dict[str, Any]:
    return {
        "line": exc.row,
        "status": "rejected",
        "field": exc.field,
        "reason": exc.reason,
        "error": str(exc),
    }


def _failed_line(result: Any) -> dict[str, Any]:
    return {
        "id": result.row_id,
        "job_id": result.job_id,
        "reason": result.reason,
        "attempts": result.attempts,
        "error": result.error,
    }


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    handle = _producer(settings).batch(args.batch_id)
    progress = handle.progress()
    if progress.total == 0:
        raise InvalidBatch(f"no batch {args.batch_id!r} (expired or never submitted)")
    figures = {"batch_id": args.batch_id, **_counts(progress)}
    if args.json:
        print_json(figures)
    else:
        print("  ".join(f"{k}={v}" for k, v in figures.items()))
    # Exit 0 only when every row has its audio: none failed, cancelled or rejected.
    unfinished = progress.failed + progress.cancelled + progress.rejected
    return EXIT_OK if progress.done and unfinished == 0 else EXIT_FAILED


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
    _require_batch(handle)
    failed = handle.failed()
    # Rows refused at submission (--skip-invalid): named by their line, never a job.
    rejected = handle.rejected()
    if args.json:
        print_json(
            {
                "batch_id": args.batch_id,
                "failed_rows": [_failed_line(r) for r in failed],
                "rejected_rows": rejected,
            }
        )
    else:
        for line in [*(_failed_line(r) for r in failed), *rejected]:
            print(json.dumps(line, ensure_ascii=False))
    tail = f", {len(rejected)} rejected rows" if rejected else ""
    say(f"{len(failed)} failed rows{tail}", quiet=args.quiet)
    return EXIT_FAILED if failed or rejected else EXIT_OK


def _require_batch(handle: Any) -> None:
    """InvalidBatch (exit 2) for a batch Redis does not know; reads only, writes nothing.
    (Its meta, not its total: a batch whose every row was rejected has none.)"""
    if not handle.exists():
        raise InvalidBatch(f"no batch {handle.batch_id!r} (expired or never submitted)")


def _cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    report = _producer(settings).retry(args.batch_id, reasons=args.reason)
    print(f"{report.jobs_sent} failed jobs enqueued again")
    if report.skipped:
        why = ", ".join(f"{reason}: {n}" for reason, n in sorted(report.skipped.items()))
        permanent = sorted(r for r in report.skipped if r in INPUT_REASONS)
        hint = (
            f" (bad input fails again as given; fix the rows, or name the reason: "
            f"--reason {permanent[0]})"
            if permanent and args.reason is None
            else ""
        )
        print(f"skipped {sum(report.skipped.values())} failed jobs ({why}){hint}", file=sys.stderr)
    return EXIT_OK
