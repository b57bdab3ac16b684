"""Render the dashboard's panels from a live Prometheus into one PNG, for users without Grafana.

Runs every query of `monitoring.panels.PANELS` through Prometheus's `query_range` API and draws
them with matplotlib (imported only when drawing, so the producer stays light):

    python -m monitoring.render_png --prometheus http://127.0.0.1:19090 --out dash.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import DashboardError
from core.settings import LOCAL_PORTS
from monitoring.panels import PANELS, Panel

# Enough points for a smooth line, few enough for Prometheus's 11,000-point limit.
POINTS_PER_PANEL = 240
# At least four scrapes at the local stack's 5 s interval and Compose's 15 s.
DEFAULT_RATE_WINDOW = "1m"
COLUMNS = 3
MAX_LEGEND_ENTRIES = 8


@dataclass(frozen=True)
class Series:
    """One line of a panel: its legend and its (unix time, value) points."""

    label: str
    times: list[float]
    values: list[float]


@dataclass(frozen=True)
class PanelData:
    """A panel and the series its queries returned over the rendered range."""

    panel: Panel
    series: list[Series]


def _legend(template: str, labels: dict[str, str]) -> str:
    if not template:
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return "{" + inner + "}"
    # Grafana's {{label}} syntax; a missing label renders empty, as in Grafana.
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def query_range(
    prometheus_url: str, expr: str, *, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """Run one PromQL range query; return Prometheus's `result` list (matrix)."""
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    url = f"{prometheus_url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        # Prometheus explains a bad query in the JSON body of its 400/422.
        detail = exc.read().decode(errors="replace")
        raise DashboardError(f"{expr}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DashboardError(f"cannot query {prometheus_url}: {exc}") from exc
    if body.get("status") != "success":
        raise DashboardError(f"{expr}: {body.get('error', body)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def query_panels(
    prometheus_url: str,
    *,
    minutes: int = 30,
    end: float | None = None,
    rate_window: str = DEFAULT_RATE_WINDOW,
    panels: Sequence[Panel] = PANELS,
) -> list[PanelData]:
    """Run every panel's queries over the last `minutes` (up to `end`, default now)."""
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, round(minutes * 60 / POINTS_PER_PANEL))
    out = []
    for panel in panels:
        series = []
        for query in panel.queries:
            for item in query_range(
                prometheus_url, query.promql(rate_window), start=start, end=end, step=step
            ):
                points = item.get("values", [])
                series.append(
                    Series(
                        label=_legend(query.legend, item.get("metric", {})),
                        times=[float(t) for t, _ in points],
                        # "NaN" and "+Inf" parse; neither can be drawn, so both become gaps.
                        values=[_finite(v) for _, v in points],
                    )
                )
        out.append(PanelData(panel, series))
    return out


def _finite(raw: str) -> float:
    value = float(raw)
    return value if math.isfinite(value) else math.nan


def _formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    if unit == "percentunit":
        return PercentFormatter(1.0, decimals=None)
    if unit == "s":
        return FuncFormatter(lambda v, _: f"{v * 1000:.0f} ms" if 0 < abs(v) < 1 else f"{v:g} s")
    if unit == "ops":
        return FuncFormatter(lambda v, _: f"{v:g}/s")
    return FuncFormatter(lambda v, _: f"{v:g}")


def _visible(series: Sequence[Series]) -> list[Series]:
    """The series worth a line: not all gaps, and not zero all along."""
    return [s for s in series if any(not math.isnan(v) and v != 0 for v in s.values)]


def _any_finite(series: Sequence[Series]) -> bool:
    return any(not math.isnan(v) for s in series for v in s.values)


def draw(
    data: Sequence[PanelData],
    out: Path,
    *,
    title: str,
    span: tuple[float, float] | None = None,
) -> Path:
    """Draw panels into a PNG grid at `out`; return `out`. `span`: the x range (unix times)."""
    try:
        import matplotlib
    except ImportError as exc:  # a producer-only install
        raise DashboardError(
            "drawing needs matplotlib: pip install matplotlib (or the project's dashboard extra)"
        ) from exc

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = max(1, math.ceil(len(data) / COLUMNS))
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(6.2 * COLUMNS, 3.6 * rows), squeeze=False)
    for ax, item in zip(axes.flat, data, strict=False):
        ax.set_title(item.panel.title, fontsize=11, fontweight="bold", loc="left")
        ax.grid(True, alpha=0.3)
        ax.yaxis.set_major_formatter(_formatter(item.panel.unit))
        locator = mdates.AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        formatter = mdates.ConciseDateFormatter(locator, tz=UTC)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(formatter)
        if span is not None:
            # The whole asked range, so a gap or a late start shows as such.
            ax.set_xlim(*(datetime.fromtimestamp(t, tz=UTC) for t in span))
        shown = _visible(item.series)
        for series in shown:
            times = [datetime.fromtimestamp(t, tz=UTC) for t in series.times]
            ax.plot(times, series.values, linewidth=1.5, label=series.label)
        if not shown:
            ax.text(
                0.5,
                0.5,
                "0 throughout" if _any_finite(item.series) else "no data",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
                fontsize=12,
            )
            continue
        ax.set_ylim(bottom=0, top=item.panel.y_max)
        handles, labels = ax.get_legend_handles_labels()
        if len(labels) > MAX_LEGEND_ENTRIES:
            labels[MAX_LEGEND_ENTRIES - 1 :] = [f"(+{len(labels) - MAX_LEGEND_ENTRIES + 1} more)"]
            handles[MAX_LEGEND_ENTRIES - 1 :] = [Line2D([], [], linestyle="none")]
        zeros = [s for s in item.series if s not in shown and _any_finite([s])]
        if zeros:
            # A legend of eight reasons at zero would hide the one that matters.
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(f"({len(zeros)} more at 0)")
        ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.8)
    for ax in list(axes.flat)[len(data) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def render_dashboard(
    prometheus_url: str,
    out: Path,
    *,
    minutes: int = 30,
    rate_window: str = DEFAULT_RATE_WINDOW,
) -> Path:
    """Query every dashboard panel over the last `minutes` and write them as one PNG at `out`.

    Raises DashboardError if Prometheus cannot be reached or refuses a query, or if matplotlib
    is not installed.
    """
    end = time.time()
    data = query_panels(prometheus_url, minutes=minutes, end=end, rate_window=rate_window)
    stamp = datetime.fromtimestamp(end, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = (
        f"tts-batch: {prometheus_url}, last {minutes} min to {stamp} (rate window {rate_window})"
    )
    return draw(data, out, title=title, span=(end - minutes * 60, end))


def main(argv: list[str] | None = None) -> None:
    """Render the dashboard from a Prometheus to a PNG."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--prometheus",
        default=f"http://127.0.0.1:{LOCAL_PORTS['prometheus']}",
        help="Prometheus base URL (default: the local stack's, %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("dashboard.png"))
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate-window", default=DEFAULT_RATE_WINDOW)
    args = parser.parse_args(argv)
    try:
        path = render_dashboard(
            args.prometheus, args.out, minutes=args.minutes, rate_window=args.rate_window
        )
    except DashboardError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(path)


if __name__ == "__main__":
    main()
