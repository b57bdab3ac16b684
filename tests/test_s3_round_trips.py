"""S3 round trips per job, counted at a proxy in front of the real SeaweedFS: a new job makes
two on its rendition (lookup, conditional upload) and two on its master (lookup, conditional
upload), a cached one one (lookup of the rendition; its master is not touched). And the
conditional upload itself, on the real server: a second PUT of a key is refused (412) and leaves
the object as it was.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError

from core.contract import master_key, synthesis_key, validate_spec
from core.settings import COSYVOICE_SFT_SPEAKERS, Settings
from core.storage import AudioStore
from devstack.stack import LocalStack
from producer.api import Producer
from tests.support.helpers import make_settings
from tests.support.s3_proxy import S3Proxy
from worker.engines.fake import FakeSynthesizer
from worker.text.prepare import text_rules

SPEAKER = "英文女"


@pytest.mark.integration
def test_seaweedfs_refuses_a_second_conditional_put_and_keeps_the_first(
    settings: Settings,
) -> None:
    with S3Proxy(settings.s3_endpoint).running() as proxy:
        store = AudioStore.from_settings(replace(settings, s3_endpoint=proxy.url))
        store.ensure_bucket()
        key = f"conditional/{uuid.uuid4().hex}.wav"
        first = store.put(key, b"first writer", fmt="wav", metadata={"writer": "1"})
        second = store.put(key, b"second writer!", fmt="wav", metadata={"writer": "2"})
        statuses = proxy.requests_for(f"/{settings.s3_bucket}/{key}")
        kept, head = store.get(key), store.head(key)
    print(f"\n[conditional PUT on SeaweedFS] requests {statuses}; object {kept!r}")
    assert (first, second) == (True, False)
    assert statuses[:2] == [("PUT", 200), ("PUT", 412)]
    assert kept == b"first writer"
    assert head is not None and head.metadata == {"writer": "1"} and head.size == len(kept)


@pytest.mark.integration
def test_concurrent_conditional_puts_of_one_key_have_one_winner(settings: Settings) -> None:
    writers = 4
    stores = [AudioStore.from_settings(settings) for _ in range(writers)]
    stores[0].ensure_bucket()
    for _ in range(10):
        key = f"conditional/{uuid.uuid4().hex}.wav"
        won = _race(stores, key)
        assert len(won) == 1, won
        assert stores[0].get(key) == bytes(won) * 4096


def _race(stores: list[AudioStore], key: str) -> list[int]:
    """Each store PUTs its own bytes to `key` at the same moment: the writers that won."""
    barrier = threading.Barrier(len(stores))
    won: list[int] = []

    def write(i: int) -> None:
        barrier.wait()
        if stores[i].put(key, bytes([i]) * 4096, fmt="wav", metadata={"writer": str(i)}):
            won.append(i)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won


@pytest.mark.integration
def test_a_new_job_makes_two_s3_requests_and_a_cached_one_one(
    stack: Any, settings: Settings
) -> None:
    name = f"worker-trips{os.getpid()}"
    with S3Proxy(settings.s3_endpoint).running() as proxy:
        node = LocalStack(
            stack.layout,
            base_settings=make_settings(),
            extra_env={"TTS_S3_ENDPOINT": proxy.url},
            ready_timeout=60,
        )
        node.up([name], concurrency=2)
        try:
            producer = Producer(settings)
            token = uuid.uuid4().hex[:8]
            rows = [
                {"id": f"r{i}", "text": f"Round trips {token} number {i}.", "speaker": SPEAKER}
                for i in range(6)
            ]
            new = producer.submit_batch(rows, batch_id=f"trips-new-{token}").wait(timeout=60)
            trips_new = {r.key: proxy.requests_for(f"/{settings.s3_bucket}/{r.key}") for r in new}
            masters = [f"/{settings.s3_bucket}/{master_of(row)}" for row in rows]
            master_trips_new = [proxy.requests_for(path) for path in masters]
            cached = producer.submit_batch(rows, batch_id=f"trips-cached-{token}").wait(timeout=60)
            trips_all = {
                r.key: proxy.requests_for(f"/{settings.s3_bucket}/{r.key}") for r in cached
            }
            master_trips_all = [proxy.requests_for(path) for path in masters]
        finally:
            node.stop(name)
    print(
        f"\n[S3 round trips] new jobs: {sorted(map(len, trips_new.values()))} requests each "
        f"{next(iter(trips_new.values()))}; the same texts again (cached): "
        f"{sorted(len(t) - len(trips_new[k]) for k, t in trips_all.items())} each"
    )
    assert [r.status for r in new] == ["succeeded"] * 6
    assert [r.status for r in cached] == ["cached"] * 6
    for key, trips in trips_new.items():
        assert trips == [("HEAD", 404), ("PUT", 200)], (key, trips)
        assert trips_all[key][2:] == [("HEAD", 200)], (key, trips_all[key])
    for trips, trips_after in zip(master_trips_new, master_trips_all, strict=True):
        assert trips == [("HEAD", 404), ("PUT", 200)], trips
        assert trips_after == trips  # a cached rendition never reads its master


def master_of(row: dict[str, str]) -> str:
    """The master object of a row's speech on the fake engine (the harness's default)."""
    spec = validate_spec(row, speakers=frozenset(COSYVOICE_SFT_SPEAKERS), max_chars=500)
    return master_key(
        synthesis_key({**FakeSynthesizer().identity(), "text_rules": text_rules([])}, spec)
    )


class _NoConditionalWrites:
    """An S3 client whose server does not implement If-None-Match on PutObject (501)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        if "IfNoneMatch" in kwargs:
            error = {"Code": "NotImplemented", "Message": "A header you provided is not supported"}
            response: Any = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 501}}
            raise ClientError(response, "PutObject")
        return {}


def test_a_server_without_conditional_writes_gets_plain_puts_from_then_on() -> None:
    client = _NoConditionalWrites()
    store = AudioStore(client, "bucket")
    assert store.put("a.wav", b"a", fmt="wav", metadata={}) is True
    assert store.put("b.wav", b"b", fmt="wav", metadata={}) is True
    assert ["IfNoneMatch" in call for call in client.calls] == [True, False, False]
