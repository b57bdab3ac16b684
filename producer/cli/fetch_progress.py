"""Progress of `fetch`: a bar on a terminal, plain periodic lines in logs and pipes.

Counts what each row's fetch did (producer/results.py actions); the counts make the summary,
so unlike output.count_progress it keeps a tally per action.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, TextIO

from producer.cli.output import is_terminal
from producer.results import DOWNLOADED, MISSING, NO_AUDIO, SKIPPED, Fetched

# A plain line at most this often (a log gets a line per interval, not one per row).
PLAIN_INTERVAL_SECONDS = 5.0


class FetchProgress:
    """Call `step` once per row, then `close`."""

    def __init__(
        self, total: int, stream: TextIO, *, bar: bool | None = None, quiet: bool = False
    ) -> None:
        self.total = total
        self.counts: Counter[str] = Counter()
        self._stream = stream
        self._bar: Any = None
        self._last_line = time.monotonic()
        self._quiet = quiet
        use_bar = is_terminal(stream) if bar is None else bar
        if use_bar and total > 0 and not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="row", desc="fetch", file=stream)

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def step(self, fetched: Fetched) -> None:
        self.counts[fetched.action] += 1
        if self._bar is not None:
            self._bar.set_postfix(new=self.counts[DOWNLOADED], kept=self.counts[SKIPPED])
            self._bar.update(1)
        elif not self._quiet and time.monotonic() - self._last_line >= PLAIN_INTERVAL_SECONDS:
            self._plain_line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.total > 0 and not self._quiet:
            self._plain_line()

    def _plain_line(self) -> None:
        self._last_line = time.monotonic()
        print(f"fetch: {self.done}/{self.total} rows ({self.describe()})", file=self._stream)
        self._stream.flush()

    def describe(self) -> str:
        c = self.counts
        text = f"{c[DOWNLOADED]} downloaded, {c[SKIPPED]} already present"
        if c[NO_AUDIO]:
            text += f", {c[NO_AUDIO]} without audio"
        if c[MISSING]:
            text += f", {c[MISSING]} missing"
        return text
