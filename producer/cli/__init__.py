"""The `tts-batch` command line.

Exit codes: 0 all good; 1 some jobs failed (or are still pending, as when `submit --wait
--timeout` ends first), objects are missing from the bucket (`fetch`, `verify`; `verify
--repair` exits 0 once every missing one is enqueued again), or a service (broker, S3,
Prometheus, Pushgateway) could not be reached; 2 usage, input, settings or local-stack error,
an unknown batch, or credentials that Redis or S3 refused; 130 interrupted (Ctrl-C); 141
when the reader of stdout went away (`| head`), silently, as a program killed by SIGPIPE.
(`tts-batch worker` becomes Celery: its own codes are core.exit_codes.) Every error ends in one
line on stderr (`exit_code` maps each kind), never a traceback; a service that cannot be reached
is named with its URL.
Output: results on stdout (`--json`: one JSON document), summaries and progress on stderr
(`--quiet` drops them, never errors); producer.cli.output holds the shared pieces.
Every option that names a service is read from the TTS_* environment (see core.settings);
subcommands that need the worker side import it only when run.

Each command family lives in its own module with a `register(subparsers)` function.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core.settings import Settings
from devstack.credentials import local_settings
from producer.cli import (
    batch_admin,
    batch_commands,
    completion_commands,
    doctor_commands,
    results_commands,
    speaker_commands,
    stack_commands,
)
from producer.cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    exit_code,
    one_line,
)

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "exit_code", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    completion_commands.enable(parser)
    args = parser.parse_args(argv)
    settings: Settings | None = None
    try:
        settings = local_settings()
        code: int = args.run(args, settings)
        return code
    except KeyboardInterrupt:
        print("tts-batch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `tts-batch fetch ID --presign 60 | head`: the reader has what it wanted. Point stdout
        # at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        mapped = exit_code(exc)
        if mapped is None:
            raise  # a bug: the traceback is what a report needs
        print(f"tts-batch: error: {one_line(exc, settings)}", file=sys.stderr)
        for detail in getattr(exc, "errors", [])[:20]:
            print(f"  {detail}", file=sys.stderr)
        return mapped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-batch", description="Bulk text-to-speech on Celery workers, Redis and S3."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    batch_commands.register(sub)
    results_commands.register(sub)
    stack_commands.register(sub)
    completion_commands.register(sub)
    speaker_commands.register(sub)
    doctor_commands.register(sub)
    batch_admin.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tts-batch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"
