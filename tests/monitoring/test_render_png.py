"""Every dashboard panel against a real Prometheus scraping a real Pushgateway (fed by simulated
worker nodes, one group each) and the real queue exporter, then rendered to a PNG; the values
the panels should show for a known feed (a queue wait of minutes, a near-empty window, one
freshness line per node, a range fitted to the activity)."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from core.errors import DashboardError
from monitoring.panels import NO_TRAFFIC, PANELS, Panel
from monitoring.prometheus_config import render_prometheus_config
from monitoring.render_png import (
    FIT_MARGIN_S,
    PanelData,
    Series,
    caption,
    draw,
    fit_span,
    fitted_range,
    query_panels,
    render_dashboard,
    zero_note,
)
from tests.support.monitoring_feed import SimWorker
from tests.support.monitoring_services import (
    prometheus,
    pushgateway,
    queue_exporter,
    redis_server,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
# The test stacks' scrape interval: short windows of a few scrapes work.
SCRAPE_S = 1


@dataclass
class Stack:
    prometheus_url: str
    gateway: str
    redis_port: int


@contextmanager
def monitoring_stack(tmp: Path) -> Iterator[Stack]:
    """Redis, the queue exporter, a Pushgateway and a Prometheus scraping them every second."""
    with ExitStack() as es:
        redis_port = es.enter_context(redis_server(tmp))
        exporter = es.enter_context(queue_exporter(tmp, f"redis://127.0.0.1:{redis_port}/0"))
        gateway = es.enter_context(pushgateway(tmp))
        config = render_prometheus_config(
            pushgateway=gateway,
            flower=None,
            exporter=exporter,
            rules_dir=ROOT / "compose" / "prometheus" / "rules",
            scrape_interval=f"{SCRAPE_S}s",
        )
        url = es.enter_context(prometheus(tmp, config))
        yield Stack(url, gateway, redis_port)


# Not named `stack`: the project conftest's session fixture of that name is the full stack.
@pytest.fixture(scope="module")
def mon_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with monitoring_stack(tmp_path_factory.mktemp("monitoring")) as stack:
        yield stack


@pytest.fixture()
def fresh_stack(tmp_path: Path) -> Iterator[Stack]:
    """A stack of its own: nothing but this test's feed in its Prometheus."""
    with monitoring_stack(tmp_path) as stack:
        yield stack


def instant(url: str, expr: str, at: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=10) as response:
        payload = json.load(response)
    assert payload["status"] == "success", payload
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def panel(title: str) -> Panel:
    [found] = [p for p in PANELS if p.title == title]
    return found


def total_scraped(stack: Stack, worker: str, total: float) -> float:
    """Wait until Prometheus holds `total` finished jobs of `worker`; return the time it did."""
    jobs = f'sum(tts_tasks_total{{worker="{worker}"}})'
    wait_until(
        lambda: float(instant(stack.prometheus_url, jobs, time.time())[0]["value"][1]) == total,
        timeout=30,
        what=f"{total:g} jobs of {worker} in Prometheus",
    )
    return time.time()


def scraped_after(stack: Stack, worker: str, after: float) -> float:
    """Wait until Prometheus has a sample of `worker`'s group newer than `after`; return now."""
    newest = f'min(timestamp(tts_tasks_total{{worker="{worker}"}}))'
    wait_until(
        lambda: float(instant(stack.prometheus_url, newest, time.time())[0]["value"][1]) > after,
        timeout=30,
        what=f"a scrape of {worker} after {after:.1f}",
    )
    return time.time()


def scraped(stack: Stack, worker: str, total: float) -> float:
    """Wait until Prometheus holds `total` finished jobs of `worker`, then for two more scrapes
    (so a window ending now has the totals in its last samples); return now."""
    seen = total_scraped(stack, worker, total)
    return scraped_after(stack, worker, seen + 2 * SCRAPE_S)


def start_window(stack: Stack, worker: SimWorker) -> float:
    """Push `worker`'s zeroed registry; return a window start with a scraped sample of every
    counter at 0 after it (so rate() over the window sees exactly what is pushed next)."""
    worker.push(stack.gateway)
    name = worker.grouping["worker"]
    start = total_scraped(stack, name, 0)
    scraped_after(stack, name, start)
    return start


def window_to(start: float, at: float) -> str:
    return f"{math.ceil(at - start)}s"


def _has_value(data: PanelData) -> bool:
    return any(any(math.isfinite(v) for v in s.values) for s in data.series)


@pytest.mark.integration
def test_every_panel_returns_data(mon_stack: Stack, tmp_path: Path) -> None:
    workers = [SimWorker("celery@a", seed=1), SimWorker("celery@b", seed=2)]
    client = redis.Redis(port=mon_stack.redis_port)
    client.lpush("tts", *[f"m{i}" for i in range(50)])
    # Push as workers do until every panel has a value: rate() needs two scrapes that saw a
    # change, and Prometheus's first scrape is queryable only after a few seconds.
    deadline = time.monotonic() + 90
    missing: list[str] = []
    while time.monotonic() < deadline:
        for worker in workers:
            worker.run_tasks(4)
            worker.push(mon_stack.gateway)
        client.rpop("tts", 2)
        data = query_panels(mon_stack.prometheus_url, minutes=2)
        missing = [d.panel.title for d in data if not _has_value(d)]
        if not missing:
            break
        time.sleep(0.5)
    assert not missing, f"panels without data: {missing}"

    by_title = {d.panel.title: d for d in data}
    # The new grouping: no process label reaches any panel.
    assert all("pid" not in s.label for d in data for s in d.series)
    # One freshness line per worker node (its one Pushgateway group).
    fresh = by_title["Worker freshness"].series
    assert sorted(s.label for s in fresh) == ["celery@a", "celery@b"]
    # These feeds push every ~0.5 s and are scraped every second.
    assert all(0 <= s.values[-1] < 5 for s in fresh)
    success = [v for v in by_title["Success ratio"].series[0].values if math.isfinite(v)]
    assert all(0 <= v <= 1 for v in success)

    png = render_dashboard(mon_stack.prometheus_url, tmp_path / "dash.png", minutes=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 50_000


def test_unreachable_prometheus_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="cannot query"):
        render_dashboard("http://127.0.0.1:1", tmp_path / "x.png")


@pytest.mark.integration
def test_bad_query_is_reported_with_prometheus_reason(mon_stack: Stack) -> None:
    from monitoring.render_png import query_range

    with pytest.raises(DashboardError, match="parse error"):
        query_range(
            mon_stack.prometheus_url, "sum(", start=time.time() - 60, end=time.time(), step=5
        )


def test_draw_copes_with_gaps_zeros_and_crowds(tmp_path: Path) -> None:
    now = time.time()
    times = [now - 60 + i for i in range(60)]
    nan = float("nan")
    data = [
        PanelData(PANELS[0], [Series("up", times, [float(i) for i in range(60)])]),
        PanelData(PANELS[1], [Series("idle", times, [nan] * 60)]),
        PanelData(PANELS[2], [Series("zero", times, [0.0] * 60)]),
        PanelData(PANELS[3], [Series(f"w{i}", times, [i + 1.0] * 60) for i in range(20)]),
        PanelData(PANELS[4], []),
    ]
    out = draw(data, tmp_path / "sub" / "d.png", title="t", span=(now - 120, now))
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_queue_wait_of_two_minutes_reads_two_minutes(fresh_stack: Stack) -> None:
    # A batch larger than the fleet: every job waited 120 s in the queue. Each quantile must
    # read inside the bucket that holds 120 s (90-120 s); with no bound between 60 and 300 s
    # the P99 read ~298 s.
    node = SimWorker("celery@wait", seed=3)
    start = start_window(fresh_stack, node)
    node.run_tasks(40, queue_wait=120)
    node.push(fresh_stack.gateway)
    at = scraped(fresh_stack, "celery@wait", 40)
    for expr in panel("Queue wait").promql(window_to(start, at)):
        [item] = instant(fresh_stack.prometheus_url, expr, at)
        assert 90 <= float(item["value"][1]) <= 120, (expr, item)


@pytest.mark.integration
def test_ratios_say_no_traffic_over_a_near_empty_window(fresh_stack: Stack) -> None:
    url = fresh_stack.prometheus_url
    ratios = [panel("Success ratio"), panel("Error ratio by reason")]
    node = SimWorker("celery@sparse", seed=4)
    start = start_window(fresh_stack, node)
    # One job in the window, retried once and failed: error 200%, success 0% before the guard.
    node.retried_failure("storage_error")
    node.push(fresh_stack.gateway)
    at = scraped(fresh_stack, "celery@sparse", 1)
    window = window_to(start, at)
    [tasks] = panel("Throughput: tasks per second").promql(window)
    rates = {i["metric"]["status"]: float(i["value"][1]) for i in instant(url, tasks, at)}
    assert rates["failed"] > 0, "the job itself shows"
    for ratio in ratios:
        for expr in ratio.promql(window):
            assert instant(url, expr, at) == [], (ratio.title, expr)
    data = query_panels(url, start=start, end=at, rate_window=window, panels=ratios)
    assert [caption(d) for d in data] == [NO_TRAFFIC, NO_TRAFFIC]

    # Twenty jobs in the window: the ratios are back, and exact.
    node.succeed(19)
    node.push(fresh_stack.gateway)
    at = scraped(fresh_stack, "celery@sparse", 20)
    window = window_to(start, at)
    [success] = panel("Success ratio").promql(window)
    assert float(instant(url, success, at)[0]["value"][1]) == pytest.approx(19 / 20)
    [errors] = panel("Error ratio by reason").promql(window)
    by_reason = {i["metric"]["reason"]: float(i["value"][1]) for i in instant(url, errors, at)}
    assert by_reason["storage_error"] == pytest.approx(2 / 20)
    assert by_reason["engine_error"] == 0


@pytest.mark.integration
def test_one_freshness_line_per_worker_node(fresh_stack: Stack) -> None:
    nodes = [SimWorker("celery@x", seed=6), SimWorker("celery@y", seed=7)]
    for node in nodes:
        node.run_tasks(3)
        node.push(fresh_stack.gateway)
    [expr] = panel("Worker freshness").promql()
    url = fresh_stack.prometheus_url
    wait_until(
        lambda: len(instant(url, expr, time.time())) == 2, timeout=30, what="both nodes scraped"
    )
    result = instant(url, expr, time.time())
    assert sorted(item["metric"]["worker"] for item in result) == ["celery@x", "celery@y"]
    assert all(set(item["metric"]) == {"worker"} for item in result)
    # Pushed once, scraped every second: seconds since the push, not since the scrape.
    assert all(0 <= float(item["value"][1]) < 30 for item in result)


@pytest.mark.integration
def test_range_is_fitted_to_the_activity(fresh_stack: Stack, tmp_path: Path) -> None:
    url = fresh_stack.prometheus_url
    node = SimWorker("celery@fit", seed=5)
    start = start_window(fresh_stack, node)
    # Twelve jobs that never waited in Redis long enough for a scrape to see them.
    node.run_tasks(12)
    node.push(fresh_stack.gateway)
    at = scraped(fresh_stack, "celery@fit", 12)

    # Asked for 5 minutes, drawn from the first activity (jobs finishing, seen just after
    # `start`) less the margin, to the asked end (the rate window still holds the jobs).
    lo, hi = fitted_range(url, start=at - 300, end=at, rate_window="5s")
    assert start - FIT_MARGIN_S <= lo <= start - FIT_MARGIN_S + 5, lo - start
    assert hi == at
    # Nothing happened in a range before any data: it is drawn whole.
    assert fitted_range(url, start=at - 900, end=at - 600) == (at - 900, at - 600)

    # The queue depth panel is 0 at every scrape, and says so, with how often it read the
    # queue and how many jobs finished meanwhile.
    note = zero_note(url, start=lo, end=hi)
    assert note == f"read every {SCRAPE_S} s, yet about 12 jobs finished", note
    [depth] = query_panels(url, start=lo, end=hi, rate_window="5s", panels=[panel("Queue depth")])
    assert all(v == 0 for s in depth.series for v in s.values if math.isfinite(v))
    text = caption(PanelData(depth.panel, depth.series, note))
    assert text == f"no message waiting at any scrape\n({note})"

    png = render_dashboard(url, tmp_path / "fitted.png", minutes=5, end=at)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_fit_span_widens_the_activity_within_the_asked_range() -> None:
    assert fit_span([], start=0, end=1800) == (0, 1800)
    # A 76 s batch near the end of 30 minutes: margins of FIT_MARGIN_S (10 s).
    assert fit_span([1700, 1750, 1776], start=0, end=1800) == (1690, 1786)
    # ... cut at the asked range.
    assert fit_span([5, 1795], start=0, end=1800) == (0, 1800)
    # A long run: margins of a tenth of it.
    assert fit_span([1000, 5000], start=0, end=10_000) == (600, 5400)


def test_captions_say_why_a_panel_is_empty() -> None:
    now = time.time()
    times = [now - 2, now - 1, now]
    nan = float("nan")
    success, throughput, depth = (
        panel("Success ratio"),
        panel("Throughput: tasks per second"),
        panel("Queue depth"),
    )
    assert caption(PanelData(success, [])) == NO_TRAFFIC
    assert caption(PanelData(success, [Series("ok", times, [nan] * 3)])) == NO_TRAFFIC
    assert caption(PanelData(throughput, [])) == "no data"
    assert caption(PanelData(throughput, [Series("ok", times, [0.0] * 3)])) == "0 throughout"
    zero = [Series("waiting tts", times, [0.0] * 3)]
    assert caption(PanelData(depth, zero)) == "no message waiting at any scrape"
    assert (
        caption(PanelData(depth, zero, "read every 5 s"))
        == "no message waiting at any scrape\n(read every 5 s)"
    )
