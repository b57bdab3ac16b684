"""Realistic worker metrics pushed to a real Pushgateway, for the monitoring tests.

A `SimWorker` stands for one worker process: its own cumulative registry with the DESIGN.md
metric set, pushed whole (PUT) under {job="tts_worker", worker, process} as worker/push.py does.
"""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

from core.errors import ERROR_REASONS

# The buckets of worker/push.py (copied: this branch does not have it yet).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200)
STORAGE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class SimWorker:
    """One simulated worker process with cumulative counters, like worker/push.py's registry."""

    def __init__(self, worker: str, pid: int, *, engine: str = "espeak", seed: int = 0) -> None:
        self.grouping = {"worker": worker, "process": str(pid)}
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

    def run_tasks(self, n: int) -> None:
        """Account for `n` jobs: mostly successes, some cache hits, a few failures."""
        for _ in range(n):
            self.tasks += 1
            self.queue_wait.observe(self.rng.uniform(0.05, 3.0))
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

    def push(self, gateway: str) -> None:
        """PUT the whole registry under this process's grouping key."""
        push_to_gateway(
            gateway, job="tts_worker", registry=self.registry, grouping_key=self.grouping
        )
