"""Hostile input (tests/support/hostile_corpus.py), sent through the producer and straight onto the
queue.

Producer: every bad row or file is refused with an error naming the row and field, and
nothing reaches Redis. Worker: every bad message fails permanently with a reason from the
fixed set, counted in tts_errors_total{reason} (messages that fail before task code runs are
counted by the Celery parent), and the same pool process then runs the next good job.
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import soundfile as sf
from celery import Celery

from core.batch_state import BatchState
from core.contract import TASK_NAME, parse_message
from core.delivery import QUEUE
from core.errors import ERROR_REASONS, InvalidBatch
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from producer.sender import client_app
from tests.support.helpers import pushgateway_samples, queue_depth, queued_raw, run_cli, wait_until
from tests.support.hostile_corpus import (
    ACCEPTED,
    ACCEPTED_MESSAGE_ONLY,
    BAD_FILES,
    BAD_ROWS,
    GOOD_FILES,
    GOOD_ROW,
    Bad,
    BadFile,
    apply,
    capture_envelope,
    good_message,
    raw_variants,
    worker_only_messages,
)

pytestmark = pytest.mark.integration

GOOD1 = {"id": "good1", "text": "Platform one.", "speaker": "英文女"}
GOOD3 = {"id": "good3", "text": "Platform three.", "speaker": "英文男"}


def assert_nothing_enqueued(settings: Settings) -> None:
    r = redis.Redis.from_url(settings.broker_url)
    assert queue_depth(r) == 0
    # Not even a batch record: the database is as empty as the test found it.
    assert r.dbsize() == 0, sorted(r.scan_iter(count=1000))[:10]


def test_the_corpus_is_big_enough() -> None:
    assert len(BAD_ROWS) + len(BAD_FILES) >= 40
    assert {case.reason for case in BAD_ROWS} <= set(ERROR_REASONS)
    assert len({case.name for case in BAD_ROWS}) == len(BAD_ROWS)


@pytest.mark.parametrize("value", list(ACCEPTED_MESSAGE_ONLY), ids=str)
def test_a_hostile_enqueued_at_is_ignored(value: str) -> None:
    # Neither a crash (float(10**400) overflows) nor a NaN in the queue-wait histogram's sum.
    message = apply(good_message(job_id="j", batch_id="b"), ACCEPTED_MESSAGE_ONLY[value])
    parsed = parse_message(message, speakers=("英文女",), max_chars=500)
    assert parsed.enqueued_at is None


# ---- producer -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_ROWS, ids=lambda c: c.name)
def test_producer_refuses_a_bad_row(settings: Settings, case: Bad, tmp_path: Path) -> None:
    producer = Producer(settings)
    with pytest.raises(InvalidBatch) as info:
        producer.submit_batch([GOOD1, case.row(), GOOD3], batch_id="hostile")
    message = str(info.value)
    assert f"row 2, field '{case.field}'" in message, message
    assert "1 of 3 rows are invalid, nothing enqueued" in message
    assert [e.reason for e in info.value.errors] == [case.reason]
    # The error quotes the bad value shortly, never 1 MB of it.
    assert len(message) < 1000
    assert_nothing_enqueued(settings)

    # The same row in a JSONL file: named by its line.
    try:
        line = json.dumps(case.row())
    except ValueError:
        return  # a 5000-digit int has no JSON text in Python; the file case covers it
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join([json.dumps(GOOD1), line, json.dumps(GOOD3)]) + "\n")
    with pytest.raises(InvalidBatch) as info:
        producer.submit_file(jobs, batch_id="hostile")
    assert f"row 2, field '{case.field}'" in str(info.value), str(info.value)
    assert_nothing_enqueued(settings)


@pytest.mark.parametrize("case", BAD_FILES, ids=lambda c: c.name)
def test_producer_refuses_a_bad_file(settings: Settings, case: BadFile, tmp_path: Path) -> None:
    path = tmp_path / f"jobs{case.suffix}"
    path.write_bytes(case.content)
    with pytest.raises(InvalidBatch) as info:
        Producer(settings).submit_file(path, batch_id="hostile")
    assert case.expect in str(info.value), str(info.value)
    assert len(str(info.value)) < 2000
    assert_nothing_enqueued(settings)


def test_cli_refuses_bad_files_with_exit_code_2(settings: Settings, tmp_path: Path) -> None:
    for case in BAD_FILES:
        path = tmp_path / f"{case.name}{case.suffix}"
        path.write_bytes(case.content)
        done = run_cli(settings, "submit", str(path))
        assert done.returncode == 2, (case.name, done.stderr[-2000:])
        assert case.expect in done.stderr, (case.name, done.stderr[-2000:])
        assert "Traceback" not in done.stderr, case.name
        assert_nothing_enqueued(settings)
    print(f"CLI refused {len(BAD_FILES)} bad files with exit code 2, nothing enqueued")


@pytest.mark.parametrize("name,content,suffix,accepted", GOOD_FILES, ids=lambda v: str(v)[:20])
def test_producer_accepts_odd_but_valid_files(
    settings: Settings, name: str, content: bytes, suffix: str, accepted: int, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(content)
    batch = Producer(settings).submit_file(path, batch_id="odd")
    assert (batch.report.rows, batch.report.rejected_count) == (accepted, 0)
    assert batch.progress().total == accepted
    assert queue_depth(redis.Redis.from_url(settings.broker_url)) == batch.report.jobs_sent


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    r = redis.Redis.from_url(settings.broker_url)
    out = []
    for raw in queued_raw(r):
        body = base64.b64decode(json.loads(raw)["body"])
        out.append(json.loads(body)[0][0])
    return out


# What a job message may hold (core.contract.build_message).
MESSAGE_FIELDS = {
    *("v", "job_id", "batch_id", "row_id", "text", "speaker", "lang", "format", "enqueued_at"),
    "send_id",
}


def test_producer_accepts_markup_and_unknown_fields_as_plain_text(settings: Settings) -> None:
    rows = [apply({**GOOD_ROW, "id": name}, changes) for name, changes in ACCEPTED.items()]
    batch = Producer(settings).submit_batch(rows, batch_id="accepted")
    assert batch.report.rejected_count == 0 and batch.progress().total == len(rows)
    texts = {m["text"] for m in queued_messages(settings)}
    # Markup goes on as text; what cannot be spoken (controls, lone surrogates) is dropped;
    # unknown fields never reach the message.
    assert "<speak>Hello <break time='20s'/> world</speak>" in texts
    assert "Mind the gap" in texts
    assert not any(ch in text for text in texts for ch in "\x00\x07\x1b\ud800")
    assert all(set(m) <= MESSAGE_FIELDS for m in queued_messages(settings))


# ---- worker ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One message put on the queue by the test, and what must become of it."""

    name: str
    task_id: str
    reason: str | None  # None: must succeed
    job_id: str | None = None  # set when the failure (or success) is recorded in a batch
    batch_id: str = ""
    field: str | None = None
    pre_task: bool = False  # dropped by the Celery parent before any task code


def errors_of(url: str, worker: str) -> Counter[str]:
    """tts_errors_total by reason in the worker node's group."""
    out: Counter[str] = Counter()
    for labels, value in pushgateway_samples(url, "tts_errors_total"):
        if labels.get("worker") == worker and value:
            out[labels["reason"]] += int(value)
    return out


def tasks_of(url: str, worker: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in pushgateway_samples(url, "tts_tasks_total"):
        if labels.get("worker") == worker:
            out[labels["status"]] += int(value)
    return out


def test_worker_fails_hostile_messages_and_the_same_process_goes_on(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(settings.broker_url)
    app = client_app(settings)
    tripwire = tmp_path / "pickle-was-loaded"
    raws = raw_variants(capture_envelope(settings), tripwire=tripwire)
    # One pool process: every job below runs in it, in queue order.
    node = workers.start(concurrency=1)
    sent: list[Sent] = []
    goods: list[str] = []
    run = uuid.uuid4().hex[:8]

    def send(args: list[Any], kwargs: dict[str, Any] | None = None) -> str:
        task_id = str(uuid.uuid4())
        app.send_task(TASK_NAME, args=args, kwargs=kwargs or {}, task_id=task_id, queue=QUEUE)
        return task_id

    def then_a_good_job() -> None:
        job_id = f"good-{len(goods)}"
        text = f"Gate {run} {len(goods)} is open."
        send([good_message(job_id=job_id, batch_id="hostile-good", text=text)])
        goods.append(job_id)

    for i, case in enumerate(c for c in BAD_ROWS if c.worker):
        message = case.message(job_id=f"row-{i}", batch_id="hostile")
        recorded = case.field != "id"
        sent.append(
            Sent(
                case.name,
                send([message]),
                case.reason,
                job_id=message["job_id"] if recorded else None,
                batch_id="hostile",
                field=case.worker_field,
            )
        )
        then_a_good_job()
    for bad in worker_only_messages("hostile"):
        task_id = send(bad.args, bad.kwargs)
        job_id = bad.args[0]["job_id"] if bad.recorded else None
        sent.append(Sent(bad.name, task_id, "bad_message", job_id=job_id, batch_id="hostile"))
        then_a_good_job()
    for name, changes in {**ACCEPTED, **ACCEPTED_MESSAGE_ONLY}.items():
        base = good_message(job_id=f"ok-{name}", batch_id="hostile-ok", text=f"{run} {name}")
        message = apply(base, changes)
        sent.append(
            Sent(name, send([message]), None, job_id=message["job_id"], batch_id="hostile-ok")
        )
        then_a_good_job()
    for name, envelope in raws.items():
        r.lpush(QUEUE, json.dumps(envelope))
        sent.append(Sent(name, envelope["headers"]["id"], "bad_message", pre_task=True))
        then_a_good_job()

    good_batch = BatchState(r, "hostile-good", ttl_seconds=3600)
    wait_until(
        lambda: all(good_batch.result(j) for j in goods),
        timeout=180,
        interval=0.5,
        what=f"{len(goods)} good jobs between the hostile ones",
    )
    pids = {good_batch.result(j)["pid"] for j in goods}  # type: ignore[index]
    assert len(pids) == 1, pids
    (pid,) = pids
    assert all(good_batch.result(j)["status"] in ("succeeded", "cached") for j in goods)  # type: ignore[index]

    # Each hostile message: a permanent failure with its reason, in that same process.
    # The producer's client has no result backend; read Celery's results with one.
    results = Celery("hostile-results", backend=settings.results_url)
    for item in sent:
        if item.pre_task:
            continue
        if item.job_id is None:

            def failed(task_id: str | None = item.task_id) -> bool:
                return bool(results.AsyncResult(task_id).state == "FAILURE")

            state = wait_until(
                failed,
                timeout=30,
                what=f"{item.name} failed",
            )
            assert state
            continue
        record = BatchState(r, item.batch_id, ttl_seconds=3600).result(item.job_id)
        assert record is not None, item.name
        assert record["pid"] == pid, item.name
        if item.reason is None:
            assert record["status"] in ("succeeded", "cached"), (item.name, record)
            continue
        assert (record["status"], record["reason"]) == ("failed", item.reason), (item.name, record)
        assert record["attempts"] == 1, item.name
        if item.field:
            assert f"field '{item.field}'" in record["error"], (item.name, record["error"])
    assert not tripwire.exists(), "a pickled body was loaded"

    # Counted in the node's one group: task-level reasons by the pool process, pre-task drops
    # by the parent.
    expected_task = Counter(i.reason for i in sent if i.reason and not i.pre_task)
    pre_task = sum(1 for i in sent if i.pre_task)
    expected_errors = expected_task + Counter(bad_message=pre_task)
    url = settings.pushgateway_url
    try:
        wait_until(
            lambda: errors_of(url, node.hostname) == expected_errors,
            timeout=30,
            what="hostile errors counted",
        )
    except AssertionError:
        raise AssertionError(
            f"expected {dict(expected_errors)}; got {errors_of(url, node.hostname)}"
        ) from None
    # Each job's outcome counted once (the last pushes may still be on their way).
    accepted = sum(1 for i in sent if i.reason is None)
    expected_outcomes = (sum(expected_task.values()), len(goods) + accepted)

    def outcomes() -> tuple[int, int]:
        tasks = tasks_of(url, node.hostname)
        return tasks["failed"], tasks["succeeded"] + tasks["cached"]

    try:
        wait_until(lambda: outcomes() == expected_outcomes, timeout=30, what="outcomes")
    except AssertionError:
        raise AssertionError(f"(failed, ok) {outcomes()} != {expected_outcomes}") from None

    log = node.log_text()
    for sign in ("Unrecoverable error", "WorkerLostError", "exited with"):
        assert sign not in log, sign
    os.kill(node.pid, 0)  # the node is still alive
    print(
        f"{len(sent)} hostile messages ({pre_task} dropped before task code), "
        f"{len(goods)} good jobs, all in pool process {pid}; errors {dict(expected_task)}"
    )


def test_markup_is_spoken_as_text_with_espeak(settings: Settings, workers: Any) -> None:
    workers.start(engine="espeak", concurrency=1)
    run = uuid.uuid4().hex[:6]
    rows = [
        {"id": "plain", "text": f"Hello world {run}", "speaker": "英文女"},
        # Were this SSML, the break alone would last 20 s.
        {
            "id": "ssml",
            "text": f"<speak>Hello <break time='20s'/> world {run}</speak>",
            "speaker": "英文女",
        },
        {"id": "xml", "text": ACCEPTED["xml_entity"]["text"] + run, "speaker": "英文女"},
        {"id": "phonemes", "text": f"[[h@l'oU]] hello {run}", "speaker": "英文女"},
    ]
    results = {r.row_id: r for r in Producer(settings).submit_batch(rows).wait(timeout=120)}
    assert all(r.status == "succeeded" for r in results.values()), results
    store = AudioStore.from_settings(settings)
    seconds = {}
    for row_id, result in results.items():
        assert result.key is not None
        samples, rate = sf.read(io.BytesIO(store.get(result.key)), dtype="float32")
        seconds[row_id] = len(samples) / rate
        assert float(abs(samples).max()) > 0.05, f"{row_id} is silent"
    # The tags are read out (or skipped), never obeyed: no 20 s pause.
    assert seconds["ssml"] < 15, seconds
    assert seconds["ssml"] > seconds["plain"], seconds
    print("espeak durations:", {k: round(v, 2) for k, v in seconds.items()})


def test_a_list_item_that_is_not_an_envelope_does_not_stop_the_worker(
    settings: Settings, workers: Any
) -> None:
    node = workers.start(concurrency=1)
    before = Producer(settings).submit("Before the garbage.", speaker="英文女", job_id="before")
    first = before.wait(timeout=30)
    garbage = [b"\xff not a kombu envelope {", b"42", b'{"a": 1}', b"[]", b'"text"', b"null"]
    broker = redis.Redis.from_url(settings.broker_url)
    for item in garbage:
        broker.lpush(QUEUE, item)
    after = Producer(settings).submit("After the garbage.", speaker="英文女", job_id="garbage")
    try:
        result = after.wait(timeout=30)
    finally:
        print(node.log_text()[-600:])
    assert result.ok
    # The same node and pool process carried on; the parent counted each dropped item.
    record = Producer(settings).batch("job-garbage")._state.result(result.job_id)
    first_record = Producer(settings).batch("job-before")._state.result(first.job_id)
    assert record is not None and first_record is not None
    assert record["pid"] == first_record["pid"]
    assert "Unrecoverable error" not in node.log_text()
    dropped = wait_until(
        lambda: (
            sum(
                value
                for labels, value in pushgateway_samples(
                    settings.pushgateway_url, "tts_errors_total"
                )
                if labels.get("worker") == node.hostname and labels.get("reason") == "bad_message"
            )
            >= len(garbage)
        ),
        timeout=30,
        what="every dropped item counted",
    )
    assert dropped
