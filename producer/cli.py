"""The `tts-batch` command line.

Exit codes: 0 all good; 1 some jobs failed (or are still pending), objects are missing from
the bucket (`fetch`, `verify`; `verify --repair` exits 0 once every missing one is enqueued
again), or a service (broker, S3, Prometheus) could not be reached; 2 usage, input, settings or
local-stack error, or credentials that Redis or S3 refused; 130 interrupted. (`tts-batch worker`
becomes Celery: its own codes are core.exit_codes.) Every error ends in one line on stderr
(`exit_code` maps each kind), never a traceback.
Every option that names a service is read from the TTS_* environment (see core.settings);
subcommands that need the worker side import it only when run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from core.delivery import CELERY_APP, QUEUE, worker_pool
from core.errors import ConfigError, InvalidBatch, InvalidJob, StackError, TTSError
from core.exit_codes import WORKER_EXIT_CODES
from core.settings import LOCAL_PORTS, Settings
from devstack.credentials import local_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = local_settings()
        code: int = args.run(args, settings)
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        mapped = exit_code(exc)
        if mapped is None:
            raise  # a bug: the traceback is what a report needs
        print(f"tts-batch: error: {_one_line(exc)}", file=sys.stderr)
        for detail in getattr(exc, "errors", [])[:20]:
            print(f"  {detail}", file=sys.stderr)
        return mapped


def exit_code(exc: BaseException) -> int | None:
    """The exit code of every error the CLI can meet; None for one it cannot (a bug)."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    if isinstance(exc, AuthenticationError):
        # A wrong password is a setting, not an outage (StorageAuthError is a ConfigError).
        return EXIT_USAGE
    if isinstance(exc, InvalidJob | ConfigError | StackError | OSError):
        # Bad input or settings, the local stack, a file that cannot be read or written.
        return EXIT_USAGE
    if isinstance(exc, TTSError | RedisError | OperationalError):
        # Storage, broker or Prometheus unreachable: may pass.
        return EXIT_FAILED
    return None


def _one_line(exc: BaseException) -> str:
    from kombu.exceptions import OperationalError
    from redis.exceptions import AuthenticationError, RedisError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AuthenticationError):
        return f"Redis refused the credentials (check the password in TTS_BROKER_URL): {text}"
    if isinstance(exc, RedisError | OperationalError):
        return f"cannot reach Redis (the broker): {text}"
    return text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-batch", description="Bulk text-to-speech on Celery workers, Redis and S3."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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

    p = sub.add_parser("failed", help="list a batch's failed jobs (dead letters)")
    p.add_argument("batch_id")
    p.set_defaults(run=_cmd_failed)

    p = sub.add_parser("retry", help="enqueue a batch's failed jobs again")
    p.add_argument("batch_id")
    p.set_defaults(run=_cmd_retry)

    p = sub.add_parser(
        "up", help="start the local stack (Redis, S3, Pushgateway, Prometheus, Flower, workers)"
    )
    p.add_argument("--workers", type=int, default=1, help="worker nodes (default 1)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="processes per worker node (prefork; a batched node is one process)",
    )
    p.add_argument("--no-workers", action="store_true", help="start the services only")
    p.set_defaults(run=_cmd_up)

    p = sub.add_parser(
        "recover",
        help="return the in-flight jobs of dead worker nodes to the queue now",
        description=(
            "A worker node killed outright (SIGKILL, OOM, lost machine) holds its jobs until "
            "the broker's visibility timeout (about 68 min by default). Name the dead nodes "
            "(as `celery inspect ping` or Flower name them): if none answers ping, every "
            "in-flight message that no live worker holds goes back to the front of the queue."
        ),
    )
    p.add_argument("nodes", nargs="+", help="dead node names, e.g. worker-1@host-a")
    p.add_argument(
        "--min-age",
        type=float,
        default=30.0,
        help="leave messages delivered in the last SECONDS alone (default 30)",
    )
    p.set_defaults(run=_cmd_recover)

    p = sub.add_parser("down", help="stop the local stack")
    p.set_defaults(run=_cmd_down)

    p = sub.add_parser("ps", help="show the local stack's services")
    p.set_defaults(run=_cmd_ps)

    p = sub.add_parser("dashboard", help="render the Grafana dashboard's panels to a PNG")
    p.add_argument("--prometheus", default=None, help="Prometheus URL (default: the local stack's)")
    p.add_argument("--out", type=Path, default=Path("out/dashboard.png"))
    p.add_argument(
        "--minutes",
        type=int,
        default=30,
        help="look this far back; the PNG is fitted to the activity found there",
    )
    p.add_argument(
        "--full-range", action="store_true", help="draw all of --minutes, not only the activity"
    )
    p.set_defaults(run=_cmd_dashboard)

    p = sub.add_parser("cosyvoice", help="CosyVoice engine tools")
    cosy = p.add_subparsers(dest="cosyvoice_command", required=True)
    p = cosy.add_parser(
        "make-random-model",
        help="write a model directory with RANDOM weights (noise, for tests and benchmarks)",
    )
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("directory", type=Path)
    p.set_defaults(run=_cmd_make_random_model)

    p = sub.add_parser(
        "worker",
        help="run a worker in the foreground with the project's settings",
        description="Run a Celery worker node in the foreground with the project's settings.\n"
        "Before its engine loads it checks Redis and the S3 keys (docs/reliability.md).",
        epilog=_worker_exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="processes (prefork); a batched node is one process of TTS_ENGINE_BATCH threads",
    )
    p.add_argument("--hostname", default=None, help="Celery node name (default tts@HOST)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(run=_cmd_worker)
    return parser


def _worker_exit_codes() -> str:
    rows = [f"  {code:>2}  {meaning}" for code, meaning in WORKER_EXIT_CODES.items()]
    return "\n".join(
        [
            "exit codes at start-up (one line on stderr, `tts-batch worker: ...`, says why):",
            *rows,
            "   2  settings that cannot be read (`tts-batch: error: ...`, before Celery starts)",
            "Redis is awaited for TTS_STARTUP_TIMEOUT_SECONDS (default 60); refused credentials",
            "exit at once. A supervisor should restart on 69, not on 2, 77 or 78.",
        ]
    )


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
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print("  ".join(f"{k}={v}" for k, v in figures.items()))
    return EXIT_OK if progress.done and progress.failed == 0 else EXIT_FAILED


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


def _stack(settings: Settings) -> Any:
    from devstack.stack import LocalStack

    # The developer stack's Redis gets a password too: nothing on the machine gets in without
    # the credentials file.
    return LocalStack.from_settings(settings, redis_password=True)


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from devstack.stack import format_statuses
    from producer.recovery import start_stack

    stack = _stack(settings)
    workers = 0 if args.no_workers else args.workers
    statuses, report = start_stack(
        stack,
        stack.default_services(workers),
        concurrency=args.concurrency or settings.concurrency,
    )
    # Remember the engine the workers run, so that a demo with another engine restarts them.
    (Path(settings.stack_dir) / "engine").write_text(settings.engine + "\n", encoding="utf-8")
    print(format_statuses(statuses))
    if report is not None and report.restored:
        kept = f"; kept {report.held_by_live} held by live workers" if report.held_by_live else ""
        restored = len(report.restored)
        print(f"returned {restored} in-flight jobs of stopped workers to the queue{kept}")
    return EXIT_OK


def _cmd_recover(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from producer.recovery import restore_orphans

    report = restore_orphans(settings, dead=args.nodes, older_than=time.time() - args.min_age)
    live = ", ".join(report.live_nodes) or "none"
    print(
        f"returned {len(report.restored)} in-flight jobs to the queue; "
        f"{report.held_by_live} held by live workers ({live}), "
        f"{report.too_recent} delivered in the last {args.min_age:g} s left alone"
    )
    return EXIT_OK


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    from devstack.stack import format_statuses

    print(format_statuses(_stack(settings).down()))
    return EXIT_OK


def _cmd_ps(args: argparse.Namespace, settings: Settings) -> int:
    from devstack.stack import format_statuses

    statuses = _stack(settings).status()
    print(format_statuses(statuses))
    running = [s for s in statuses.values() if s.state == "running"]
    return EXIT_OK if running else EXIT_FAILED


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from core.errors import DashboardError
    from monitoring.render_png import render_dashboard

    url = args.prometheus or f"http://127.0.0.1:{LOCAL_PORTS['prometheus']}"
    try:
        path = render_dashboard(url, args.out, minutes=args.minutes, fit=not args.full_range)
    except DashboardError as exc:
        print(f"tts-batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


def _cmd_make_random_model(args: argparse.Namespace, settings: Settings) -> int:
    # Needs the CosyVoice runtime (make install-cosyvoice); imported only here.
    from worker.engines.cosyvoice.random_model import make_random_model

    path = make_random_model(args.directory, size=args.size, seed=args.seed)
    print(f"{path}  (random weights: noise, not speech; for tests and benchmarks only)")
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    # Prefork with --concurrency processes, or (batched engine) one process of B task threads.
    pool = worker_pool(settings, processes=args.concurrency)
    hostname = args.hostname or "tts@%h"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        CELERY_APP,
        "worker",
        "-E",
        "-Q",
        QUEUE,
        "--pool",
        pool.name,
        "--concurrency",
        str(pool.concurrency),
        "--hostname",
        hostname,
        "--loglevel",
        args.loglevel,
    ]
    env = {**os.environ, **settings.to_env()}
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    sys.exit(main())
