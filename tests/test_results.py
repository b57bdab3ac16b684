"""Results on real services: the manifest (every row, every status, the batch id on each line),
the manifest object workers write to S3 when a batch ends, `fetch` that resumes (size + MD5),
presigned URLs fetched over HTTP, and the Python API's download() and presigned_url()."""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from core.batch_state import BatchState
from core.errors import ObjectMissing
from core.manifest import manifest_key
from core.settings import Settings
from core.storage import AudioStore
from producer.api import Producer
from tests.support.helpers import run_cli, wait_until
from worker.batch_manifest import publish_if_finished
from worker.push import WorkerMetrics

pytestmark = pytest.mark.integration

SPEAKER = "英文女"


def _fresh(n: int) -> list[dict[str, Any]]:
    tag = uuid.uuid4().hex[:8]
    return [
        {"id": f"r{i}", "text": f"Track {tag} {i} is closed.", "speaker": SPEAKER} for i in range(n)
    ]


def _manifest_object(store: AudioStore, batch_id: str) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = json.loads(store.get(manifest_key(batch_id)))
    except ObjectMissing:
        return None
    return document


def _delete(store: AudioStore, key: str) -> None:
    store._client.delete_object(Bucket=store.bucket, Key=key)
    assert store.head(key) is None


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _http_get(url: str) -> bytes:
    # No credentials, no boto3: what a browser or another service would do with the URL.
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body


# -- the manifest ------------------------------------------------------------------------------


def test_manifest_lines_and_object_for_a_batch_nobody_waits_for(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=1)
    store = AudioStore.from_settings(settings)
    # A text synthesized before: its row in the batch below is served as cached.
    seen_text = f"Seen {uuid.uuid4().hex[:8]} before."
    Producer(settings).submit(seen_text, speaker=SPEAKER, job_id="seed").wait(timeout=60)

    # The producer accepts 'robot'; the worker's engine does not have it: that row fails.
    wide = Settings.from_env({**settings.to_env(), "TTS_SPEAKERS": f"{SPEAKER},robot"})
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(
        "id,text,speaker\n"
        f"new,Fresh {uuid.uuid4().hex[:8]} text.,{SPEAKER}\n"
        f"old,{seen_text},{SPEAKER}\n"
        "bad,hello,robot\n"
        f"empty,,{SPEAKER}\n",
        encoding="utf-8",
    )
    local = tmp_path / "submitted.jsonl"
    # Unique: manifest objects outlive the per-test Redis flush (the bucket is the session's).
    batch_id = f"mixed-{uuid.uuid4().hex[:8]}"
    submitted = run_cli(
        wide,
        "submit",
        str(jobs),
        "--batch-id",
        batch_id,
        "--skip-invalid",
        "--manifest",
        str(local),
    )
    assert submitted.returncode == 1, submitted.stderr  # a row was rejected
    assert "Traceback" not in submitted.stderr
    # Written at once, without --wait: one line per row, each naming the batch; rows the
    # workers have not finished yet say pending, the rejected row says why.
    lines = _lines(local.read_text(encoding="utf-8"))
    assert {line["batch_id"] for line in lines} == {batch_id}
    by_id = {line["id"]: line for line in lines if line["id"] is not None}
    assert set(by_id) == {"new", "old", "bad"}
    assert {by_id[i]["status"] for i in by_id} <= {"pending", "succeeded", "cached", "failed"}
    rejected = [line for line in lines if line["status"] == "rejected"]
    assert len(rejected) == 1 and rejected[0]["field"] == "text" and rejected[0]["line"] == 5

    # Nobody waits: the worker that records the last outcome writes the manifest object.
    document = wait_until(
        lambda: _manifest_object(store, batch_id), timeout=60, what="the manifest object"
    )
    rows = {row["id"]: row for row in document["rows"]}
    assert document["batch_id"] == batch_id
    assert {row["batch_id"] for row in document["rows"]} == {batch_id}
    assert {i: rows[i]["status"] for i in ("new", "old", "bad")} == {
        "new": "succeeded",
        "old": "cached",
        "bad": "failed",
    }
    assert rows["bad"]["reason"] == "unknown_speaker"
    assert rows["new"]["uri"].startswith("s3://") and "text" not in rows["new"]
    assert document["counts"]["succeeded"] == document["counts"]["cached"] == 1
    assert document["counts"]["rejected"] == 1  # the refused row is in the object too
    assert [row["line"] for row in document["rows"] if row["status"] == "rejected"] == [5]
    assert document["total"] == len(document["rows"])

    # `tts-batch manifest` writes the same lines at any time; exit 1 as a row failed.
    later = tmp_path / "later.jsonl"
    written = run_cli(settings, "manifest", batch_id, "--out", str(later))
    assert written.returncode == 1, written.stderr
    assert _lines(later.read_text(encoding="utf-8")) == document["rows"]

    # A repair reopens the batch; its last outcome writes the manifest object again.
    _delete(store, manifest_key(batch_id))
    _delete(store, str(rows["new"]["key"]))
    repaired = run_cli(settings, "verify", batch_id, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    again = wait_until(
        lambda: _manifest_object(store, batch_id), timeout=60, what="the rewritten manifest"
    )
    assert {row["id"]: row["status"] for row in again["rows"]}["new"] == "succeeded"
    assert store.head(str(rows["new"]["key"])) is not None


def test_manifest_of_a_batch_with_no_worker_is_all_pending(
    settings: Settings, tmp_path: Path
) -> None:
    batch_id = f"idle-{uuid.uuid4().hex[:8]}"
    Producer(settings).submit_batch(_fresh(3), batch_id=batch_id)
    printed = run_cli(settings, "manifest", batch_id)
    assert printed.returncode == 1  # rows pending
    lines = _lines(printed.stdout)
    assert [(line["batch_id"], line["id"], line["status"]) for line in lines] == [
        (batch_id, "r0", "pending"),
        (batch_id, "r1", "pending"),
        (batch_id, "r2", "pending"),
    ]
    assert "3 of 3 rows still pending" in printed.stderr
    # No object: the batch has not ended; --upload writes one now, on the operator's word.
    store = AudioStore.from_settings(settings)
    assert _manifest_object(store, batch_id) is None
    uploaded = run_cli(
        settings, "manifest", batch_id, "--out", str(tmp_path / "m.jsonl"), "--upload"
    )
    assert f"s3://{settings.s3_bucket}/batches/{batch_id}/manifest.json" in uploaded.stderr
    document = _manifest_object(store, batch_id)
    assert document is not None and document["counts"] == {"pending": 3}
    assert document["rows"] == _lines((tmp_path / "m.jsonl").read_text(encoding="utf-8"))


def test_a_manifest_that_cannot_be_written_never_fails_the_caller(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.broker_url)
    state = BatchState(client, f"ended-{uuid.uuid4().hex[:8]}", ttl_seconds=600)
    state.create()
    state.add_rows([("a", "j1")])
    state.record("j1", {"job_id": "j1", "status": "succeeded", "key": "audio/00/x.wav"})
    with socket.socket() as probe:  # a port nothing listens on: S3 unreachable
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    unreachable = replace(settings, s3_endpoint=f"http://127.0.0.1:{port}")

    @dataclass
    class Ctx:
        store: AudioStore
        metrics: WorkerMetrics

    metrics = WorkerMetrics(engine="fake")
    ctx = Ctx(AudioStore.from_settings(unreachable), metrics)
    assert publish_if_finished(ctx, state) is False
    assert metrics.registry.get_sample_value("tts_manifest_write_failures_total") == 1.0
    # The same batch with a reachable bucket: written.
    ok = Ctx(AudioStore.from_settings(settings), metrics)
    assert publish_if_finished(ok, state) is True
    assert _manifest_object(ok.store, state.batch_id) is not None


# -- fetch ---------------------------------------------------------------------------------------


def _fetch_json(settings: Settings, batch_id: str, folder: Path) -> dict[str, Any]:
    done = run_cli(settings, "fetch", batch_id, "--to", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def test_fetch_resumes_and_fetches_changed_files_again(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=2)
    batch = Producer(settings).submit_batch(_fresh(4), batch_id="resume")
    results = {r.row_id: r for r in batch.wait(timeout=60)}
    store = AudioStore.from_settings(settings)
    out = tmp_path / "audio"

    first = _fetch_json(settings, "resume", out)
    assert (first["downloaded"], first["skipped"], first["files"]) == (4, 0, 4)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(stamps) == ["r0.wav", "r1.wav", "r2.wav", "r3.wav"]

    second = _fetch_json(settings, "resume", out)
    assert (second["downloaded"], second["skipped"]) == (0, 4)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # Same size, one byte changed (only the MD5 tells), and a truncated file: fetched again.
    changed = bytearray((out / "r1.wav").read_bytes())
    changed[-1] ^= 0xFF
    (out / "r1.wav").write_bytes(bytes(changed))
    (out / "r2.wav").write_bytes((out / "r2.wav").read_bytes()[:100])
    third = _fetch_json(settings, "resume", out)
    assert (third["downloaded"], third["skipped"]) == (2, 2)
    again = sorted(row["id"] for row in third["rows"] if row["action"] == "downloaded")
    assert again == ["r1", "r2"]
    for row_id, result in results.items():
        assert (out / f"{row_id}.wav").read_bytes() == store.get(str(result.key))

    # Plain output in a pipe: progress as plain lines (no bar frames), a summary on stdout.
    plain = run_cli(settings, "fetch", "resume", "--to", str(out))
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == f"4 files in {out} (0 downloaded, 4 already present)"
    assert "fetch: 4/4 rows (0 downloaded, 4 already present)" in plain.stderr
    assert "\r" not in plain.stderr


def test_presigned_urls_get_the_same_bytes(settings: Settings, workers: Any) -> None:
    workers.start(concurrency=2)
    batch = Producer(settings).submit_batch(_fresh(2), batch_id="signed")
    results = {r.row_id: r for r in batch.wait(timeout=60)}
    store = AudioStore.from_settings(settings)

    as_json = run_cli(settings, "fetch", "signed", "--presign", "300", "--json")
    assert as_json.returncode == 0, as_json.stderr
    lines = _lines(as_json.stdout)
    assert [(line["batch_id"], line["id"]) for line in lines] == [
        ("signed", "r0"),
        ("signed", "r1"),
    ]
    for line in lines:
        assert line["expires_in"] == 300 and "X-Amz-Signature" in line["url"]
        assert _http_get(line["url"]) == store.get(str(results[line["id"]].key))

    plain = run_cli(settings, "fetch", "signed", "--presign", "60")
    assert plain.returncode == 0, plain.stderr
    pairs = [line.split("\t") for line in plain.stdout.splitlines()]
    assert [row_id for row_id, _ in pairs] == ["r0", "r1"]
    assert _http_get(pairs[1][1]) == store.get(str(results["r1"].key))
    assert "2 URLs valid for 60 s" in plain.stderr


def test_python_api_download_and_presigned_url(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    workers.start(concurrency=1)
    batch = Producer(settings).submit_batch(_fresh(1), batch_id="api")
    (result,) = batch.wait(timeout=60)
    expected = batch.store.get(str(result.key))

    path = result.download(tmp_path / "api", store=batch.store)
    assert path == tmp_path / "api" / "r0.wav" and path.read_bytes() == expected
    stamp = path.stat().st_mtime_ns
    assert result.download(tmp_path / "api", store=batch.store) == path
    assert path.stat().st_mtime_ns == stamp  # the same file is kept, not written again

    assert _http_get(result.presigned_url(120, store=batch.store)) == expected


@pytest.mark.parametrize(
    "args", [["--to", "{dir}"], ["--to", "{dir}", "--json"], ["--presign", "60"]]
)
def test_fetch_of_an_unknown_batch_exits_2_and_creates_nothing(
    settings: Settings, tmp_path: Path, args: list[str]
) -> None:
    folder = tmp_path / "never"
    done = run_cli(settings, "fetch", "nosuch", *[a.format(dir=folder) for a in args])
    assert done.returncode == 2
    assert "no batch 'nosuch'" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not folder.exists()


def test_manifest_of_an_unknown_batch_exits_2_and_writes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    out = tmp_path / "m.jsonl"
    done = run_cli(settings, "manifest", "nosuch", "--out", str(out))
    assert done.returncode == 2
    assert "no batch 'nosuch'" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_failure_the_parent_records_last_writes_the_manifest_object(settings: Settings) -> None:
    # The parent records the jobs its pool processes cannot (hard time limit, the reconciler):
    # when such a failure is the batch's last outcome, the parent writes the manifest.
    from worker.parent.outcomes import ParentRecorder

    client = redis.Redis.from_url(settings.broker_url)
    recorder = ParentRecorder(settings, client, WorkerMetrics(engine="fake"), "node-test")
    batch_id = f"parent-{uuid.uuid4().hex[:8]}"
    state = recorder.batch(batch_id)
    state.create()
    state.add_rows([("a", "ja"), ("b", "jb")])
    state.record("ja", {"job_id": "ja", "status": "succeeded", "key": "audio/00/a.wav"})
    store = AudioStore.from_settings(settings)
    assert _manifest_object(store, batch_id) is None  # none before the last outcome

    message = {"job_id": "jb", "batch_id": batch_id, "text": "hello"}
    recorder.fail(message, reason="timeout", error="hard time limit (9 s) exceeded")
    document = _manifest_object(store, batch_id)
    assert document is not None
    assert [(r["batch_id"], r["id"], r["status"], r["reason"]) for r in document["rows"]] == [
        (batch_id, "a", "succeeded", None),
        (batch_id, "b", "failed", "timeout"),
    ]


def test_fetch_draws_a_bar_only_on_a_terminal(
    settings: Settings, workers: Any, tmp_path: Path
) -> None:
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import threading

    workers.start(concurrency=1)
    Producer(settings).submit_batch(_fresh(2), batch_id="bar").wait(timeout=60)
    leader, follower = pty.openpty()
    # A terminal of 80 columns (a fresh pty has 0: tqdm would draw an empty bar).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    drawn: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                return
            if not chunk:
                return
            drawn.append(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "producer.cli", "fetch", "bar", "--to", str(tmp_path / "a")],
            env={**os.environ, **settings.to_env()},
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=120,
            check=False,
        )
    finally:
        os.close(follower)
    reader.join(timeout=10)
    os.close(leader)
    assert done.returncode == 0
    text = b"".join(drawn).decode(errors="replace")
    assert "fetch" in text and "2/2" in text and "\r" in text.replace("\r\n", "")  # tqdm frames
    assert "fetch: 2/2 rows" not in text  # not the plain lines of a pipe


def test_the_manifest_of_a_batch_named_dot_dot_stays_in_its_place(settings: Settings) -> None:
    # '..' is a valid batch id; its manifest key must not read as a path to the parent.
    batch = Producer(settings).submit_batch(_fresh(1), batch_id="..")
    assert batch.upload_manifest() == f"s3://{settings.s3_bucket}/batches/%2E%2E/manifest.json"
    document = _manifest_object(batch.store, "..")
    assert document is not None and document["batch_id"] == ".."
    assert (
        batch.store.head("manifest.json") is None
        and batch.store.head("batches/manifest.json") is None
    )
