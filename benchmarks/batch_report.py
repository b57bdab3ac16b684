"""The batch benchmark's figures: percentiles, one config's summary, the printed table, the JSON
layout and the plot. Pure functions (the plot aside), unit-tested in tests/test_batch_bench.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    """One measured configuration: preset, worker processes (nodes), jobs per process."""

    preset: str
    processes: int
    batch: int


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks; None for no values.

    With few samples p99 is close to the largest: it is what a user waits for at worst.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize_burst(
    latencies: Sequence[float], *, audio_seconds: float, wall_seconds: float, failed: int = 0
) -> dict[str, Any]:
    """Throughput and latency of one burst of jobs: every job enqueued at once, the wall time
    from the first enqueue to the last result."""
    rtf = wall_seconds / audio_seconds if audio_seconds > 0 else None
    return {
        "jobs": len(latencies) + failed,
        "failed": failed,
        "audio_seconds": _round(audio_seconds, 2),
        "wall_seconds": _round(wall_seconds, 2),
        "aggregate_rtf": _round(rtf, 3),
        "audio_seconds_per_second": _round(1 / rtf if rtf else None, 3),
        "p50_seconds": _round(percentile(latencies, 50), 2),
        "p99_seconds": _round(percentile(latencies, 99), 2),
    }


def short_job_figures(alone: Sequence[float], busy: Sequence[float]) -> dict[str, Any]:
    """A short job's latency alone (median) and in a busy worker (p99), and their ratio: the
    issue's goal is a ratio of at most 3."""
    alone_s, busy_s = percentile(alone, 50), percentile(busy, 99)
    ratio = busy_s / alone_s if alone_s and busy_s is not None else None
    return {
        "short_alone_seconds": _round(alone_s, 2),
        "short_busy_p99_seconds": _round(busy_s, 2),
        "short_busy_vs_alone": _round(ratio, 2),
    }


def counter_rate(before: float | None, after: float | None, seconds: float) -> float | None:
    """A counter's increase per second, or None when the counter was not there or did not
    move (an engine that registers the metric but does not feed it: no figure, not zero)."""
    if before is None or after is None or after <= before or seconds <= 0:
        return None
    return round((after - before) / seconds, 1)


def histogram_mean(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Mean observed value between two (sum, count) readings of a histogram."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


def add_ratios(results: Mapping[Config, dict[str, Any]]) -> None:
    """Throughput of each config over that of B=1 with the same preset and processes
    (x2.0 = twice the audio per wall second), in place."""
    for config, figures in results.items():
        base = results.get(Config(config.preset, config.processes, 1), {})
        mine, theirs = figures.get("aggregate_rtf"), base.get("aggregate_rtf")
        figures["speedup_vs_b1"] = round(theirs / mine, 2) if mine and theirs else None


def report_layout(results: Mapping[Config, dict[str, Any]]) -> dict[str, Any]:
    """`presets.<preset>.<B>` for one process, `presets.<preset>.processes_<P>.<B>` for more."""
    presets: dict[str, Any] = {}
    for config, figures in results.items():
        place = presets.setdefault(config.preset, {})
        if config.processes != 1:
            place = place.setdefault(f"processes_{config.processes}", {})
        place[str(config.batch)] = figures
    return presets


COLUMNS = (
    ("preset", "preset", "{}"),
    ("procs", "processes", "{}"),
    ("B", "batch", "{}"),
    ("jobs", "jobs", "{}"),
    ("audio s", "audio_seconds", "{:.1f}"),
    ("wall s", "wall_seconds", "{:.1f}"),
    ("agg RTF", "aggregate_rtf", "{:.3f}"),
    ("vs B=1", "speedup_vs_b1", "x{:.2f}"),
    ("p50 s", "p50_seconds", "{:.1f}"),
    ("p99 s", "p99_seconds", "{:.1f}"),
    ("short busy/alone s", "short", "{}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
    ("tokens/s", "speech_tokens_per_second", "{:.1f}"),
    ("rows/step", "mean_rows_per_step", "{:.2f}"),
)


def table_row(config: Config, figures: Mapping[str, Any]) -> list[str]:
    """One printed row; '-' where a figure is missing (a failed config, no metric)."""
    values = {
        **figures,
        "preset": config.preset,
        "processes": config.processes,
        "batch": config.batch,
        "short": _short_cell(figures),
    }
    if "error" in figures:
        return [config.preset, str(config.processes), str(config.batch), "error: "
                + str(figures["error"])[:60]]  # fmt: skip
    return [_cell(fmt, values.get(key)) for _, key, fmt in COLUMNS]


def format_table(results: Mapping[Config, dict[str, Any]]) -> str:
    """The table, columns aligned, in the order the configs ran."""
    rows = [[title for title, _, _ in COLUMNS]]
    rows += [table_row(config, figures) for config, figures in results.items()]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def write_plot(results: Mapping[Config, dict[str, Any]], path: Path) -> None:
    """Throughput (audio seconds per wall second) against B, one line per preset and number of
    processes; the real-time line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (preset, processes), points in _lines(results).items():
        label = f"{preset}, {processes} process{'es' if processes > 1 else ''}"
        ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="real time")
    ax.set_xscale("log", base=2)
    batches = sorted({c.batch for c in results})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("jobs per worker process (TTS_ENGINE_BATCH)")
    ax.set_ylabel("audio seconds per wall second")
    ax.set_title("tts-batch: aggregate throughput against batch size")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _lines(results: Mapping[Config, dict[str, Any]]) -> dict[tuple[str, int], list[Any]]:
    lines: dict[tuple[str, int], list[Any]] = {}
    for config, figures in sorted(results.items(), key=lambda item: item[0].batch):
        throughput = figures.get("audio_seconds_per_second")
        if throughput:
            lines.setdefault((config.preset, config.processes), []).append(
                (config.batch, throughput)
            )
    return lines


def _short_cell(figures: Mapping[str, Any]) -> str | None:
    alone, busy = figures.get("short_alone_seconds"), figures.get("short_busy_p99_seconds")
    if alone is None or busy is None:
        return None
    return f"{busy:.1f}/{alone:.1f} (x{figures['short_busy_vs_alone']:.1f})"


def _cell(fmt: str, value: Any) -> str:
    return "-" if value is None else fmt.format(value)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def failed_configs(results: Iterable[Mapping[str, Any]]) -> int:
    """How many configs ended in an error."""
    return sum("error" in figures for figures in results)
