"""Batch commands: submit, status, fetch, verify, failed, retry."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from core.delivery import DEFAULT_PRIORITY, PRIORITIES
from core.errors import ERROR_REASONS, INPUT_REASONS, InvalidBatch, InvalidJob
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
    p.add_argument("--manifest", type=Path, help="write one JSON line per row with its result")
    p.add_argument(
        "--priority",
        choices=tuple(PRIORITIES),
        default=DEFAULT_PRIORITY,
        help="queue order: workers take high before normal before low (default normal)",
    )
    p.set_defaults(run=_cmd_submit)

    p = sub.add_parser("status", help="progress of a batch")
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser("fetch", help="download a batch's audio, named by row id")
    p.add_argument("batch_id")
    p.add_argument("--to", type=Path, required=True, help="folder to write into")
    p.set_defaults(run=_cmd_fetch)

    p = sub.add_parser(
        "verify", help="check that every succeeded row's object is still in the bucket"
    )
    p.add_argument("batch_id")
    p.add_argument(
        "--repair", action="store_true", help="enqueue the jobs of missing objects again"
    )
    p.set_defaults(run=_cmd_verify)

    p = sub.add_parser(
        "failed", help="list a batch's failed jobs (dead letters) and rows rejected at submit"
    )
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true", help="print one JSON object")
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
        on_enqueued=_enqueue_bar(sys.stderr),
        priority=args.priority,
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
        + (f", {report.rejected_count} rows rejected" if report.rejected_count else "")
        + (f", priority {args.priority}" if args.priority != DEFAULT_PRIORITY else ""),
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
        _write_manifest(args.manifest, results, report.rejected)
        print(f"manifest: {args.manifest}", file=sys.stderr)
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


def _write_manifest(path: Path, results: Sequence[Any], rejected: Sequence[InvalidJob]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for result in results:
            out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        for exc in rejected:
            line = {
                "line": exc.row,
                "status": "rejected",
                "field": exc.field,
                "reason": exc.reason,
                "error": str(exc),
            }
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


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
        "cancelled": progress.cancelled,
        "rejected": progress.rejected,
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print("  ".join(f"{k}={v}" for k, v in figures.items()))
    # Exit 0 only when every row has its audio: none failed, cancelled or rejected.
    unfinished = progress.failed + progress.cancelled + progress.rejected
    return EXIT_OK if progress.done and unfinished == 0 else EXIT_FAILED


def _cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from core.errors import ObjectMissing
    from core.storage import AudioStore

    handle = _producer(settings).batch(args.batch_id)
    store = AudioStore.from_settings(settings)
    args.to.mkdir(parents=True, exist_ok=True)
    written = no_audio = vanished = 0
    for result in handle.results():
        if not result.ok or result.key is None:
            no_audio += 1
            continue
        extension = result.key.rsplit(".", 1)[-1]
        # Row ids match [A-Za-z0-9._-]{1,128}: safe as file names (never '..' alone).
        name = result.row_id if result.row_id not in (".", "..") else f"_{result.row_id}"
        try:
            store.download(result.key, args.to / f"{name}.{extension}")
        except ObjectMissing:
            # Recorded as done, gone from the bucket: report it and fetch the rest.
            vanished += 1
            line = {"id": result.row_id, "job_id": result.job_id, "status": result.status}
            print(json.dumps({**line, "key": result.key, "error": "object missing"}))
            continue
        written += 1
    print(
        f"{written} files in {args.to}"
        + (f"; {no_audio} rows have no audio" if no_audio else "")
        + (
            f"; {vanished} objects missing (tts-batch verify {args.batch_id} --repair)"
            if vanished
            else ""
        )
    )
    if written == 0 and no_audio == 0 and vanished == 0:
        raise InvalidBatch(f"no batch {args.batch_id!r} (expired or never submitted)")
    return EXIT_FAILED if no_audio or vanished else EXIT_OK


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
    if not handle.exists():
        raise InvalidBatch(f"no batch {args.batch_id!r} (expired or never submitted)")
    failed = [
        {
            "id": result.row_id,
            "job_id": result.job_id,
            "status": "failed",
            "reason": result.reason,
            "attempts": result.attempts,
            "error": result.error,
        }
        for result in handle.failed()
    ]
    # Rows refused at submission (--skip-invalid): named by their line, never a job.
    rejected = handle.rejected()
    if args.json:
        print(
            json.dumps(
                {"batch_id": args.batch_id, "failed": failed, "rejected": rejected},
                ensure_ascii=False,
            )
        )
    else:
        for line in [*failed, *rejected]:
            print(json.dumps(line, ensure_ascii=False))
        print(f"{len(failed)} failed rows, {len(rejected)} rejected rows", file=sys.stderr)
    return EXIT_FAILED if failed or rejected else EXIT_OK


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
