"""Exactly one enqueue per job: the send claim in the batch state (take, skip, take over a
dead sender's claim), two producers submitting one batch at once, and a producer SIGKILLed
mid-send and resubmitted, with the duplicate messages it left dropped by the workers.

Each integration test prints what it counted (run pytest with -s to see it).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import CLAIMED, DONE, IN_FLIGHT, RETRIED, TAKEN_OVER, BatchState
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.enqueue_race import rows
from tests.support.helpers import pushgateway_samples, queue_depth, queued_raw, wait_until

pytestmark = pytest.mark.integration


def client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.broker_url, decode_responses=True)


def state(settings: Settings, batch_id: str) -> BatchState:
    return BatchState(client(settings), batch_id, ttl_seconds=600)


def sent_values(settings: Settings, batch_id: str) -> dict[str, str]:
    r = client(settings)
    raw: dict[str, str] = r.hgetall(state(settings, batch_id).key("sent"))  # type: ignore[assignment]
    return raw


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    """The job messages waiting in the queue, with the Celery task id of each."""
    out = []
    for raw in queued_raw(client(settings)):
        envelope = json.loads(raw)
        args, _, _ = json.loads(base64.b64decode(envelope["body"]))
        out.append({"task_id": envelope["headers"]["id"], **args[0]})
    return out


def producer_process(
    settings: Settings, batch_id: str, n: int, tag: str, *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.enqueue_race", batch_id, str(n), tag, *extra],
        env={**os.environ, **settings.to_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the claim script ----------------------------------------------------------------------------


def test_a_claim_is_taken_once_and_skipped_by_a_second_sender(settings: Settings) -> None:
    s = state(settings, "claims")
    assert s.claim_sends(["j1", "j2"], sender="a", lease_seconds=30) == [CLAIMED, CLAIMED]
    # A live sender's claims are in flight to anyone else, confirmed or not.
    assert s.claim_sends(["j1", "j2", "j3"], sender="b", lease_seconds=30) == [
        IN_FLIGHT,
        IN_FLIGHT,
        CLAIMED,
    ]
    assert s.confirm_sends(["j1", "j2", "j3"], sender="a") == 2
    sent = sent_values(settings, "claims")
    assert sent["j3"] == "claim:b" and float(sent["j1"]) > 0 and float(sent["j2"]) > 0
    # Confirmed sends stay in flight even once their sender is gone.
    s.end_sender("a")
    assert s.claim_sends(["j1"], sender="c", lease_seconds=30) == [IN_FLIGHT]


def test_a_released_claim_is_sent_by_the_next_sender(settings: Settings) -> None:
    s = state(settings, "release")
    assert s.claim_sends(["j1", "j2"], sender="a", lease_seconds=30) == [CLAIMED, CLAIMED]
    assert s.release_sends(["j1"], sender="a") == 1
    assert s.release_sends(["j1"], sender="b") == 0
    assert s.claim_sends(["j1", "j2"], sender="b", lease_seconds=30) == [CLAIMED, IN_FLIGHT]


def test_the_claim_of_a_dead_sender_is_taken_over_once(settings: Settings) -> None:
    s = state(settings, "stale")
    assert s.claim_sends(["j1"], sender="dead", lease_seconds=0.3) == [CLAIMED]
    assert s.claim_sends(["j1"], sender="b", lease_seconds=30) == [IN_FLIGHT]
    wait_until(lambda: "dead" not in s.live_senders(), timeout=5, what="the lease to lapse")
    # Two resubmissions race for the stale claim: one takes it over, the other sees it live.
    assert s.claim_sends(["j1"], sender="b", lease_seconds=30) == [TAKEN_OVER]
    assert s.claim_sends(["j1"], sender="c", lease_seconds=30) == [IN_FLIGHT]
    # The dead sender, were it only slow, can no longer confirm what it lost.
    assert s.confirm_sends(["j1"], sender="dead") == 0
    assert s.confirm_sends(["j1"], sender="b") == 1
    assert set(s.live_senders()) == {"b", "c"}


def test_a_renewed_lease_keeps_its_claims(settings: Settings) -> None:
    s = state(settings, "renewed")
    assert s.claim_sends(["j1"], sender="a", lease_seconds=0.5) == [CLAIMED]
    for _ in range(4):
        time.sleep(0.2)
        s.renew_sender("a", lease_seconds=0.5)
        assert s.claim_sends(["j1"], sender="b", lease_seconds=30) == [IN_FLIGHT]


def test_done_jobs_are_skipped_and_failed_ones_claimed_again(settings: Settings) -> None:
    s = state(settings, "outcomes")
    s.add_rows([("r1", "j1"), ("r2", "j2")])
    assert s.claim_sends(["j1", "j2"], sender="a", lease_seconds=30) == [CLAIMED, CLAIMED]
    s.confirm_sends(["j1", "j2"], sender="a")
    s.record("j1", {"status": "succeeded"})
    s.record("j2", {"status": "failed", "reason": "engine_error"})
    assert s.progress().failed == 1
    assert s.claim_sends(["j1", "j2"], sender="b", lease_seconds=30) == [DONE, RETRIED]
    assert s.result("j2") is None and s.progress().failed == 0
    assert s.claim_sends(["j2"], sender="c", lease_seconds=30) == [IN_FLIGHT]


def test_starts_are_counted_per_message(settings: Settings) -> None:
    s = state(settings, "starts")
    first = s.start_delivery("j1", send_id="s1", message={})
    second = s.start_delivery("j1", send_id="s2", message={})
    again = s.start_delivery("j1", send_id="s1", message={})
    # A second message is no lost delivery; the same message started again is.
    assert (first.starts, first.deliveries) == (1, 1)
    assert (second.starts, second.deliveries) == (1, 2)
    assert (again.starts, again.deliveries) == (2, 3)
    s.record("j1", {"status": "failed", "reason": "engine_error"})
    late = s.start_delivery("j1", send_id="s3", message={})
    assert (late.starts, late.deliveries) == (1, 0) and late.recorded is not None
    # A retried job starts afresh, even from a message that kept its old send id.
    assert s.reset_failed("j1")
    reopened = s.start_delivery("j1", send_id="s1", message={})
    assert (reopened.starts, reopened.deliveries, reopened.recorded) == (1, 1, None)
    legacy = s.start_delivery("j2", send_id=None, message={})
    assert (legacy.starts, s.start_delivery("j2", send_id=None, message={}).starts) == (1, 2)


class BrokenSender:
    """Sends `good` messages, then fails as a broker that went away would."""

    def __init__(self, inner: Any, good: int) -> None:
        self._inner = inner
        self._good = good

    def send(self, messages: list[dict[str, Any]], **options: Any) -> None:
        self._inner.send(messages[: self._good], **options)
        raise ConnectionError("broker gone")


def test_a_send_that_fails_releases_its_claims(settings: Settings) -> None:
    n, tag = 700, f"Broken {uuid.uuid4().hex[:8]}"
    producer = Producer(settings)
    real = producer._sender
    producer._sender = BrokenSender(real, good=100)  # type: ignore[assignment]
    with pytest.raises(ConnectionError):
        producer.submit_batch(rows(n, tag), batch_id="broken")
    # The first chunk's 500 claims were released: nothing is left claimed, nor alive.
    assert sent_values(settings, "broken") == {}
    assert state(settings, "broken").live_senders() == {}
    producer._sender = real
    report = producer.submit_batch(rows(n, tag), batch_id="broken").report
    print(
        f"\n[broken send] {n} rows, the send failed after 100 messages; the resubmit sent "
        f"{report.jobs_sent}; the queue holds {queue_depth(client(settings))}"
    )
    # The 100 sent before the failure are sent again: the workers drop them as duplicates.
    assert (report.jobs_sent, report.jobs_in_flight) == (n, 0)
    assert queue_depth(client(settings)) == n + 100


# -- two producers, one batch, at once -----------------------------------------------------------


def test_two_producers_at_once_enqueue_each_job_once(settings: Settings, tmp_path: Path) -> None:
    n, batch_id, tag = 2000, "race", f"Race {uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    procs = [
        producer_process(
            settings, batch_id, n, tag, "--ready", str(tmp_path / f"ready-{i}"), "--go", str(go)
        )
        for i in range(2)
    ]
    wait_until(
        lambda: all((tmp_path / f"ready-{i}").exists() for i in range(2)),
        timeout=60,
        what="both producers ready",
    )
    go.touch()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    messages = queued_messages(settings)
    sent = sent_values(settings, batch_id)
    task_ids = {m["task_id"] for m in messages}
    print(
        f"\n[race] 2 producers, {n} rows, one batch id: jobs sent "
        f"{[r['jobs_sent'] for r in reports]}, in flight {[r['jobs_in_flight'] for r in reports]}"
        f" (seconds {[r['seconds'] for r in reports]}); queue holds {len(messages)} messages of "
        f"{len(task_ids)} jobs; {len(sent)} sends confirmed"
    )
    assert len(messages) == n
    assert len(task_ids) == n
    assert sum(r["jobs_sent"] for r in reports) == n
    assert all(r["jobs_sent"] + r["jobs_in_flight"] == n for r in reports)
    assert len(sent) == n and not any(v.startswith("claim:") for v in sent.values())
    assert len({m["send_id"] for m in messages}) == n
    assert state(settings, batch_id).live_senders() == {}


# -- a producer killed mid-send, then resubmitted -------------------------------------------------


def test_a_producer_killed_mid_send_and_resubmitted_runs_every_job_once(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    n, batch_id, tag = 2000, "killed-producer", f"Killed {uuid.uuid4().hex[:8]}"
    lease = 2.0
    markers = tmp_path / "markers"
    markers.mkdir()
    r = client(settings)
    proc = producer_process(
        replace(settings, send_lease_seconds=lease), batch_id, n, tag, "--send-delay", "0.001"
    )
    # Half-way through the third chunk of 500: two chunks confirmed, one claimed and half sent.
    wait_until(lambda: queue_depth(r) >= 1250, timeout=60, interval=0.005, what="1250 sent")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    at_kill = queue_depth(r)
    sent = sent_values(settings, batch_id)
    confirmed = sum(not v.startswith("claim:") for v in sent.values())
    claimed = len(sent) - confirmed
    assert (confirmed, claimed) == (1000, 500), (confirmed, claimed)
    unconfirmed_sent = at_kill - confirmed
    assert 0 < unconfirmed_sent < claimed

    s = state(settings, batch_id)
    killed_at = time.monotonic()
    wait_until(lambda: not s.live_senders(), timeout=10, what="the dead producer's lease to lapse")
    lapsed = time.monotonic() - killed_at
    report = Producer(settings).submit_batch(rows(n, tag), batch_id=batch_id).report
    queued = queue_depth(r)
    assert (report.jobs_in_flight, report.jobs_taken_over, report.jobs_sent) == (
        confirmed,
        claimed,
        n - confirmed,
    )
    assert queued == n + unconfirmed_sent

    started = time.monotonic()
    node = workers.start(concurrency=2, fake_marker_dir=str(markers))
    results = Producer(settings).batch(batch_id).wait(timeout=150)
    ran = time.monotonic() - started
    assert len(results) == n and {x.status for x in results} == {"succeeded"}
    assert s.progress().succeeded == n
    assert {k: int(v) for k, v in r.hgetall(s.key("counts")).items()} == {"succeeded": n}
    # One synthesis per job, one object per job.
    synthesized = [p.read_text(encoding="utf-8") for p in markers.iterdir()]
    assert len(synthesized) == n and len(set(synthesized)) == n
    keys = {x.key for x in results}
    assert len(keys) == n
    store = AudioStore.from_settings(settings)
    listed: set[str] = set()
    for page in store._client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix="audio/"
    ):
        listed.update(o["Key"] for o in page.get("Contents", []))
    assert keys <= listed

    def errors(reason: str) -> float:
        return sum(
            value
            for labels, value in pushgateway_samples(settings.pushgateway_url, "tts_errors_total")
            if labels.get("worker") == node.hostname and labels.get("reason") == reason
        )

    def tasks() -> float:
        return sum(
            value
            for labels, value in pushgateway_samples(settings.pushgateway_url, "tts_tasks_total")
            if labels.get("worker") == node.hostname
        )

    # Each duplicate sits in the queue hundreds of messages behind its original (the queue is
    # FIFO), so it is taken when the original is recorded: every one of them is dropped.
    wait_until(
        lambda: tasks() == n and errors("duplicate_message") == unconfirmed_sent,
        timeout=60,
        what=f"{n} tasks and {unconfirmed_sent} duplicates counted on the Pushgateway",
    )
    duplicates, lost = errors("duplicate_message"), errors("worker_lost")
    print(
        f"\n[killed producer] {n} rows; SIGKILL with {at_kill} messages sent ({confirmed} "
        f"confirmed, {claimed} claimed, {unconfirmed_sent} of them sent unconfirmed); lease "
        f"lapsed {lapsed:.1f} s later; resubmit: {report.jobs_in_flight} in flight, "
        f"{report.jobs_taken_over} taken over, {report.jobs_sent} sent -> {queued} messages; "
        f"ran in {ran:.1f} s: {n}/{n} succeeded, {len(synthesized)} syntheses, {len(keys)} "
        f"objects; tts_errors_total duplicate_message = {duplicates:.0f}, "
        f"worker_lost = {lost:.0f}"
    )
    assert lost == 0
    assert duplicates == unconfirmed_sent
