"""What every command prints, and where: the shared output options and progress reporters.

- stdout carries the result: plain text, or with `--json` exactly one JSON document (an
  object; per-row lists are arrays inside it), so `tts-batch X --json | jq` always parses.
- stderr carries the chatter (summaries, progress) and the errors; `--quiet` drops the
  chatter, never the errors.
- Progress is a tqdm bar only on a terminal; elsewhere (logs, pipes, CI) plain lines at most
  every `interval` seconds and at the end, because a bar's `\\r` frames make a log unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

PLAIN_INTERVAL_SECONDS = 10.0

JSON_HELP = "print one JSON document on stdout (per-row lists are arrays inside it)"
QUIET_HELP = "no progress or summaries on stderr (errors still print)"


class Counts(Protocol):
    """The shape of core.batch_state.Progress that a batch reporter reads."""

    total: int
    succeeded: int
    failed: int
    cached: int

    @property
    def done(self) -> bool: ...


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--quiet` with the same meaning on every command."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)


def print_json(document: Any, stream: TextIO | None = None) -> None:
    """One JSON document on one line (stdout by default)."""
    out = stream if stream is not None else sys.stdout
    out.write(json.dumps(document, ensure_ascii=False) + "\n")
    out.flush()


def say(message: str, *, quiet: bool, stream: TextIO | None = None) -> None:
    """A summary line on stderr, unless --quiet."""
    if not quiet:
        print(message, file=stream if stream is not None else sys.stderr, flush=True)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def batch_line(batch_id: str, counts: Counts) -> str:
    """`batch X: 120/2000 done (118 ok, 2 failed, 0 cached)`: ok counts cached rows too."""
    done = counts.succeeded + counts.failed
    return (
        f"batch {batch_id}: {done}/{counts.total} done ({counts.succeeded} ok, "
        f"{counts.failed} failed, {counts.cached} cached)"
    )


def batch_progress(
    stream: TextIO,
    batch_id: str,
    *,
    quiet: bool = False,
    interval: float = PLAIN_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Counts], None]:
    """A reporter for BatchHandle.wait(on_progress=...): a bar on a terminal, else lines."""
    if quiet:
        return lambda counts: None
    if is_terminal(stream):
        return _batch_bar(stream)
    last: list[float] = []

    def report(counts: Counts) -> None:
        now = clock()
        # The first call, the last one, and in between at most one line per interval.
        if not last or counts.done or now - last[0] >= interval:
            print(batch_line(batch_id, counts), file=stream, flush=True)
            last[:] = [now]

    return report


def _batch_bar(stream: TextIO) -> Callable[[Counts], None]:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(counts: Counts) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=counts.total, unit="row", file=stream, dynamic_ncols=True)
        done = counts.succeeded + counts.failed
        bar["bar"].set_postfix(ok=counts.succeeded, failed=counts.failed, cached=counts.cached)
        bar["bar"].update(done - bar["bar"].n)
        if counts.done:
            bar["bar"].close()

    return update


def count_progress(
    stream: TextIO,
    label: str,
    *,
    unit: str = "row",
    quiet: bool = False,
    interval: float = PLAIN_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[int, int], None]:
    """A reporter of `done` out of `total` (enqueueing, downloading): shown once the work takes
    more than one step (a single step is over before a bar is worth drawing)."""
    if quiet:
        return lambda done, total: None
    terminal = is_terminal(stream)
    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if not state and done >= total:
            return
        if terminal:
            from tqdm import tqdm

            if "bar" not in state:
                state["bar"] = tqdm(total=total, unit=unit, desc=label, file=stream)
            state["bar"].update(done - state["bar"].n)
            if done >= total:
                state["bar"].close()
            return
        now = clock()
        if "last" not in state or done >= total or now - state["last"] >= interval:
            print(f"{label}: {done}/{total} {unit}s", file=stream, flush=True)
            state["last"] = now

    return update
