"""Realistic worker metrics pushed to a real Pushgateway, for the monitoring tests.

A `SimWorker` stands for one worker node: one cumulative registry with the DESIGN.md metric set
(what the node's parent sums from its pool processes), pushed whole (PUT) under the node's one
group {job="tts_worker", worker}, as the workers do. The buckets are worker/push.py's own.
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

from core.errors import ERROR_REASONS
from worker.push import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS,
    QUEUE_WAIT_BUCKETS,
    STORAGE_BUCKETS,
)


class SimWorker:
    """One simulated worker node with cumulative counters, like the registry a node pushes."""

    def __init__(self, worker: str, *, engine: str = "espeak", seed: int = 0) -> None:
        self.grouping = {"worker": worker}
        self.engine = engine
        self.rng = random.Random(seed)
        self.tasks = 0
        self.failed = 0
        r = self.registry = CollectorRegistry()
        self.inference = Histogram(
            "tts_inference_duration_seconds",
            "engine time",
            ["engine"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.errors = Counter("tts_errors_total", "errors", ["reason"], registry=r)
        self.outcomes = Counter("tts_tasks_total", "outcomes", ["status"], registry=r)
        self.retries = Counter("tts_task_retries_total", "retries", ["reason"], registry=r)
        self.task_duration = Histogram(
            "tts_task_duration_seconds", "task", buckets=DURATION_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "tts_queue_wait_seconds", "wait", buckets=QUEUE_WAIT_BUCKETS, registry=r
        )
        self.storage = Histogram(
            "tts_storage_seconds", "storage", ["op"], buckets=STORAGE_BUCKETS, registry=r
        )
        self.audio = Counter("tts_audio_seconds_total", "audio", ["engine"], registry=r)
        self.chars = Counter("tts_characters_total", "chars", ["engine"], registry=r)
        self.batch_size = Histogram(
            "tts_engine_batch_size", "rows", ["engine"], buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.speech_tokens = Counter(
            "tts_engine_speech_tokens_total", "tokens", ["engine"], registry=r
        )
        info = Gauge("tts_worker_info", "info", ["engine", "model", "version"], registry=r)
        info.labels(engine, "espeak-ng-1.51", "0.1.0").set(1)
        Gauge("tts_engine_load_seconds", "load", registry=r).set(0.2)
        # Every label value exists from the start at 0, so the first event is a visible increase.
        for reason in ERROR_REASONS:
            self.errors.labels(reason)
            self.retries.labels(reason)
        for status in ("succeeded", "failed", "cached"):
            self.outcomes.labels(status)
        for op in ("upload", "lookup"):
            self.storage.labels(op)
        self.inference.labels(engine)
        self.audio.labels(engine)
        self.chars.labels(engine)
        self.batch_size.labels(engine)
        self.speech_tokens.labels(engine)

    def run_tasks(self, n: int, *, queue_wait: float | None = None) -> None:
        """Account for `n` jobs: mostly successes, some cache hits, a few failures. Each waited
        `queue_wait` seconds in the queue (default: random, 0.05-3 s)."""
        for _ in range(n):
            self.tasks += 1
            wait = self.rng.uniform(0.05, 3.0) if queue_wait is None else queue_wait
            self.queue_wait.observe(wait)
            self.storage.labels("lookup").observe(self.rng.uniform(0.005, 0.03))
            roll = self.rng.random()
            if roll < 0.1:
                self.outcomes.labels("cached").inc()
                self.task_duration.observe(self.rng.uniform(0.02, 0.05))
                continue
            if roll < 0.15:
                self.failed += 1
                self.errors.labels("invalid_text").inc()
                self.outcomes.labels("failed").inc()
                self.task_duration.observe(0.01)
                continue
            chars = self.rng.randint(20, 200)
            audio = chars / 14.0  # about 14 characters per second of speech
            infer = audio * self.rng.uniform(0.05, 0.12)
            if roll < 0.2:  # a storage hiccup, retried, then fine
                self.errors.labels("storage_error").inc()
                self.retries.labels("storage_error").inc()
            self.inference.labels(self.engine).observe(infer)
            # A batching engine's steps: 50 speech tokens a second of audio, 1-8 jobs a step.
            rows = self.rng.randint(1, 8)
            steps = max(1, round(audio * 50 / rows))
            for _ in range(steps):
                self.batch_size.labels(self.engine).observe(rows)
            self.speech_tokens.labels(self.engine).inc(rows * steps)
            self.audio.labels(self.engine).inc(audio)
            self.chars.labels(self.engine).inc(chars)
            self.storage.labels("upload").observe(self.rng.uniform(0.01, 0.08))
            self.task_duration.observe(infer + 0.1)
            self.outcomes.labels("succeeded").inc()

    def succeed(self, n: int) -> None:
        """Account for `n` jobs that succeeded at once (no error, no retry)."""
        for _ in range(n):
            self.tasks += 1
            self.queue_wait.observe(0.1)
            self.inference.labels(self.engine).observe(0.2)
            self.audio.labels(self.engine).inc(2.0)
            self.task_duration.observe(0.3)
            self.outcomes.labels("succeeded").inc()

    def retried_failure(self, reason: str = "storage_error") -> None:
        """One job that failed, was retried once, and failed again for good."""
        self.tasks += 1
        self.failed += 1
        self.queue_wait.observe(0.1)
        self.errors.labels(reason).inc(2)
        self.retries.labels(reason).inc()
        self.task_duration.observe(0.5)
        self.outcomes.labels("failed").inc()

    def push(self, gateway: str) -> None:
        """PUT the whole registry under this node's grouping key."""
        push_to_gateway(
            gateway, job="tts_worker", registry=self.registry, grouping_key=self.grouping
        )
