"""The pusher against a real local HTTP server: PUT of the whole registry under
{job, worker}, coalescing, failures never raised, the group kept on close (DELETE only when
asked)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from worker.push import BackgroundPusher, WorkerMetrics, grouping_key


class Recorder(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, bytes]]] = []
    status = 200

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).requests.append((self.command, self.path, body))
        self.send_response(type(self).status)
        self.end_headers()

    do_PUT = do_POST = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[tuple[str, type[Recorder]]]:
    handler = type("Handler", (Recorder,), {"requests": [], "status": 200})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_put_whole_registry_under_the_worker_node(
    server: tuple[str, type[Recorder]],
) -> None:
    url, handler = server
    metrics = WorkerMetrics(engine="fake")
    metrics.outcome("succeeded")
    metrics.error("engine_error")
    pusher = BackgroundPusher(
        metrics.registry, url=url, grouping_key=grouping_key("w1@host"), min_interval=0.05
    ).start()
    pusher.notify()
    wait_for(lambda: len(handler.requests) >= 1)
    method, path, body = handler.requests[0]
    assert method == "PUT"
    assert path == "/metrics/job/tts_worker/worker/w1%40host"
    text = body.decode()
    assert 'tts_tasks_total{status="succeeded"} 1.0' in text
    assert 'tts_errors_total{reason="engine_error"} 1.0' in text
    assert "tts_inference_duration_seconds_bucket" in text
    pusher.close()
    assert handler.requests[-1][0] == "PUT"
    pusher.close(delete=True)
    assert handler.requests[-1][:2] == ("DELETE", path)


def test_bursts_are_coalesced(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    metrics = WorkerMetrics(engine="fake")
    pusher = BackgroundPusher(
        metrics.registry, url=url, grouping_key=grouping_key("w"), min_interval=0.5
    ).start()
    for _ in range(200):
        metrics.outcome("succeeded")
        pusher.notify()
    wait_for(lambda: len(handler.requests) >= 1)
    time.sleep(0.2)
    assert len(handler.requests) <= 2
    pusher.close(delete=False)
    assert b'tts_tasks_total{status="succeeded"} 200.0' in handler.requests[-1][2]


def test_outage_never_raises_and_catches_up(server: tuple[str, type[Recorder]]) -> None:
    url, handler = server
    handler.status = 503
    metrics = WorkerMetrics(engine="fake")
    pusher = BackgroundPusher(
        metrics.registry, url=url, grouping_key=grouping_key("w"), min_interval=0.05
    ).start()
    metrics.outcome("failed")
    pusher.notify()
    wait_for(lambda: pusher.failures >= 2)
    assert pusher.pushes == 0
    handler.status = 200
    wait_for(lambda: pusher.pushes >= 1, timeout=10)
    pusher.close()


def test_unreachable_gateway_close_is_quiet() -> None:
    metrics = WorkerMetrics(engine="fake")
    pusher = BackgroundPusher(
        metrics.registry, url="http://127.0.0.1:9", grouping_key={"worker": "w"}, timeout=0.5
    ).start()
    pusher.notify()
    pusher.close()
    assert pusher.failures >= 1
