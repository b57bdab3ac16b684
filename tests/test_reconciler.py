"""The reconciler's rule, on the test stack's real Redis: a job in flight is recorded as lost
only when two looks find no message of it anywhere; a message in the unacked set or in the
queue (even far down it) keeps it alive; a recorded job leaves the index."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from core.batch_state import IN_FLIGHT_BATCHES, BatchState
from core.settings import Settings
from worker.parent.outcomes import ParentRecorder
from worker.parent.reconciler import LOCK_KEY, Reconciler, messages_present
from worker.push import WorkerMetrics

pytestmark = pytest.mark.integration

JOB = "5d0c1f6e-8a9e-5b1c-9f0e-000000000001"


def envelope(job_id: str) -> bytes:
    """A message as kombu stores it: the task id in the headers, the body base64."""
    return json.dumps(
        {"body": "W1t7fV0=", "headers": {"id": job_id, "task": "tts.synthesize"}}
    ).encode()


@pytest.fixture()
def parts(settings: Settings) -> tuple[redis.Redis, ParentRecorder, Reconciler]:
    client = redis.Redis.from_url(settings.broker_url)
    recorder = ParentRecorder(settings, client, WorkerMetrics(engine="fake"), "node-test")
    return client, recorder, Reconciler(lambda: recorder, interval=60)


def look(reconciler: Reconciler, client: redis.Redis) -> list[str]:
    # Two looks are normally an interval apart, spaced by the lock: lift it, as time would.
    client.delete(LOCK_KEY)
    return reconciler.run_once()


def start_job(recorder: ParentRecorder) -> BatchState:
    state = recorder.batch("b1")
    state.create()
    state.add_rows([("r1", JOB)])
    state.start_delivery(
        JOB, send_id="s1", message={"job_id": JOB, "batch_id": "b1", "text": "hello"}
    )
    return state


def test_a_job_whose_message_exists_nowhere_is_recorded_after_two_looks(parts: Any) -> None:
    client, recorder, reconciler = parts
    state = start_job(recorder)
    assert look(reconciler, client) == []  # first look: a suspect only
    assert state.result(JOB) is None
    assert look(reconciler, client) == [JOB]
    result = state.result(JOB)
    assert result is not None
    assert (result["status"], result["reason"]) == ("failed", "worker_lost")
    # Kept for `tts-batch retry`.
    assert result["message"]["text"] == "hello"
    assert state.progress().failed == 1
    # Recorded: no longer in flight, and the batch leaves the index on the next look.
    assert state.in_flight() == {}
    assert look(reconciler, client) == []
    assert not client.sismember(IN_FLIGHT_BATCHES, "b1")


def test_a_message_in_the_unacked_set_or_deep_in_the_queue_keeps_its_job(parts: Any) -> None:
    client, recorder, reconciler = parts
    state = start_job(recorder)
    client.hset("unacked", "tag-1", json.dumps([json.loads(envelope(JOB)), "tts", "tts"]))
    assert look(reconciler, client) == []
    assert look(reconciler, client) == []
    client.delete("unacked")
    # Back in the queue behind 2,500 others (read in chunks of 1,000).
    client.rpush("tts", *(envelope(f"other-{i}") for i in range(2500)), envelope(JOB))
    assert messages_present(client, [JOB]) == {JOB}
    assert look(reconciler, client) == []
    assert look(reconciler, client) == []
    assert state.result(JOB) is None


def test_a_new_delivery_between_looks_starts_the_count_again(parts: Any) -> None:
    client, recorder, reconciler = parts
    start_job(recorder)
    assert look(reconciler, client) == []
    # Redelivered and started again before the second look: its mark is a new one.
    start_job(recorder)
    assert look(reconciler, client) == []
    assert look(reconciler, client) == [JOB]


def test_one_look_at_a_time_across_nodes(parts: Any) -> None:
    client, recorder, reconciler = parts
    other = Reconciler(lambda: recorder, interval=60)
    start_job(recorder)
    assert look(reconciler, client) == []
    # The lock taken by the first look is left to lapse: a second node right after does nothing.
    assert other.run_once() == []
    assert client.hlen("tts:reconciler:suspects") == 1
