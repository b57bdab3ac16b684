"""A tiny Prometheus exporter for the Celery queue in Redis: `python -m monitoring.queue_exporter`.

Workers can only report what they take; what waits in the broker is read here, at scrape time,
by a custom collector (no background thread, so a scrape always sees the current value):

- `tts_queue_depth{queue}`: messages waiting (LLEN of the Celery queue list, priority sub-lists
  included);
- `tts_queue_unacked`: messages taken by a worker and not yet acknowledged (HLEN of kombu's
  `unacked` hash; with late ack that is every task in progress);
- `tts_queue_up`: 1 if Redis answered this scrape, 0 if not (the scrape itself still succeeds).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from core.delivery import PRIORITY_STEPS, QUEUE, UNACKED_KEY, queue_keys

log = logging.getLogger(__name__)

DEFAULT_QUEUES = (QUEUE,)
DEFAULT_PORT = 9808
# The queue's lists (all priorities: their sum is the true backlog) and the unacked hash are
# kombu's layout, named once in core.delivery.
# A scrape must answer quickly even when Redis hangs.
REDIS_TIMEOUT_S = 2.0


class QueueCollector(Collector):
    """Reads queue depth and unacked count from Redis each time it is collected."""

    def __init__(self, client: Any, queues: Sequence[str] = DEFAULT_QUEUES) -> None:
        # `client`: a redis.Redis (or anything with pipeline/llen/hlen); passed in for tests.
        self._client = client
        self._queues = tuple(queues)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("tts_queue_up", "1 if Redis answered the last scrape, else 0")
        try:
            depths, unacked = self._read()
        except Exception as exc:  # any Redis failure: report it as a value, not a failed scrape
            log.warning("cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        depth = GaugeMetricFamily(
            "tts_queue_depth", "Messages waiting in the Celery queue", labels=["queue"]
        )
        for queue, value in depths.items():
            depth.add_metric([queue], value)
        yield depth
        yield GaugeMetricFamily(
            "tts_queue_unacked", "Messages taken by workers, not yet acknowledged", value=unacked
        )
        up.add_metric([], 1)
        yield up

    def _read(self) -> tuple[dict[str, int], int]:
        # One round trip for every list and the hash.
        pipe = self._client.pipeline(transaction=False)
        for queue in self._queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        pipe.hlen(UNACKED_KEY)
        replies = pipe.execute()
        per_queue = len(PRIORITY_STEPS) + 1
        depths = {
            queue: sum(int(n) for n in replies[i * per_queue : (i + 1) * per_queue])
            for i, queue in enumerate(self._queues)
        }
        return depths, int(replies[-1])


def make_registry(client: Any, queues: Iterable[str] = DEFAULT_QUEUES) -> CollectorRegistry:
    """A registry holding only the queue collector (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(client, tuple(queues)))
    return registry


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # One line per scrape every few seconds is noise.
        pass


def main(argv: list[str] | None = None) -> None:
    """Serve /metrics for the broker in `TTS_BROKER_URL` until killed."""
    from core.redis_conn import connect
    from core.settings import Settings

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("TTS_QUEUE_EXPORTER_PORT", DEFAULT_PORT)),
        help="listen port (env TTS_QUEUE_EXPORTER_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--address",
        # Loopback unless asked: queue sizes are nobody else's business. Compose passes 0.0.0.0.
        default=os.environ.get("TTS_QUEUE_EXPORTER_ADDRESS", "127.0.0.1"),
        help="listen address (env TTS_QUEUE_EXPORTER_ADDRESS, default %(default)s)",
    )
    parser.add_argument(
        "--queue",
        action="append",
        dest="queues",
        help="Celery queue name, repeatable (default: tts)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    settings = Settings.from_env()
    client = connect(
        settings,
        settings.broker_url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        # redis-py retries with backoff by default (seconds); a scrape should rather say
        # "down" now and ask again at the next scrape.
        retry=None,
    )
    registry = make_registry(client, args.queues or DEFAULT_QUEUES)
    server = make_server(
        args.address, args.port, make_wsgi_app(registry), handler_class=_QuietHandler
    )
    log.info("queue exporter on http://%s:%d/metrics", args.address, args.port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        client.close()


if __name__ == "__main__":
    main()
