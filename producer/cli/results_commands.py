"""Results commands: fetch (download, or presigned URLs) and manifest; the manifest file that
`submit --manifest` writes.

A manifest line per row, for every status, each with the batch id (core/manifest.py). `fetch`
keeps files already present with the same size and MD5 (producer/results.py), so a fetch that
was interrupted or is run again downloads only what is new or changed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from core.errors import InvalidBatch
from core.settings import Settings
from producer.cli.errors import EXIT_FAILED, EXIT_OK
from producer.cli.output import add_output_options


def register(sub: Any) -> None:
    p = sub.add_parser("fetch", help="download a batch's audio, named by row id (resumes)")
    p.add_argument("batch_id")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, help="folder to write into (files already there kept)")
    where.add_argument(
        "--presign",
        type=_presign_seconds,
        metavar="SECONDS",
        help="print a presigned URL per row, valid SECONDS (at most 604800), instead",
    )
    add_output_options(p)
    p.set_defaults(run=_cmd_fetch)

    p = sub.add_parser("manifest", help="write a batch's manifest now (one JSON line per row)")
    p.add_argument("batch_id")
    p.add_argument("--out", type=Path, help="file to write (default: stdout)")
    p.add_argument(
        "--upload",
        action="store_true",
        help="also write it to S3 as batches/ID/manifest.json (workers do when a batch ends)",
    )
    p.set_defaults(run=_cmd_manifest)


def _presign_seconds(text: str) -> int:
    from producer.results import MAX_PRESIGN_SECONDS

    try:
        seconds = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PRESIGN_SECONDS} seconds (7 days)")
    return seconds


def _handle(settings: Settings, batch_id: str) -> Any:
    """The batch's handle; InvalidBatch (exit 2, nothing done) when there is no such batch."""
    from producer.api import Producer

    handle = Producer(settings).batch(batch_id)
    if not handle.exists():
        raise InvalidBatch(f"no batch {batch_id!r} (expired or never submitted)")
    return handle


# -- manifest ----------------------------------------------------------------------------------


def write_manifest(path: Path, handle: Any) -> int:
    """Write the batch's manifest to `path` (JSON lines); returns the lines written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        return _write_lines(out, handle)


def _write_lines(out: TextIO, handle: Any) -> int:
    count = 0
    for line in handle.manifest():
        out.write(json.dumps(line, ensure_ascii=False) + "\n")
        count += 1
    return count


def _cmd_manifest(args: argparse.Namespace, settings: Settings) -> int:
    handle = _handle(settings, args.batch_id)
    if args.out is None:
        _write_lines(sys.stdout, handle)
    else:
        count = write_manifest(args.out, handle)
        print(f"manifest: {args.out} ({count} rows)", file=sys.stderr)
    progress = handle.progress()
    if args.upload:
        print(f"manifest object: {handle.upload_manifest()}", file=sys.stderr)
    if progress.pending:
        print(
            f"{progress.pending} of {progress.total} rows still pending "
            f"(tts-batch status {handle.batch_id}; workers write the manifest object when the "
            "batch ends)",
            file=sys.stderr,
        )
    return EXIT_OK if progress.done and progress.failed == 0 else EXIT_FAILED


# -- fetch ---------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace, settings: Settings) -> int:
    handle = _handle(settings, args.batch_id)  # before any folder is made
    if args.presign is not None:
        return _presign(handle, args.presign, as_json=args.json)
    return _download(handle, args.to, as_json=args.json, quiet=args.quiet)


def _download(handle: Any, folder: Path, *, as_json: bool, quiet: bool) -> int:
    from producer.cli.fetch_progress import FetchProgress
    from producer.results import DOWNLOADED, MISSING, NO_AUDIO, SKIPPED, fetch_all

    store = handle.store
    folder.mkdir(parents=True, exist_ok=True)
    progress = FetchProgress(handle.progress().total, sys.stderr, quiet=quiet)
    rows: list[dict[str, Any]] = []
    for fetched in fetch_all(store, handle.results(), folder):
        result = fetched.result
        progress.step(fetched)
        if as_json:
            rows.append(_fetched_row(result, fetched))
        elif fetched.action == MISSING:
            # Recorded as done, gone from the bucket: say which, and fetch the rest.
            line = {"id": result.row_id, "job_id": result.job_id, "status": result.status}
            print(json.dumps({**line, "key": result.key, "error": "object missing"}), flush=True)
    progress.close()
    counts = progress.counts
    present = counts[DOWNLOADED] + counts[SKIPPED]
    if as_json:
        summary = {
            "batch_id": handle.batch_id,
            "to": str(folder),
            "files": present,
            **{action: counts[action] for action in (DOWNLOADED, SKIPPED, NO_AUDIO, MISSING)},
            "rows": rows,
        }
        print(json.dumps(summary, ensure_ascii=False))
    elif not quiet:
        print(
            f"{present} files in {folder} ({counts[DOWNLOADED]} downloaded, "
            f"{counts[SKIPPED]} already present)"
            + (f"; {counts[NO_AUDIO]} rows have no audio" if counts[NO_AUDIO] else "")
            + (
                f"; {counts[MISSING]} objects missing (tts-batch verify {handle.batch_id} --repair)"
                if counts[MISSING]
                else ""
            )
        )
    return EXIT_FAILED if counts[NO_AUDIO] or counts[MISSING] else EXIT_OK


def _fetched_row(result: Any, fetched: Any) -> dict[str, Any]:
    return {
        "id": result.row_id,
        "job_id": result.job_id,
        "status": result.status,
        "key": result.key,
        "action": fetched.action,
        "file": str(fetched.path) if fetched.path is not None else None,
    }


def _presign(handle: Any, seconds: int, *, as_json: bool) -> int:
    """One URL per row with audio (JSON lines with --json, where rows without audio have a
    null url); signed locally, so the objects are not looked up (`verify` does that)."""
    store = handle.store
    signed = without = 0
    for result in handle.results():
        url = result.presigned_url(seconds, store=store) if result.ok and result.key else None
        signed += url is not None
        without += url is None
        if as_json:
            print(json.dumps(_presigned_row(handle.batch_id, result, url, seconds)))
        elif url is not None:
            print(f"{result.row_id}\t{url}")
    print(
        f"{signed} URLs valid for {seconds} s"
        + (f"; {without} rows have no audio" if without else ""),
        file=sys.stderr,
    )
    return EXIT_FAILED if without else EXIT_OK


def _presigned_row(batch_id: str, result: Any, url: str | None, seconds: int) -> dict[str, Any]:
    return {
        "batch_id": batch_id,
        "id": result.row_id,
        "job_id": result.job_id,
        "status": result.status,
        "key": result.key,
        "url": url,
        "expires_in": seconds,
    }
