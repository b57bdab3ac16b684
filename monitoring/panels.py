"""The dashboard's panels as data: the one place where each panel's PromQL lives.

The Grafana JSON (`python -m monitoring.grafana`), the PNG renderer (`monitoring.render_png`)
and the tests all read `PANELS`. Imports nothing beyond the standard library, so the producer
and the tests can use it without Grafana, matplotlib or a worker.

Queries are written with Grafana's `$__rate_interval`; `Query.promql(window)` substitutes a
concrete range for callers that talk to Prometheus directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.contract import PUSH_JOB

# Grafana replaces this in the dashboard; everything else needs a concrete range ("1m").
RATE_INTERVAL = "$__rate_interval"

# Pushed metrics carry the grouping key's job label (core.contract.PUSH_JOB); the Pushgateway's
# own per-group push_time_seconds carries it too, so filter on it to see only worker groups.
# Each worker node pushes one group, {job, worker}: "by (worker)" is one series per node.
WORKER_JOB = PUSH_JOB

# A ratio of outcomes over fewer finished jobs than this in its window is no value ("no
# traffic"), not 0% or 100%: under 10 jobs one outcome moves it by over 10 points, and at the
# tail of a batch one retried failure alone read error 100%, success 0%.
MIN_RATIO_JOBS = 10
NO_TRAFFIC = f"no traffic (under {MIN_RATIO_JOBS} finished jobs a window)"
# The axis top of a ratio that cannot pass 100%: above it, so a line at 100% is not on the frame.
RATIO_TOP = 1.05


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and its legend (Grafana `{{label}}` syntax)."""

    expr: str
    legend: str = ""

    def promql(self, rate_window: str = "1m") -> str:
        """The expression with `$__rate_interval` replaced by `rate_window` (e.g. "1m")."""
        return self.expr.replace(RATE_INTERVAL, rate_window)


@dataclass(frozen=True)
class Panel:
    """A dashboard panel: a title, its queries, a Grafana unit id and a one-line help text.

    `y_max` is the y axis's top for values with a ceiling, set above the ceiling (RATIO_TOP for
    a ratio that cannot pass 100%) so that a line at the ceiling stays off the frame; the
    minimum is always 0. `no_value` is what the panel says when its queries return nothing
    (Grafana's "No data"); `all_zero` what the PNG says when every series stays at 0.
    """

    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    y_max: float | None = None
    no_value: str = ""
    all_zero: str = ""

    def promql(self, rate_window: str = "1m") -> list[str]:
        """Every query of the panel as plain PromQL."""
        return [q.promql(rate_window) for q in self.queries]


def _quantiles(metric: str, by: str = "") -> tuple[Query, ...]:
    """P50/P90/P99 of a histogram over the rate of its buckets, summed over workers."""
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE_INTERVAL}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in (0.5, 0.9, 0.99)
    )


_R = RATE_INTERVAL
# Appended to a ratio: no value unless the window holds MIN_RATIO_JOBS finished jobs.
_ENOUGH_JOBS = f" and on () sum(increase(tts_tasks_total[{_R}])) >= {MIN_RATIO_JOBS}"

PANELS: tuple[Panel, ...] = (
    Panel(
        "Throughput: tasks per second",
        (Query(f"sum by (status) (rate(tts_tasks_total[{_R}]))", "{{status}}"),),
        unit="ops",
        description="Jobs reaching a terminal outcome per second, by status.",
    ),
    Panel(
        "Throughput: audio seconds per second",
        (Query(f"sum by (engine) (rate(tts_audio_seconds_total[{_R}]))", "{{engine}}"),),
        unit="none",
        description="Seconds of audio synthesized per wall-clock second, all workers.",
    ),
    Panel(
        "Inference latency",
        _quantiles("tts_inference_duration_seconds", "engine"),
        unit="s",
        description="Time inside the engine per synthesis: P50, P90, P99.",
    ),
    Panel(
        "Error ratio by reason",
        (
            Query(
                f"sum by (reason) (rate(tts_errors_total[{_R}]))"
                f" / ignoring (reason) group_left sum(rate(tts_tasks_total[{_R}]))" + _ENOUGH_JOBS,
                "{{reason}}",
            ),
        ),
        unit="percentunit",
        description=(
            "Error events per finished job, by reason (retried errors count each time); "
            f"no value under {MIN_RATIO_JOBS} finished jobs a window."
        ),
        no_value=NO_TRAFFIC,
    ),
    Panel(
        "Success ratio",
        (
            Query(
                f'sum(rate(tts_tasks_total{{status=~"succeeded|cached"}}[{_R}]))'
                f" / sum(rate(tts_tasks_total[{_R}]))" + _ENOUGH_JOBS,
                "succeeded or cached",
            ),
        ),
        unit="percentunit",
        description=(
            "Share of finished jobs that succeeded (a cache hit is a success); "
            f"no value under {MIN_RATIO_JOBS} finished jobs a window."
        ),
        y_max=RATIO_TOP,
        no_value=NO_TRAFFIC,
    ),
    Panel(
        "Real-time factor",
        (
            Query(
                f"sum by (engine) (rate(tts_inference_duration_seconds_sum[{_R}]))"
                f" / sum by (engine) (rate(tts_audio_seconds_total[{_R}]))",
                "{{engine}}",
            ),
        ),
        unit="none",
        description="Inference seconds per second of audio; below 1 is faster than real time.",
    ),
    Panel(
        "Queue wait",
        _quantiles("tts_queue_wait_seconds"),
        unit="s",
        description="Enqueue to start of a task: P50, P90, P99.",
    ),
    Panel(
        "Queue depth",
        (
            Query("sum by (queue) (tts_queue_depth)", "waiting {{queue}}"),
            Query("sum(tts_queue_unacked)", "taken, not acked"),
        ),
        unit="short",
        description=(
            "Messages waiting in Redis, and taken by workers not yet acked, as read at each "
            "scrape: a queue that fills and drains between two scrapes does not show."
        ),
        all_zero="no message waiting at any scrape",
    ),
    Panel(
        "Worker freshness",
        (
            Query(
                f'max by (worker) (time() - push_time_seconds{{job="{WORKER_JOB}"}})',
                "{{worker}}",
            ),
        ),
        unit="s",
        description=(
            "Seconds since each worker node last pushed: below its heartbeat (2 s) plus the "
            "scrape interval while it lives; a climbing line is a node that stopped pushing."
        ),
    ),
    Panel(
        "Task duration",
        _quantiles("tts_task_duration_seconds"),
        unit="s",
        description="Whole task, receive to result: P50, P90, P99.",
    ),
    Panel(
        "Storage latency P90",
        (
            Query(
                "histogram_quantile(0.9, sum by (le, op) "
                f"(rate(tts_storage_seconds_bucket[{_R}])))",
                "{{op}}",
            ),
        ),
        unit="s",
        description="S3 upload and cache lookup time, P90.",
    ),
    Panel(
        "Retries by reason",
        (Query(f"sum by (reason) (rate(tts_task_retries_total[{_R}]))", "{{reason}}"),),
        unit="ops",
        description="Retries scheduled per second, by reason.",
    ),
    Panel(
        "Engine batch size",
        (
            Query(
                f"sum by (engine) (rate(tts_engine_batch_size_sum[{_R}]))"
                f" / sum by (engine) (rate(tts_engine_batch_size_count[{_R}]))",
                "average {{engine}}",
            ),
            Query(
                "histogram_quantile(0.9, sum by (le, engine) "
                f"(rate(tts_engine_batch_size_bucket[{_R}])))",
                "p90 {{engine}}",
            ),
        ),
        unit="short",
        description="Jobs per batched decoding step (batched mode): average and P90.",
    ),
    Panel(
        "Speech tokens per second",
        (Query(f"sum by (engine) (rate(tts_engine_speech_tokens_total[{_R}]))", "{{engine}}"),),
        unit="none",
        description="Speech tokens decoded per second by batched steps, all workers.",
    ),
)
