"""Render the dashboard's panels from a live Prometheus into one PNG, for users without Grafana.

Runs every query of `monitoring.panels.PANELS` through Prometheus's `query_range` API and draws
them with matplotlib (imported only when drawing, so the producer stays light). The drawn range
is fitted to the activity (jobs finishing, messages queued or in progress) found in the asked
one, so a short batch fills the panels instead of a sliver at their right edge:

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
from monitoring.prometheus_config import QUEUE_JOB

# Enough points for a smooth line, few enough for Prometheus's 11,000-point limit.
POINTS_PER_PANEL = 240
# At least four scrapes at the local stack's 5 s interval and Compose's 15 s.
DEFAULT_RATE_WINDOW = "1m"
COLUMNS = 3
MAX_LEGEND_ENTRIES = 8
# Around the activity of a fitted range: a tenth of its length, at least this many seconds, and at
# least the step of the asked range's query (which found the activity to within one step).
FIT_MARGIN_S = 10.0
# A series with this few values is drawn with dots too: a lone point makes no line.
SPARSE_POINTS = 3
# Lines above the axes' frame (matplotlib's spines are at zorder 2.5): a value on the frame stays
# visible.
LINE_ZORDER = 3


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
    # Said after the panel's caption when it has nothing to draw (e.g. the scrape interval).
    note: str = ""


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


def _step(start: float, end: float) -> float:
    return max(1.0, round((end - start) / POINTS_PER_PANEL))


def query_panels(
    prometheus_url: str,
    *,
    minutes: int = 30,
    end: float | None = None,
    start: float | None = None,
    rate_window: str = DEFAULT_RATE_WINDOW,
    panels: Sequence[Panel] = PANELS,
) -> list[PanelData]:
    """Run every panel's queries from `start` (default `minutes` before `end`) to `end`
    (default now)."""
    end = time.time() if end is None else end
    start = end - minutes * 60 if start is None else start
    step = _step(start, end)
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


def activity_query(rate_window: str = DEFAULT_RATE_WINDOW) -> str:
    """PromQL that has a value (1) exactly when something happens: jobs finish within the rate
    window, or messages wait or are in progress at a scrape."""
    return (
        f"(sum(rate(tts_tasks_total[{rate_window}])) > 0"
        " or sum(tts_queue_depth) > 0 or sum(tts_queue_unacked) > 0) * 0 + 1"
    )


def fitted_range(
    prometheus_url: str,
    *,
    start: float,
    end: float,
    rate_window: str = DEFAULT_RATE_WINDOW,
) -> tuple[float, float]:
    """The part of [start, end] with activity (`activity_query`), widened by a margin on each
    side; the whole of [start, end] when nothing happened in it."""
    result = query_range(
        prometheus_url, activity_query(rate_window), start=start, end=end, step=_step(start, end)
    )
    times = [float(t) for item in result for t, _ in item.get("values", [])]
    return fit_span(times, start=start, end=end)


def fit_span(times: Sequence[float], *, start: float, end: float) -> tuple[float, float]:
    """[first, last] of `times` widened by a tenth of its length on each side (at least
    FIT_MARGIN_S, and the query step that found them), within [start, end]; all of [start, end]
    when `times` is empty."""
    if not times:
        return start, end
    first, last = min(times), max(times)
    margin = max(FIT_MARGIN_S, 0.1 * (last - first), _step(start, end))
    return max(start, first - margin), min(end, last + margin)


def _instant(prometheus_url: str, expr: str, at: float) -> float | None:
    """The single value of an instant query at `at`, or None if it returned none."""
    params = urllib.parse.urlencode({"query": expr, "time": at})
    try:
        with urllib.request.urlopen(
            f"{prometheus_url.rstrip('/')}/api/v1/query?{params}", timeout=30
        ) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DashboardError(f"cannot query {prometheus_url}: {exc}") from exc
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if len(result) == 1 else None


def scrape_interval(prometheus_url: str, job: str) -> float | None:
    """The scrape interval (seconds) of an active target of `job`, or None if none is known."""
    url = f"{prometheus_url.rstrip('/')}/api/v1/targets?state=active"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    for target in body.get("data", {}).get("activeTargets", []):
        if target.get("labels", {}).get("job") == job:
            return _seconds(str(target.get("scrapeInterval", "")))
    return None


def _seconds(duration: str) -> float | None:
    """A Prometheus duration with one unit ("5s", "1m", "500ms") in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    if match is None:
        return None
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def zero_note(prometheus_url: str, *, start: float, end: float) -> str:
    """What a panel at 0 throughout (the queue depth) should add: how often it was read, and how
    many jobs finished meanwhile (a queue that drains between two scrapes is never seen)."""
    parts = []
    interval = scrape_interval(prometheus_url, QUEUE_JOB)
    if interval is not None:
        parts.append(f"read every {interval:g} s")
    finished = _instant(
        prometheus_url, f"sum(increase(tts_tasks_total[{max(1, int(end - start))}s]))", end
    )
    if finished is not None and math.isfinite(finished) and round(finished) > 0:
        parts.append(f"yet about {round(finished)} jobs finished")
    return ", ".join(parts)


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


def caption(item: PanelData) -> str:
    """What a panel with no line to draw says instead."""
    if _any_finite(item.series):
        text = item.panel.all_zero or "0 throughout"
        return f"{text}\n({item.note})" if item.note else text
    return item.panel.no_value or "no data"


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
            sparse = sum(not math.isnan(v) for v in series.values) <= SPARSE_POINTS
            ax.plot(
                times,
                series.values,
                linewidth=1.5,
                label=series.label,
                zorder=LINE_ZORDER,
                marker="o" if sparse else None,
                markersize=3,
            )
        if not shown:
            ax.text(
                0.5,
                0.5,
                caption(item),
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
                fontsize=11,
                wrap=True,
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
    # Keep the top half inch for the title: tight_layout alone lets panel titles run into it.
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
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
    fit: bool = True,
    end: float | None = None,
) -> Path:
    """Query every dashboard panel over the last `minutes` (to `end`, default now) and write them
    as one PNG at `out`. With `fit`, draw only the part with activity, plus a margin.

    Raises DashboardError if Prometheus cannot be reached or refuses a query, or if matplotlib
    is not installed.
    """
    end = time.time() if end is None else end
    asked = (end - minutes * 60, end)
    lo, hi = asked
    if fit:
        lo, hi = fitted_range(prometheus_url, start=lo, end=hi, rate_window=rate_window)
    data = query_panels(prometheus_url, start=lo, end=hi, rate_window=rate_window)
    note = zero_note(prometheus_url, start=lo, end=hi)
    data = [PanelData(d.panel, d.series, note if d.panel.all_zero else "") for d in data]
    return draw(
        data, out, title=_title(prometheus_url, (lo, hi), asked, rate_window), span=(lo, hi)
    )


def _title(
    prometheus_url: str,
    span: tuple[float, float],
    asked: tuple[float, float],
    rate_window: str,
) -> str:
    def clock(t: float) -> str:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M:%S")

    day = datetime.fromtimestamp(span[1], tz=UTC).strftime("%Y-%m-%d")
    minutes = round((asked[1] - asked[0]) / 60)
    fitted = (
        f"fitted to the activity in the last {minutes} min"
        if span != asked
        else f"the last {minutes} min"
    )
    return (
        f"tts-batch: {prometheus_url}, {day} {clock(span[0])} to {clock(span[1])} UTC "
        f"({fitted}; rate window {rate_window})"
    )


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
    parser.add_argument(
        "--full-range",
        action="store_true",
        help="draw all of --minutes, not only the part with activity",
    )
    args = parser.parse_args(argv)
    try:
        path = render_dashboard(
            args.prometheus,
            args.out,
            minutes=args.minutes,
            rate_window=args.rate_window,
            fit=not args.full_range,
        )
    except DashboardError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(path)


if __name__ == "__main__":
    main()
