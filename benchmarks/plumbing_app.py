"""The plumbing benchmark's bare Celery app: `celery -A benchmarks.plumbing_app worker`.

Two tasks that run under the pipeline's own Celery configuration (celeryconfig.py: late ack,
prefetch 1, JSON, the Redis result backend, task events), without any of its work:
  bench.noop  returns at once: the cost of Celery itself
  bench.s3    the S3 requests of a new job and nothing else: a lookup (HEAD, a miss) and the
              conditional upload (PUT) of the pipeline's object for the same text (its bytes
              made once per process), through AudioStore
Only the consumer class differs: the pipeline's (worker.parent.consumer) belongs to its
metrics; Celery's own is used here.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, worker_process_init

from core.settings import Settings
from core.storage import AudioStore

# Imported by the node's parent before the pool forks (numpy, soundfile), as the pipeline's
# parent loads its engine: a pool process's first task does not pay for the imports.
from worker.audio import encode
from worker.engines.fake import FakeSynthesizer

NOOP = "bench.noop"
S3 = "bench.s3"
SPEAKER = "英文女"

app = Celery("tts_plumbing_bench")
app.config_from_object("celeryconfig")

_store: list[AudioStore] = []


@celeryd_init.connect
def _plain_consumer(conf: Any, **_: Any) -> None:
    conf.worker_consumer = "celery.worker.consumer:Consumer"


@worker_process_init.connect
def _connect(**_: Any) -> None:
    # Built once per pool process, as the pipeline's WorkerContext builds its store.
    _store[:] = [AudioStore.from_settings(Settings.from_env())]


@app.task(name=NOOP, acks_late=True, reject_on_worker_lost=True)
def noop(message: dict[str, Any]) -> None:
    """Nothing: Celery's own cost per task."""


@app.task(name=S3, acks_late=True, reject_on_worker_lost=True)
def s3(key: str, text: str, metadata: dict[str, str]) -> bool:
    """A new job's S3 requests: the lookup of `key` (absent), then the upload of the bytes the
    pipeline stores for `text` (made once per process: the server's work depends on them)."""
    store = _store[0]
    if store.head(key) is not None:
        return False
    return store.put(key, _payload(text), fmt="wav", metadata=metadata)


_payloads: dict[str, bytes] = {}


def _payload(text: str) -> bytes:
    if text not in _payloads:
        _payloads.clear()
        _payloads[text] = fake_object(text)
    return _payloads[text]


def fake_object(text: str) -> bytes:
    """The WAV object the pipeline's fake engine makes for `text` (the same bytes)."""
    engine = FakeSynthesizer()
    samples = engine.synthesize(text, speaker=SPEAKER, lang=None)
    return encode(samples, sample_rate=engine.sample_rate, fmt="wav")
