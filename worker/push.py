"""The worker's metrics and the background pusher that sends them to the Pushgateway.

Each process of a worker node has one `WorkerMetrics`. In a node (worker/node_metrics.py) their
values live in per-process files, and the node's parent pushes their sum, the whole registry
(PUT), under {job="tts_worker", worker=<node>}: one group per node, counters that only grow,
whichever processes came and went. Pushing happens on a thread of its own, so a slow or absent
Pushgateway never delays or fails a task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from core.contract import PUSH_JOB, TASK_STATUSES
from core.errors import ERROR_REASONS
from worker import node_metrics

if TYPE_CHECKING:
    from worker.synth import Synthesizer

log = logging.getLogger(__name__)

STORAGE_OPS = ("upload", "lookup")
# From 10 ms (a cache hit, the fake engine) to 30 min (CosyVoice on CPU at RTF ~15 on a long
# text). histogram_quantile interpolates inside a bucket, so a quantile is only as good as its
# bucket is narrow: from 1 s up each bound is at most 2x the one before, from 10 s up 1.5x, so a
# P99 of 40 s reads 30-45 s, not 30-60 s. 0.25 and 0.5 stay bounds (tests time the fake engine
# at 0.3 s).
DURATION_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120,
    180, 240, 300, 450, 600, 900, 1200, 1800,
)  # fmt: skip
# Enqueue to start: milliseconds when workers are idle, seconds to hours when a batch is larger
# than the fleet (a 2,000-job batch waits 0-80 s). The same bounds to 30 min, then to 2 h: a
# P99 of 75 s reads 60-90 s (with no bound between 60 and 300 it read ~290 s).
QUEUE_WAIT_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120,
    180, 240, 300, 450, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200,
)  # fmt: skip
STORAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Rows (jobs) in one batched decoding step: every size up to 4, then the usual batch settings.
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# The pusher's own cost, pushed with what it pushes (exposed with the `_total` suffix): its
# rate() is the share of one core a node spends summing its files and pushing them.
PUSH_CPU = "tts_metrics_push_cpu_seconds"


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self, *, engine: str) -> None:
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inference = Histogram(
            "tts_inference_duration_seconds",
            "Time inside the engine per synthesis.",
            ["engine"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "tts_errors_total", "Error events by reason (fixed set).", ["reason"], registry=r
        )
        self.tasks = Counter(
            "tts_tasks_total", "Jobs by terminal outcome, once each.", ["status"], registry=r
        )
        self.retries = Counter(
            "tts_task_retries_total", "Retries scheduled, by reason.", ["reason"], registry=r
        )
        self.task_duration = Histogram(
            "tts_task_duration_seconds",
            "Whole task, receive to result.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "tts_queue_wait_seconds",
            "Enqueue to start of the task.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.storage = Histogram(
            "tts_storage_seconds",
            "S3 lookup and upload time.",
            ["op"],
            buckets=STORAGE_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "tts_audio_seconds_total", "Seconds of audio synthesized.", ["engine"], registry=r
        )
        self.characters = Counter(
            "tts_characters_total", "Characters of text synthesized.", ["engine"], registry=r
        )
        # Apart from syntheses (tts_inference_duration_seconds_count): a rendition made from a
        # stored master cost no engine time.
        self.renditions = Counter(
            "tts_renditions_total",
            "Renditions encoded and stored, by format and source (synthesis: made right after "
            "a synthesis; master: from a stored master, no engine call).",
            ["format", "source"],
            registry=r,
        )
        # Gauges of a node: the highest over its live processes (a dead one's value goes).
        self.info = Gauge(
            "tts_worker_info",
            "Always 1; the labels say which engine and model this node runs.",
            ["engine", "model", "version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.engine_load = Gauge(
            "tts_engine_load_seconds",
            "Time the engine took to load.",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Set by the node's parent only: 1 while it runs, 0 once it stopped cleanly (its group
        # then stays, with its final counts, and the staleness alert leaves it alone).
        self.up = Gauge(
            "tts_worker_up",
            "1 while the worker node runs; 0 after a clean stop.",
            registry=r,
            multiprocess_mode="livemax",
        )
        # Fed by a batching engine's step observer (worker/synth.py), not by tasks.
        self.batch_size = Histogram(
            "tts_engine_batch_size",
            "Rows (jobs) in each batched decoding step.",
            ["engine"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.speech_tokens = Counter(
            "tts_engine_speech_tokens_total",
            "Speech tokens decoded by batched steps (one per row per step).",
            ["engine"],
            registry=r,
        )
        # A batch's manifest object that could not be written (the job itself still ends
        # well; the next outcome recorded, or `tts-batch manifest ID --upload`, writes it).
        self.manifest_failures = Counter(
            "tts_manifest_write_failures_total",
            "Manifest objects of finished batches that could not be written to S3.",
            registry=r,
        )
        # Zero every known label value so that rate() and ratios have a series from the start.
        for reason in ERROR_REASONS:
            self.errors.labels(reason=reason)
            self.retries.labels(reason=reason)
        for status in TASK_STATUSES:
            self.tasks.labels(status=status)
        for op in STORAGE_OPS:
            self.storage.labels(op=op)
        self.audio_seconds.labels(engine=engine)
        self.characters.labels(engine=engine)
        self.inference.labels(engine=engine)
        self.batch_size.labels(engine=engine)
        self.speech_tokens.labels(engine=engine)

    def set_info(self, *, model: str, version: str, load_seconds: float) -> None:
        self.info.labels(engine=self.engine, model=model, version=version).set(1)
        self.engine_load.set(load_seconds)

    def error(self, reason: str) -> None:
        self.errors.labels(reason=reason if reason in ERROR_REASONS else "bad_message").inc()

    def outcome(self, status: str) -> None:
        self.tasks.labels(status=status).inc()

    def retry(self, reason: str) -> None:
        self.retries.labels(reason=reason if reason in ERROR_REASONS else "bad_message").inc()

    def synthesized(self, *, seconds: float, audio_seconds: float, characters: int) -> None:
        self.inference.labels(engine=self.engine).observe(seconds)
        self.audio_seconds.labels(engine=self.engine).inc(audio_seconds)
        self.characters.labels(engine=self.engine).inc(characters)

    def rendered(self, *, fmt: str, source: str) -> None:
        self.renditions.labels(format=fmt, source=source).inc()

    def decode_step(self, rows: int) -> None:
        """One batched decoding step of `rows` jobs, each of which produced a speech token."""
        self.batch_size.labels(engine=self.engine).observe(rows)
        self.speech_tokens.labels(engine=self.engine).inc(rows)


PushFunc = Callable[..., Any]


class BackgroundPusher:
    """Pushes a registry to the Pushgateway from a daemon thread.

    `notify()` marks the registry changed; the thread pushes at most once per
    `min_interval`, and at least every `heartbeat` seconds: a node's pool processes change its
    counts without telling the parent, and an idle but live node keeps its
    `push_time_seconds` fresh. `before_push` runs before each push (the node drops dead
    processes' gauges there). Failures are logged once per outage and retried; nothing here
    ever raises into the caller. `close()` makes a final push (and deletes the group if asked).

    `cpu_seconds` is the CPU time spent in pushes (before_push, collection, the HTTP request;
    the pushing thread's own time only); `report_cost` adds it to the pushed registry as the
    counter `tts_metrics_push_cpu_seconds_total`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        url: str,
        grouping_key: dict[str, str],
        min_interval: float = 1.0,
        heartbeat: float = 15.0,
        timeout: float = 5.0,
        push: PushFunc = push_to_gateway,
        delete: PushFunc = delete_from_gateway,
        before_push: Callable[[], object] | None = None,
        report_cost: bool = False,
    ) -> None:
        self._registry = registry
        self._before_push = before_push
        self._url = url
        self.grouping_key = dict(grouping_key)
        self._min_interval = min_interval
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._push = push
        self._delete = delete
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._failing = False
        self.pushes = 0
        self.failures = 0
        self.cpu_seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="tts-metrics-pusher", daemon=True)
        if report_cost:
            registry.register(_PushCost(self))

    def start(self) -> BackgroundPusher:
        self._thread.start()
        return self

    def notify(self) -> None:
        self._wake.set()

    def push_now(self) -> bool:
        """One push, in the caller's thread; True when the Pushgateway took it."""
        with self._lock:
            started = time.thread_time()
            try:
                return self._push_locked()
            finally:
                self.cpu_seconds += time.thread_time() - started

    def _push_locked(self) -> bool:
        try:
            if self._before_push is not None:
                self._before_push()
            self._push(
                self._url,
                job=PUSH_JOB,
                registry=self._registry,
                grouping_key=self.grouping_key,
                timeout=self._timeout,
            )
        except Exception as exc:
            self.failures += 1
            if not self._failing:
                log.warning("metrics push to %s failed (will retry): %s", self._url, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("metrics push to %s works again", self._url)
        self._failing = False
        self.pushes += 1
        return True

    def close(self, *, delete: bool = False) -> None:
        """Stop the thread, push what is left; then remove the group if `delete`."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout + 1)
        self.push_now()
        if delete:
            try:
                self._delete(
                    self._url, job=PUSH_JOB, grouping_key=self.grouping_key, timeout=self._timeout
                )
            except Exception as exc:
                log.warning("deleting metrics group %s failed: %s", self.grouping_key, exc)

    def _run(self) -> None:
        backoff = self._min_interval
        last_push = time.monotonic()
        while not self._stop.is_set():
            # The heartbeat counts from the last push, the coalescing pause included.
            due = max(self._heartbeat - (time.monotonic() - last_push), 0.0)
            woken = self._wake.wait(timeout=due)
            if self._stop.is_set():
                return
            self._wake.clear()
            ok = self.push_now()
            if ok:
                backoff = self._min_interval
                last_push = time.monotonic()
                # Coalesce: changes during this pause go out in the next single push.
                self._stop.wait(self._min_interval)
            else:
                # Keep the change pending and retry with a growing pause (at most 30 s).
                if woken:
                    self._wake.set()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wake.set()


class _PushCost:
    """A collector of one pusher's CPU seconds (read when the registry is collected)."""

    def __init__(self, pusher: BackgroundPusher) -> None:
        self._pusher = pusher

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            PUSH_CPU,
            "CPU seconds this node's pusher spent collecting and pushing its metrics.",
            value=self._pusher.cpu_seconds,
        )


def grouping_key(worker: str) -> dict[str, str]:
    """The Pushgateway group of a worker node (job="tts_worker" is the push's job)."""
    return {"worker": worker}


_per_process: dict[int, WorkerMetrics] = {}
_per_process_lock = threading.Lock()


def node_process_metrics(engine_name: str) -> WorkerMetrics:
    """This process's one WorkerMetrics in a worker node. In a node every value lives in the
    process's files, so two instances in one process would overwrite each other's counts:
    the parent's duties, the recorder of killed jobs and (batched mode) the task threads
    share it. Outside a node (tests, benchmarks) each call makes a new, in-memory one."""
    if node_metrics.enabled_dir() is None:
        return WorkerMetrics(engine=engine_name)
    with _per_process_lock:
        metrics = _per_process.get(os.getpid())
        if metrics is None:
            _per_process.clear()  # a forked child does not share its parent's
            metrics = _per_process[os.getpid()] = WorkerMetrics(engine=engine_name)
        return metrics


def process_metrics(engine: Synthesizer, *, load_seconds: float) -> WorkerMetrics:
    """This process's metrics with the engine's info set."""
    metrics = node_process_metrics(engine.name)
    version = str(getattr(engine, "version", engine.model_id))
    metrics.set_info(model=engine.model_id, version=version, load_seconds=load_seconds)
    return metrics


def start_pusher(
    registry: CollectorRegistry,
    *,
    worker: str,
    pushgateway_url: str,
    heartbeat: float,
    before_push: Callable[[], object] | None = None,
) -> BackgroundPusher | None:
    """The pusher of one worker node's group, started and asked for a first push (None when
    pushing is off)."""
    if not pushgateway_url:
        return None
    pusher = BackgroundPusher(
        registry,
        url=pushgateway_url,
        grouping_key=grouping_key(worker),
        heartbeat=heartbeat,
        before_push=before_push,
        # Visible in production: the benchmark's figure (docs/performance.md) holds for its
        # machine and label set only.
        report_cost=True,
    ).start()
    pusher.notify()
    return pusher
