"""The `tts-batch` command line.

Exit codes: 0 all good; 1 some jobs failed (or are still pending), objects are missing from
the bucket (`fetch`, `verify`; `verify --repair` exits 0 once every missing one is enqueued
again), or a service (broker, S3, Prometheus) could not be reached; 2 usage, input, settings or
local-stack error, or credentials that Redis or S3 refused; 130 interrupted. (`tts-batch worker`
becomes Celery: its own codes are core.exit_codes.) Every error ends in one line on stderr
(`exit_code` maps each kind), never a traceback.
Every option that names a service is read from the TTS_* environment (see core.settings);
subcommands that need the worker side import it only when run.

Each command family lives in its own module with a `register(subparsers)` function.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devstack.credentials import local_settings
from producer.cli import batch_admin, batch_commands, stack_commands
from producer.cli.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code, one_line

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "exit_code", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        print(f"tts-batch: error: {one_line(exc)}", file=sys.stderr)
        for detail in getattr(exc, "errors", [])[:20]:
            print(f"  {detail}", file=sys.stderr)
        return mapped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tts-batch", description="Bulk text-to-speech on Celery workers, Redis and S3."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    batch_commands.register(sub)
    stack_commands.register(sub)
    batch_admin.register(sub)
    return parser
