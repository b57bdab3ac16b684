"""Flower tells batches apart: the local stack's Flower, fed by real workers' events, shows each
task's label (batch, row, speaker, the text's start) as its args, finds a batch by searching
them, and drops a stopped worker from its list."""

from __future__ import annotations

import base64
import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

from core.settings import Settings
from devstack.credentials import load_or_create_credentials
from producer.api import Producer
from tests.support.helpers import wait_until

pytestmark = pytest.mark.integration

LONG_TEXT = "Attention please.\nThe 18:42 service to Leeds\tis delayed by about twenty minutes."


class FlowerClient:
    def __init__(self, stack: Any) -> None:
        creds = load_or_create_credentials(stack.layout.credentials_file)
        token = base64.b64encode(f"{creds.flower_user}:{creds.flower_password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._url = f"http://{stack.layout.host}:{stack.layout.ports.flower}"

    def get(self, path: str, **query: str) -> Any:
        url = f"{self._url}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers={"Authorization": self._auth})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read().decode())

    def tasks(self, **query: str) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.get("/api/tasks", **query)
        return found

    def workers(self) -> set[str]:
        """The workers Flower lists (from their events; offline ones until purged)."""
        return {w["hostname"] for w in self.get("/workers", json="1")["data"]}


@pytest.fixture()
def flower(stack: Any) -> Any:
    status = stack.start("flower")
    assert status.state == "running", status
    try:
        yield FlowerClient(stack)
    finally:
        stack.stop("flower")


def test_flower_shows_batch_row_and_text_start_and_finds_a_batch(
    settings: Settings, workers: Any, flower: FlowerClient
) -> None:
    node = workers.start(concurrency=1)
    # Flower hears this worker's heartbeats: it will hear its tasks' events too.
    wait_until(lambda: node.hostname in flower.workers(), timeout=60, what="worker in Flower")

    producer = Producer(settings)
    tag = uuid.uuid4().hex[:8]
    batches = {}
    for name in ("north", "south"):
        rows = [
            {"id": f"{name}-{i}", "text": f"{LONG_TEXT} {name} {i}", "speaker": "en-female"}
            for i in range(3)
        ]
        handle = producer.submit_batch(rows, batch_id=f"{name}-{tag}")
        handle.wait(timeout=120)
        batches[handle.batch_id] = {r.job_id: r.row_id for r in handle.results()}

    every_job = {job for jobs in batches.values() for job in jobs}
    tasks = wait_until(
        lambda: (found := flower.tasks()) and every_job <= found.keys() and found,
        timeout=60,
        what="every job's task in Flower",
    )
    for batch_id, jobs in batches.items():
        for job_id, row_id in jobs.items():
            args = tasks[job_id]["args"]
            assert args.startswith(
                f"batch={batch_id} row={row_id} speaker=en-female "
                "text='Attention please. The 18:42 service t"
            ), args
            # One line, the text cut at 40 characters: never the whole message.
            assert "\n" not in args and "\t" not in args and "Leeds is delayed" not in args
            assert tasks[job_id]["kwargs"] == "{}"

    # An operator's search by batch id finds that batch's tasks and no other's.
    north = next(b for b in batches if b.startswith("north"))
    found = flower.tasks(search=f"args:batch={north}")
    assert set(found) == set(batches[north])


def test_a_stopped_worker_leaves_flowers_list(workers: Any, flower: FlowerClient) -> None:
    node = workers.start(concurrency=1)
    wait_until(lambda: node.hostname in flower.workers(), timeout=60, what="worker in Flower")
    node.stop()
    # Purged once offline for --purge_offline_workers seconds (devstack/services.py).
    wait_until(
        lambda: node.hostname not in flower.workers(),
        timeout=120,
        interval=1.0,
        what="the stopped worker purged from Flower's list",
    )


def test_a_retried_task_keeps_its_short_label(
    settings: Settings, stack: Any, workers: Any, flower: FlowerClient
) -> None:
    # A retry is a new message sent by the worker (Celery's task.retry): without a label of
    # its own, its argsrepr would be the whole message, text included.
    node = workers.start(concurrency=1, max_retries=2, retry_base_seconds=0.2)
    wait_until(lambda: node.hostname in flower.workers(), timeout=60, what="worker in Flower")
    batch_id = f"retry-{uuid.uuid4().hex[:8]}"
    row = {"id": "again-1", "text": f"{LONG_TEXT} retried", "speaker": "zh-male"}
    try:
        stack.stop("s3")  # every attempt meets a storage error: retried, then dead-lettered
        (result,) = Producer(settings).submit_batch([row], batch_id=batch_id).wait(timeout=120)
    finally:
        stack.start("s3")
    assert (result.status, result.reason) == ("failed", "storage_error"), result

    def retried_and_failed() -> dict[str, Any] | None:
        task = flower.tasks().get(result.job_id)
        done = task is not None and task["state"] == "FAILURE" and (task["retries"] or 0) >= 1
        return task if done else None

    task = wait_until(retried_and_failed, timeout=60, what="the retried task's failure in Flower")
    assert task["args"].startswith(
        f"batch={batch_id} row=again-1 speaker=zh-male text='Attention please."
    ), task["args"]
    assert "retried" not in task["args"] and "\n" not in task["args"]
