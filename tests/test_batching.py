"""Batched mode's pieces, without services: deadlines in the engines, the gate that lets task
threads into an engine, the step observer feeding the metrics, one context per process."""

from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from core.errors import JobTimeout
from core.settings import Settings
from worker import runtime
from worker.engine_gate import EngineGate
from worker.engines.fake import FakeSynthesizer
from worker.push import WorkerMetrics
from worker.synth import StepObserver, max_batch


class StepEngine(FakeSynthesizer):
    """Test double of a batching engine: reports a decoding step of `rows` rows per call."""

    name = "stepper"

    def __init__(self, *, rows: int) -> None:
        super().__init__(max_batch=8)
        self.rows = rows
        self.observer: StepObserver | None = None

    def set_step_observer(self, fn: StepObserver) -> None:
        self.observer = fn

    def synthesize(
        self, text: str, *, speaker: str, lang: str | None, deadline: float | None = None
    ) -> np.ndarray:
        if self.observer is not None:
            self.observer(self.rows)
        return super().synthesize(text, speaker=speaker, lang=lang, deadline=deadline)


def test_job_timeout_needs_only_a_message() -> None:
    assert JobTimeout("too slow").reason == "timeout"


def test_the_fake_engine_works_until_its_deadline_then_times_out() -> None:
    engine = FakeSynthesizer(delay=0.5)
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        engine.synthesize("Late.", speaker="英文女", lang="en", deadline=started + 0.15)
    assert 0.15 <= time.monotonic() - started < 0.4
    audio = engine.synthesize(
        "On time.", speaker="英文女", lang="en", deadline=time.monotonic() + 5
    )
    assert audio.size > 0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_espeak_refuses_a_job_whose_deadline_has_passed() -> None:
    from worker.engines.espeak import EspeakSynthesizer

    with pytest.raises(JobTimeout):
        EspeakSynthesizer().synthesize(
            "Late.", speaker="英文女", lang="en", deadline=time.monotonic() - 1
        )


def _inside_at_once(gate: EngineGate, *, threads: int, hold: float) -> int:
    """How many threads were inside the gate at the same time, at most."""
    inside, most = 0, 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal inside, most
        with gate.enter(deadline=None):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(hold)
            with lock:
                inside -= 1

    workers = [threading.Thread(target=job) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return most


def test_a_batching_engine_takes_every_thread_at_once() -> None:
    engine = FakeSynthesizer(max_batch=4)
    assert max_batch(engine) == 4
    assert _inside_at_once(EngineGate(engine), threads=4, hold=0.2) == 4


def test_an_engine_that_does_not_batch_takes_one_job_at_a_time() -> None:
    engine = FakeSynthesizer()
    assert max_batch(engine) == 1
    assert _inside_at_once(EngineGate(engine), threads=3, hold=0.05) == 1


def test_a_job_waiting_its_turn_times_out_at_its_deadline() -> None:
    gate = EngineGate(FakeSynthesizer())
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with gate.enter(deadline=None):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    holding.wait(5)
    started = time.monotonic()
    with pytest.raises(JobTimeout), gate.enter(deadline=started + 0.1):
        pass
    assert time.monotonic() - started < 1
    release.set()
    thread.join()


def test_decode_steps_feed_batch_size_and_speech_tokens() -> None:
    metrics = WorkerMetrics(engine="cosyvoice")
    for rows in (1, 4, 4, 7):
        metrics.decode_step(rows)
    get = metrics.registry.get_sample_value
    labels = {"engine": "cosyvoice"}
    assert get("tts_engine_batch_size_count", labels) == 4
    assert get("tts_engine_batch_size_sum", labels) == 16
    assert get("tts_engine_batch_size_bucket", {**labels, "le": "4.0"}) == 3
    assert get("tts_engine_batch_size_bucket", {**labels, "le": "8.0"}) == 4
    assert get("tts_engine_speech_tokens_total", labels) == 16


def test_the_context_wires_the_engines_step_observer() -> None:
    engine = StepEngine(rows=3)
    settings = Settings(
        engine="fake",
        pushgateway_url="",
        s3_create_bucket=False,
        s3_access_key="test",
        s3_secret_key="test",
    )
    ctx, pusher = runtime.build_context(settings, engine=engine, deadlines=True)
    assert pusher is None and ctx.deadlines and ctx.gate.batches
    engine.synthesize("One.", speaker="英文女", lang="en")
    engine.synthesize("Two.", speaker="英文女", lang="en")
    get = ctx.metrics.registry.get_sample_value
    assert get("tts_engine_batch_size_count", {"engine": "stepper"}) == 2
    assert get("tts_engine_speech_tokens_total", {"engine": "stepper"}) == 6


def test_task_threads_build_one_context_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []

    def slow_build(settings: Settings, **_: Any) -> tuple[object, None]:
        time.sleep(0.1)  # wide open for a second builder, were there no lock
        engine = FakeSynthesizer(max_batch=8)
        built.append(SimpleNamespace(engine=engine, deadlines=True, gate=EngineGate(engine)))
        return built[-1], None

    monkeypatch.setattr(runtime, "build_context", slow_build)
    monkeypatch.setattr(runtime, "_state", {"worker_name": "w", "in_process_pool": True})
    monkeypatch.setattr(runtime, "WorkerContext", object)
    seen: list[object] = []
    threads = [
        threading.Thread(target=lambda: seen.append(runtime.start_process(Settings())))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len(seen) == 8 and all(ctx is built[0] for ctx in seen)


def test_a_batched_job_carries_b_times_its_soft_limit_as_deadline() -> None:
    settings = Settings(
        engine="fake",
        engine_batch=4,
        pushgateway_url="",
        s3_create_bucket=False,
        s3_access_key="test",
        s3_secret_key="test",
    )
    job: Any = SimpleNamespace(spec=SimpleNamespace(text="x" * 10))
    batched, _ = runtime.build_context(
        settings, engine=FakeSynthesizer(max_batch=4), deadlines=True
    )
    prefork, _ = runtime.build_context(settings, engine=FakeSynthesizer(), deadlines=False)
    soft = settings.task_time_base_seconds + 10 * settings.task_time_per_char_seconds
    assert batched.deadline(job, started=100.0) == pytest.approx(100.0 + 4 * soft)
    assert prefork.deadline(job, started=100.0) is None
