"""The queue exporter against a real redis-server, run as `python -m monitoring.queue_exporter`."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core.delivery import PRIORITY_SEP, UNACKED_KEY
from monitoring.queue_exporter import QueueCollector, make_registry
from tests.support.monitoring_services import free_port, queue_exporter, redis_server

pytestmark = pytest.mark.integration

DEPTH = ("tts_queue_depth", (("queue", "tts"),))
UNACKED = ("tts_queue_unacked", ())
UP = ("tts_queue_up", ())


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and return {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    with redis_server(tmp_path) as port:
        yield port


def test_collector_reads_depth_and_unacked(redis_port: int) -> None:
    client = redis.Redis(port=redis_port)
    registry = make_registry(client)
    assert registry.get_sample_value("tts_queue_depth", {"queue": "tts"}) == 0
    assert registry.get_sample_value("tts_queue_unacked") == 0
    assert registry.get_sample_value("tts_queue_up") == 1

    client.lpush("tts", "a", "b", "c")
    # A priority sub-list of the same queue counts towards its depth.
    client.lpush(f"tts{PRIORITY_SEP}3", "d")
    client.hset(UNACKED_KEY, mapping={"tag1": "m1", "tag2": "m2"})
    client.lpush("other", "x")
    assert registry.get_sample_value("tts_queue_depth", {"queue": "tts"}) == 4
    assert registry.get_sample_value("tts_queue_unacked") == 2

    client.rpop("tts")
    assert registry.get_sample_value("tts_queue_depth", {"queue": "tts"}) == 3


def test_collector_reports_redis_down_as_a_value() -> None:
    # Nothing listens on this port: the collector must not raise.
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=None)  # type: ignore[arg-type]
    registry = make_registry(client)
    assert registry.get_sample_value("tts_queue_up") == 0
    assert registry.get_sample_value("tts_queue_depth", {"queue": "tts"}) is None
    assert next(iter(QueueCollector(client).collect())).name == "tts_queue_up"


def test_exporter_process_serves_live_values(tmp_path: Path) -> None:
    redis_dir = tmp_path / "redis-run"
    redis_dir.mkdir()
    # The exporter outlives Redis, to see how it reports the outage.
    port = free_port()
    with queue_exporter(tmp_path, f"redis://127.0.0.1:{port}/0") as addr:
        url = f"http://{addr}/metrics"
        assert scrape(url)[UP] == 0
        with redis_server(redis_dir, port=port):
            values = scrape(url)
            assert values[DEPTH] == 0
            assert values[UP] == 1

            client = redis.Redis(port=port)
            client.lpush("tts", *[f"job{i}" for i in range(5)])
            client.hset(UNACKED_KEY, "tag", "msg")
            values = scrape(url)
            assert values[DEPTH] == 5
            assert values[UNACKED] == 1
            client.close()
        # Redis is gone: the scrape still answers 200 and says so.
        values = scrape(url)
        assert values[UP] == 0
        assert DEPTH not in values
