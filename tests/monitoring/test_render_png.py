"""Every dashboard panel against a real Prometheus scraping a real Pushgateway (fed by simulated
worker processes) and the real queue exporter, then rendered to a PNG."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from core.errors import DashboardError
from monitoring.panels import PANELS
from monitoring.prometheus_config import render_prometheus_config
from monitoring.render_png import (
    PanelData,
    Series,
    draw,
    query_panels,
    render_dashboard,
)
from tests.support.monitoring_feed import SimWorker
from tests.support.monitoring_services import prometheus, pushgateway, queue_exporter, redis_server

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    prometheus_url: str
    gateway: str
    redis_port: int


# Not named `stack`: the project conftest's session fixture of that name is the full stack.
@pytest.fixture(scope="module")
def mon_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    with ExitStack() as es:
        redis_port = es.enter_context(redis_server(tmp))
        exporter = es.enter_context(queue_exporter(tmp, f"redis://127.0.0.1:{redis_port}/0"))
        gateway = es.enter_context(pushgateway(tmp))
        config = render_prometheus_config(
            pushgateway=gateway,
            flower=None,
            exporter=exporter,
            rules_dir=ROOT / "compose" / "prometheus" / "rules",
            scrape_interval="1s",
        )
        url = es.enter_context(prometheus(tmp, config))
        yield Stack(url, gateway, redis_port)


def _has_value(data: PanelData) -> bool:
    return any(any(math.isfinite(v) for v in s.values) for s in data.series)


@pytest.mark.integration
def test_every_panel_returns_data(mon_stack: Stack, tmp_path: Path) -> None:
    workers = [SimWorker("celery@a", 101, seed=1), SimWorker("celery@b", 202, seed=2)]
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
    # One freshness line per worker process (its own Pushgateway group).
    fresh = by_title["Worker freshness"].series
    assert sorted(s.label for s in fresh) == ["celery@a pid 101", "celery@b pid 202"]
    assert all(0 <= s.values[-1] < 10 for s in fresh)
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
