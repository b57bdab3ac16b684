"""Monitoring end to end: real Celery worker nodes push to a real Pushgateway (one group per
node, {job="tts_worker", worker}), a real Prometheus scrapes it, and every dashboard panel's
query returns the value the test can compute from what it did."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from core.settings import Settings
from monitoring.panels import PANELS
from producer.api import Producer
from tests.support.helpers import pushgateway_samples, wait_until

pytestmark = pytest.mark.integration

DELAY = 0.3  # fake engine seconds per synthesis: every inference lands in the (0.25, 0.5] bucket
# A node pushes at least this often (its heartbeat), and the test stack scrapes every second:
# worker freshness stays under their sum; the rest is slack for two shared cores.
HEARTBEAT_S = Settings().metrics_push_seconds
FRESHNESS_BOUND_S = HEARTBEAT_S + 1 + 4


def prometheus_url(stack: Any) -> str:
    return f"http://127.0.0.1:{stack.layout.ports.prometheus}"


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    with urllib.request.urlopen(
        f"{url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10
    ) as response:
        payload = json.load(response)
    assert payload["status"] == "success", payload
    result: list[dict[str, Any]] = payload["data"]["result"]
    return result


def scalar(url: str, expr: str, at: float | None = None) -> float:
    result = query(url, expr, at)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def worker_groups(settings: Settings, hostname: str) -> list[dict[str, str]]:
    """The grouping labels of every Pushgateway group of node `hostname`."""
    return [
        labels
        for labels, _ in pushgateway_samples(settings.pushgateway_url, "push_time_seconds")
        if labels.get("worker") == hostname
    ]


def tasks_counted(settings: Settings, hostname: str) -> float:
    """tts_tasks_total summed over node `hostname`'s group in the Pushgateway."""
    return sum(
        value
        for labels, value in pushgateway_samples(settings.pushgateway_url, "tts_tasks_total")
        if labels.get("job") == "tts_worker" and labels.get("worker") == hostname
    )


def test_panels_return_what_the_workers_did(stack: Any, settings: Settings, workers: Any) -> None:
    prom = prometheus_url(stack)
    node = workers.start(concurrency=2, fake_delay=DELAY)
    # The node pushes zeroed counters at start; wait until Prometheus has scraped them, so that
    # rate() sees every job as an increase.
    wait_until(
        lambda: query(prom, f'tts_tasks_total{{worker="{node.hostname}",status="failed"}}'),
        timeout=30,
        what="the node's group scraped",
    )
    # The query window opens while every counter is still 0 and stays so for over a scrape:
    # then rate() extrapolates no series at its start, and ratios of rates are exact.
    window_start = time.time() + 0.2
    submit_at = window_start + 1.5

    good, bad = 16, 4
    wide = Settings.from_env({**settings.to_env(), "TTS_SPEAKERS": "英文女,robot"})
    rows = [
        {"id": f"g{i}", "text": f"Train {i} is on time.", "speaker": "英文女"} for i in range(good)
    ]
    rows += [{"id": f"b{i}", "text": f"Announcement {i}.", "speaker": "robot"} for i in range(bad)]
    wait_until(lambda: time.time() >= submit_at, timeout=5, interval=0.05, what="submit time")
    results = Producer(wide).submit_batch(rows).wait(timeout=120)
    audio_total = sum(r.audio_seconds or 0 for r in results if r.ok)
    assert sum(r.ok for r in results) == good
    assert {r.reason for r in results if not r.ok} == {"unknown_speaker"}

    # The Pushgateway: the node's one group counted every job (the sum of its pool processes).
    wait_until(
        lambda: tasks_counted(settings, node.hostname) == good + bad,
        timeout=30,
        what=f"{good + bad} jobs counted for {node.hostname} in the Pushgateway",
    )

    # Prometheus has scraped the final counts, twice, before the window closes.
    total = f'sum(tts_tasks_total{{worker="{node.hostname}"}})'
    wait_until(lambda: scalar(prom, total) == good + bad, timeout=30, what="final counts scraped")
    # Two more scrapes (1 s apart), so that the window's last samples hold the totals.
    newest = f'min(timestamp(tts_tasks_total{{worker="{node.hostname}"}}))'
    settled = time.time() + 2
    wait_until(lambda: scalar(prom, newest) > settled, timeout=30, what="two more scrapes")
    at = time.time()
    window = f"{int(at - window_start)}s"
    print(f"query window {window}")

    def panel(title: str) -> list[str]:
        [found] = [p for p in PANELS if p.title == title]
        return found.promql(window)

    def value(expr: str, **labels: str) -> float:
        for item in query(prom, expr, at):
            if all(item["metric"].get(k) == v for k, v in labels.items()):
                return float(item["value"][1])
        raise AssertionError(f"no series {labels} for {expr}")

    # Every query of every panel returns data.
    for p in PANELS:
        for expr in p.promql(window):
            assert query(prom, expr, at), f"panel {p.title!r}: no data for {expr}"

    # Ratios of counters scraped at the same instants are exact (20 jobs: over MIN_RATIO_JOBS).
    [error_ratio] = panel("Error ratio by reason")
    assert value(error_ratio, reason="unknown_speaker") == pytest.approx(bad / (good + bad))
    assert value(error_ratio, reason="engine_error") == 0
    [success] = panel("Success ratio")
    assert value(success) == pytest.approx(good / (good + bad))

    # Rates are increases over the window, extrapolated by at most the scrape gaps at its ends.
    seconds = int(window[:-1])
    stretch = seconds / (seconds - 2.5)
    [tasks_rate] = panel("Throughput: tasks per second")
    assert good <= value(tasks_rate, status="succeeded") * seconds <= good * stretch
    [audio_rate] = panel("Throughput: audio seconds per second")
    assert audio_total <= value(audio_rate, engine="fake") * seconds <= audio_total * stretch

    # Engine time: each synthesis sleeps DELAY, so the median sits in (0.25, 0.5] and the
    # real-time factor is close to good * DELAY / audio seconds.
    for expr in panel("Inference latency"):
        assert 0.25 <= value(expr, engine="fake") <= 0.5
    [rtf] = panel("Real-time factor")
    assert (
        good * DELAY / audio_total
        <= value(rtf, engine="fake")
        <= good * (DELAY + 0.2) / audio_total
    )

    for expr in panel("Queue wait") + panel("Task duration"):
        assert math.isfinite(value(expr)) and value(expr) >= 0
    # One freshness line for the node, within its heartbeat plus the scrape interval. (Groups
    # of nodes that earlier tests killed outright stay until deleted: that is what the
    # staleness alert is for.)
    for expr in panel("Worker freshness"):
        mine = [i for i in query(prom, expr, at) if i["metric"]["worker"] == node.hostname]
        assert len(mine) == 1, mine
        assert set(mine[0]["metric"]) == {"worker"}
        assert 0 <= float(mine[0]["value"][1]) < FRESHNESS_BOUND_S, mine
    [depth, unacked] = panel("Queue depth")
    assert value(depth, queue="tts") == 0
    assert value(unacked) == 0


def test_queue_depth_is_visible_in_prometheus(stack: Any, settings: Settings) -> None:
    prom = prometheus_url(stack)
    rows = [{"id": f"q{i}", "text": f"Queued {i}.", "speaker": "英文男"} for i in range(7)]
    Producer(settings).submit_batch(rows)
    wait_until(
        lambda: scalar(prom, 'sum(tts_queue_depth{queue="tts"})') == 7,
        timeout=30,
        what="queue depth 7 in Prometheus",
    )


def test_a_node_pushes_one_group_by_worker(settings: Settings, workers: Any) -> None:
    node = workers.start(concurrency=2)
    groups = wait_until(
        lambda: worker_groups(settings, node.hostname),
        timeout=30,
        what="the node pushed",
    )
    # Give every pool process time to have pushed, were it to push a group of its own.
    heartbeat = time.time() + HEARTBEAT_S + 1
    wait_until(lambda: time.time() > heartbeat, timeout=HEARTBEAT_S + 5, what="one heartbeat")
    groups = worker_groups(settings, node.hostname)
    assert len(groups) == 1, groups
    assert "process" not in groups[0]
    assert groups[0]["job"] == "tts_worker"
