"""Security: JSON only (pickle refused and counted), object keys from hashes only, Flower
behind basic auth, credentials never in logs, results, metrics or Flower's task data, and
metric labels from fixed sets only."""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

import celeryconfig
from core.contract import FORMATS, TASK_STATUSES, object_key
from core.delivery import QUEUE
from core.errors import ERROR_REASONS, InvalidBatch, InvalidJob
from core.manifest import manifest_key
from core.settings import Settings, mask_url
from core.storage import AudioStore
from devstack.stack import LocalStack
from producer.api import Producer
from producer.sender import client_app
from tests.support.helpers import make_settings, pushgateway_samples, wait_until
from tests.support.hostile_corpus import capture_envelope, good_message, raw_variants
from worker.master import FROM_MASTER, FROM_SYNTHESIS
from worker.push import STORAGE_OPS

pytestmark = pytest.mark.integration

KEY_PATTERN = re.compile(r"audio/[0-9a-f]{2}/[0-9a-f]{64}\.(wav|flac|ogg|opus|mp3)")
MASTER_PATTERN = re.compile(r"masters/[0-9a-f]{2}/[0-9a-f]{64}\.flac")
# Every label the Pushgateway may hold for our groups, and the closed set of each value.
ALLOWED_LABELS = {"job", "worker", "instance", "reason", "status", "op", "engine", "model",
                  "version", "le", "quantile", "format", "source"}  # fmt: skip


def test_json_only_in_the_celery_configuration() -> None:
    assert celeryconfig.task_serializer == "json"
    assert celeryconfig.result_serializer == "json"
    assert celeryconfig.accept_content == ["json"]
    assert celeryconfig.result_accept_content == ["json"]
    app = client_app(make_settings())
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]


def test_a_pickled_task_is_refused_counted_and_never_loaded(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(settings.broker_url)
    tripwire = tmp_path / "unpickled"
    pickled = raw_variants(capture_envelope(settings), tripwire=tripwire)["body_pickle"]
    assert pickled["content-type"] == "application/x-python-serialize"
    node = workers.start(concurrency=1)
    r.lpush(QUEUE, json.dumps(pickled))
    after = Producer(settings).submit("After the pickle.", speaker="英文女", job_id="after")
    assert after.wait(timeout=60).ok
    wait_until(
        lambda: any(
            labels.get("worker") == node.hostname
            and labels.get("reason") == "bad_message"
            and value == 1
            for labels, value in pushgateway_samples(settings.pushgateway_url, "tts_errors_total")
        ),
        timeout=30,
        what="the pickled message counted as bad_message by the parent",
    )
    assert not tripwire.exists()
    assert "ContentDisallowed" in node.log_text() or "disallowed" in node.log_text().lower()
    # Results are stored as JSON too.
    metas = list(r.scan_iter(match="celery-task-meta-*"))
    assert metas
    for key in metas:
        meta = json.loads(r.get(key) or b"")
        assert meta["status"] in ("SUCCESS", "FAILURE")


def test_object_keys_come_from_hashes_only(settings: Settings, workers: Any) -> None:
    bucket = f"tts-keys-{uuid.uuid4().hex[:8]}"
    workers.start(concurrency=1, s3_bucket=bucket)
    settings = Settings.from_env({**settings.to_env(), "TTS_S3_BUCKET": bucket})
    producer = Producer(settings)
    texts = ["../../etc/passwd please", "a/b\\c %2e%2e/ now", "s3://evil/key?x=1 go", "名前 42"]
    rows = [{"id": f"k{i}", "text": t, "speaker": "英文女"} for i, t in enumerate(texts)]
    batch = producer.submit_batch(rows)
    results = batch.wait(timeout=60)
    assert all(res.ok for res in results)
    store = AudioStore.from_settings(settings)
    listed = [
        item["Key"]
        for page in store._client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
    ]
    # Beside the audio, the speech masters (named by the synthesis key's hash) and the batch's
    # manifest object (written as the batch ends: maybe not yet), named by the batch id, which
    # is validated ([A-Za-z0-9._-]), never by a text.
    masters = [key for key in listed if key.startswith("masters/")]
    audio = [key for key in listed if key != manifest_key(batch.batch_id) and key not in masters]
    assert all(res.key is not None for res in results)
    assert sorted(audio) == sorted(str(res.key) for res in results)
    assert all(KEY_PATTERN.fullmatch(key) for key in audio), listed
    assert len(masters) == len(texts), listed  # one synthesis each
    assert all(MASTER_PATTERN.fullmatch(key) for key in masters), listed
    assert manifest_key("..") == "batches/%2E%2E/manifest.json"
    # Ids that could name a path are refused before they get anywhere.
    for bad in ("../x", "a/b", "..\\x", "", "x" * 129):
        with pytest.raises(InvalidBatch):
            producer.submit_batch(rows[:1], batch_id=bad)
        with pytest.raises(InvalidJob):
            producer.batch(bad)
    with pytest.raises(ValueError):
        object_key("../" + "0" * 61, "wav")
    with pytest.raises(ValueError):
        object_key("0" * 64, "../wav")


def http(url: str, *, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def redis_dump(r: redis.Redis) -> bytes:
    """Every key and value in the database, as one blob to search."""
    out = []
    # A client without decode_responses: every reply is bytes (redis-py's types say bytes | str).
    for key in r.scan_iter(count=1000):
        kind = _b(r.type(key)).decode()
        values: list[bytes]
        if kind == "string":
            values = [_b(r.get(key) or b"")]
        elif kind == "hash":
            values = [_b(k) + b"=" + _b(v) for k, v in r.hgetall(key).items()]
        elif kind == "list":
            values = [_b(v) for v in r.lrange(key, 0, -1)]
        elif kind == "set":
            values = [_b(v) for v in r.smembers(key)]
        elif kind == "zset":
            values = [_b(v) for v in r.zrange(key, 0, -1)]
        else:
            values = []
        out.append(_b(key) + b" " + b" ".join(values))
    return b"\n".join(out)


def _b(value: object) -> bytes:
    assert isinstance(value, bytes), value
    return value


def test_credentials_never_in_logs_results_metrics_or_flower(
    stack: LocalStack, settings: Settings, workers: Any
) -> None:
    stack.up(["flower"])
    creds = json.loads(stack.layout.credentials_file.read_text())
    flower = f"http://{stack.layout.host}:{stack.layout.ports.flower}"
    auth = (creds["flower_user"], creds["flower_password"])
    secrets = {
        "S3 secret key": settings.s3_secret_key,
        "Flower password": creds["flower_password"],
    }
    assert all(len(s) >= 16 for s in secrets.values())

    # Flower: basic auth on every page and API.
    for path in ("/", "/api/tasks", "/api/workers", "/tasks"):
        assert http(flower + path)[0] == 401, path
        assert http(flower + path, auth=(auth[0], "wrong"))[0] == 401, path
    assert http(flower + "/api/workers", auth=auth)[0] == 200

    node = workers.start(concurrency=2)
    producer = Producer(settings)
    run = uuid.uuid4().hex[:8]
    rows = [
        {"id": f"s{i}", "text": f"Secret-free {run} {i}", "speaker": "英文女"} for i in range(6)
    ]
    batch = producer.submit_batch(rows, batch_id=f"sec-{run}")
    # A failure too: its record and error text are checked like the successes.
    client_app(settings).send_task(
        "tts.synthesize",
        args=[{**good_message(job_id="bad", batch_id=f"sec-{run}"), "speaker": "robot"}],
        task_id=str(uuid.uuid4()),
    )
    assert all(res.ok for res in batch.wait(timeout=60))
    wait_until(
        lambda: len(json.loads(http(flower + "/api/tasks", auth=auth)[1])) >= 7,
        timeout=30,
        what="Flower to see the tasks",
    )
    flower_tasks = http(flower + "/api/tasks", auth=auth)[1]
    assert run in flower_tasks  # Flower does show the task args (text), so the check is real

    places = {
        "worker log": node.log_text(),
        "stack logs": "\n".join(
            p.read_text(errors="replace") for p in stack.layout.dirs.logs.glob("*.log")
        ),
        "Redis (results, batch state, queue)": redis_dump(
            redis.Redis.from_url(settings.broker_url)
        ).decode(errors="replace"),
        "Pushgateway /metrics": http(f"{settings.pushgateway_url}/metrics")[1],
        "Flower /api/tasks": flower_tasks,
        "Flower /api/workers": http(flower + "/api/workers", auth=auth)[1],
        "worker argv": Path(f"/proc/{node.pid}/cmdline").read_bytes().decode(errors="replace"),
    }
    flower_pid = stack.status()["flower"].pid
    places["Flower argv"] = Path(f"/proc/{flower_pid}/cmdline").read_text(errors="replace")
    for place, text in places.items():
        for name, secret in secrets.items():
            assert secret not in text, f"the {name} appears in the {place}"
    print(f"searched {', '.join(places)} for {', '.join(secrets)}: not found")


def test_settings_repr_hides_passwords() -> None:
    settings = Settings.from_env(
        {
            "TTS_BROKER_URL": "rediss://:hunter2-redis-password@redis.example:6380/0",
            "TTS_S3_ACCESS_KEY": "AKIAEXAMPLE",
            "TTS_S3_SECRET_KEY": "s3-secret-value-example",
        }
    )
    assert settings.broker_url.startswith("rediss://")
    text = repr(settings)
    for secret in ("hunter2-redis-password", "s3-secret-value-example"):
        assert secret not in text
    assert "rediss://:***@redis.example:6380/0" in text


@pytest.mark.parametrize(
    "url,shown",
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h/1", "rediss://user:***@h/1"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("http://127.0.0.1:9091", "http://127.0.0.1:9091"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_metric_labels_are_bounded(settings: Settings, workers: Any) -> None:
    node = workers.start(concurrency=2)
    run = uuid.uuid4().hex[:8]
    batch_id = f"labels-{run}"
    rows = [
        {"id": f"lab{i}", "text": f"Label check {run} {i}", "speaker": "英文女"} for i in range(8)
    ]
    wide = Settings.from_env({**settings.to_env(), "TTS_SPEAKERS": "英文女,robot"})
    rows.append({"id": "lab-robot", "text": f"Robot {run}", "speaker": "robot"})
    batch = Producer(wide).submit_batch(rows, batch_id=batch_id)
    batch.wait(timeout=60)
    job_ids = {job_id for _, job_id, _ in batch._state.iter_rows()}
    wait_until(
        lambda: (
            sum(
                v
                for labels, v in pushgateway_samples(settings.pushgateway_url, "tts_tasks_total")
                if labels.get("worker") == node.hostname
            )
            == 9
        ),
        timeout=30,
        what="9 jobs counted",
    )
    with urllib.request.urlopen(f"{settings.pushgateway_url}/metrics", timeout=10) as response:
        from prometheus_client.parser import text_string_to_metric_families

        families = list(text_string_to_metric_families(response.read().decode()))
    forbidden = {batch_id, run, *job_ids, *(row["id"] for row in rows)}
    closed = {
        "reason": set(ERROR_REASONS),
        "status": set(TASK_STATUSES),
        "op": set(STORAGE_OPS),
        "format": set(FORMATS),
        "source": {FROM_SYNTHESIS, FROM_MASTER},
    }
    checked = 0
    for family in families:
        for sample in family.samples:
            if sample.labels.get("job") != "tts_worker":
                continue
            checked += 1
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            for label, value in sample.labels.items():
                assert not any(bad in value for bad in forbidden), sample
                if label in closed:
                    assert value in closed[label], sample
            # One group per node: the worker label is a node name, never a pid.
            assert "@" in sample.labels["worker"], sample
    assert checked > 50
