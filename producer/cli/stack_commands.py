"""Stack and tool commands: up, recover, down, ps, dashboard, cosyvoice, worker."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from core.delivery import CELERY_APP, QUEUE, worker_arguments, worker_pool
from core.exit_codes import WORKER_EXIT_CODES
from core.settings import LOCAL_PORTS, Settings
from producer.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ServiceUnreachable
from producer.cli.output import add_output_options, print_json


def register(sub: Any) -> None:
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
    add_output_options(p)
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
    if args.json:
        print_json({"services": [_status_dict(s) for s in statuses.values()]})
    else:
        print(format_statuses(statuses))
    running = [s for s in statuses.values() if s.state == "running"]
    return EXIT_OK if running else EXIT_FAILED


def _status_dict(status: Any) -> dict[str, Any]:
    return {
        "name": status.name,
        "state": status.state,
        "pid": status.pid,
        "url": status.url or None,
        "detail": status.detail or None,
    }


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from core.errors import DashboardError
    from monitoring.render_png import render_dashboard

    url = args.prometheus or f"http://127.0.0.1:{LOCAL_PORTS['prometheus']}"
    try:
        path = render_dashboard(url, args.out, minutes=args.minutes, fit=not args.full_range)
    except DashboardError as exc:
        if _no_answer(exc.__cause__):
            # An outage (exit 1, may pass), not a refused query or a missing matplotlib.
            reason = getattr(exc.__cause__, "reason", exc.__cause__)
            raise ServiceUnreachable("prometheus", url, str(reason)) from exc
        print(f"tts-batch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(path)
    return EXIT_OK


def _no_answer(cause: BaseException | None) -> bool:
    """True when an HTTP service did not answer at all (refused, timed out, unresolvable)."""
    from urllib.error import HTTPError, URLError

    return isinstance(cause, URLError | OSError) and not isinstance(cause, HTTPError)


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
        *worker_arguments(
            app=CELERY_APP, queue=QUEUE, pool=pool, hostname=hostname, loglevel=args.loglevel
        ),
    ]
    env = {**os.environ, **settings.to_env()}
    os.execvpe(command[0], command, env)
