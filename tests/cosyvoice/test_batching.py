"""Continuous batching on the tiny random model: a job's tokens and audio do not depend on its
batch-mates, jobs join and leave between steps, and the scheduler's limits hold.

The same job is decoded alone and inside batches of 2, 5 and 8 other jobs of different lengths:
teacher-forced log-probabilities within 1e-4 relative with the same top-1 at every step, and,
free-running through the engine's own scheduler thread, the same speech tokens and audio.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.cosyvoice_parity import compare_log_probs, sft_inputs
from core.errors import InvalidJob, JobTimeout
from worker.engines.cosyvoice.batching import BatchLimits
from worker.engines.cosyvoice.engine import CosyVoiceSynthesizer

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)

# The int8 LLM's teacher-forced top-1 agreement with fp32 stated for `fast` (docs/cosyvoice.md).
INT8_TOP1_BOUND = 0.95

# The job under test, and batch-mates of different lengths (and languages, speakers).
SUBJECT = ("英文女", "en", "The next train to the airport leaves from platform two.")
MATES = [
    ("中文女", "zh", "各位旅客请注意，列车即将进站。"),
    ("英文男", "en", "Good morning."),
    ("中文男", "zh", "本次列车终点站是上海虹桥，请带好您的随身物品。"),
    ("英文女", "en", "Please mind the gap between the train and the platform edge."),
    ("粤语女", "yue", "多谢乘搭。"),
    ("英文男", "en", "Flight two one four to Boston is now boarding at gate nine."),
    ("中文女", "zh", "欢迎乘坐本次列车。"),
    ("英文女", "en", "Thank you."),
]


def batched_engine(model_dir: Path, *, preset: str = "exact", **limits: Any) -> Any:
    options = {"max_batch": 16, "max_wait": 1.0, **limits}
    return CosyVoiceSynthesizer(
        str(model_dir), threads=1, preset=preset, batch=BatchLimits(**options)
    )


def decode_args(model_input: dict[str, Any]) -> tuple[Any, Any, Any]:
    import torch

    text = model_input["text"]
    return text, torch.tensor([text.shape[1]], dtype=torch.int32), model_input["llm_embedding"]


def speak_together(
    engine: CosyVoiceSynthesizer, jobs: list[tuple[str, str, str]], **kwargs: Any
) -> list[Any]:
    """Every job on its own thread at once, as Celery's threads pool calls the engine; each
    result is the audio or the exception."""
    results: list[Any] = [None] * len(jobs)

    def call(i: int, speaker: str, lang: str, text: str) -> None:
        try:
            results[i] = engine.synthesize(text, speaker=speaker, lang=lang, **kwargs)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


@pytest.mark.parametrize("mates", [2, 5, 8])
def test_teacher_forced_log_probs_do_not_depend_on_batch_mates(
    tiny_engine: CosyVoiceSynthesizer, mates: int
) -> None:
    import torch

    decoder = tiny_engine.decoder
    upstream = tiny_engine.upstream
    speaker, lang, text = SUBJECT
    (subject,) = sft_inputs(upstream, text, speaker, lang)
    torch.manual_seed(0)
    tokens = list(decoder.generate(*decode_args(subject)))
    alone = decoder.teacher_forced(*decode_args(subject), tokens)
    requests = [(*decode_args(subject), tokens)]
    for i, (m_speaker, m_lang, m_text) in enumerate(MATES[:mates]):
        model_input = sft_inputs(upstream, m_text, m_speaker, m_lang)[0]
        # Mates leave the batch at different steps: some before the subject ends.
        length = (i + 1) * len(tokens) // (mates - 1) + 3
        requests.append((*decode_args(model_input), tokens[:1] * length))
    together = decoder.teacher_forced_together(requests)[0]
    parity = compare_log_probs(alone, together)
    print(f"\nsubject alone vs with {mates} mates: {parity}")
    assert parity.steps == len(tokens) + 1
    assert parity.max_relative_difference < 1e-4, parity
    assert parity.top1_agreement == 1.0, parity


def test_free_running_audio_does_not_depend_on_batch_mates(
    tiny_engine: CosyVoiceSynthesizer, tiny_model_dir: Path
) -> None:
    speaker, lang, text = SUBJECT
    alone = tiny_engine.synthesize(text, speaker=speaker, lang=lang)
    alone_tokens = tiny_engine.last_stages.tokens
    engine = batched_engine(tiny_model_dir)
    rows: list[int] = []
    engine.set_step_observer(rows.append)
    for mates in (2, 5, 8):
        rows.clear()
        jobs = [SUBJECT, *[(s, la, t) for s, la, t in MATES[:mates]]]
        results = speak_together(engine, jobs)
        assert max(rows) == mates + 1  # they really were decoded together
        audio = results[0]
        assert isinstance(audio, np.ndarray), audio
        assert audio.shape == alone.shape
        np.testing.assert_allclose(audio, alone, atol=1e-5)
        for (m_speaker, m_lang, m_text), mate_audio in zip(jobs[1:], results[1:], strict=True):
            mate_alone = tiny_engine.synthesize(m_text, speaker=m_speaker, lang=m_lang)
            np.testing.assert_allclose(mate_audio, mate_alone, atol=1e-5)
    # The tokens too (the audio above follows from them, but say it plainly).
    single = batched_engine(tiny_model_dir, max_batch=1)
    single.synthesize(text, speaker=speaker, lang=lang)
    assert single.last_stages.tokens == alone_tokens


def test_a_short_job_joins_and_leaves_while_a_long_one_decodes(tiny_model_dir: Path) -> None:
    engine = batched_engine(tiny_model_dir, max_wait=0.0)
    finished: dict[str, float] = {}
    long_job = ("中文女", "zh", "本次列车终点站是上海虹桥，请带好您的随身物品，下车时请注意安全。")
    short_job = ("英文男", "en", "Thank you.")

    def run(name: str, job: tuple[str, str, str]) -> None:
        engine.synthesize(job[2], speaker=job[0], lang=job[1])
        finished[name] = time.monotonic()

    rows: list[int] = []
    engine.set_step_observer(rows.append)
    first = threading.Thread(target=run, args=("long", long_job))
    first.start()
    assert wait_for(lambda: len(rows) >= 20)  # the long job is decoding alone
    second = threading.Thread(target=run, args=("short", short_job))
    second.start()
    first.join(timeout=300)
    second.join(timeout=300)
    assert finished["short"] < finished["long"]
    assert 2 in rows  # the short job joined the running batch
    assert rows[-1] == 1  # and left it before the long one ended


def test_a_job_past_its_deadline_fails_alone(tiny_model_dir: Path) -> None:
    engine = batched_engine(tiny_model_dir)
    speaker, lang, text = MATES[2]
    deadline = time.monotonic() + 0.3
    doomed = threading.Thread(
        target=lambda: outcomes.update(
            doomed=_outcome(engine, text, speaker, lang, deadline=deadline)
        )
    )
    outcomes: dict[str, Any] = {}
    jobs = [MATES[0], MATES[3]]
    doomed.start()
    results = speak_together(engine, jobs)
    doomed.join(timeout=300)
    assert isinstance(outcomes["doomed"], JobTimeout)
    assert outcomes["doomed"].reason == "timeout"
    assert all(isinstance(r, np.ndarray) and r.size for r in results), results


def test_a_bad_text_fails_its_job_only(tiny_model_dir: Path) -> None:
    engine = batched_engine(tiny_model_dir)
    results = speak_together(engine, [MATES[1], ("中文女", "zh", "。。。"), MATES[7]])
    assert isinstance(results[1], InvalidJob) and results[1].reason == "invalid_text"
    assert isinstance(results[0], np.ndarray) and isinstance(results[2], np.ndarray)


def test_the_rss_budget_holds_jobs_back_until_rows_end(tiny_model_dir: Path) -> None:
    engine = batched_engine(tiny_model_dir)
    scheduler = engine._scheduler
    assert scheduler is not None
    runner = scheduler.runner
    jobs = [MATES[1], MATES[4], MATES[7]]
    # A process of 100 MB plus its rows' caches, and a budget with room for any one row's
    # worst case but not two: rows join one at a time.
    base = 100 << 20
    worst = max(
        runner.decoder.row_bytes(m["text"].shape[1], m["text"].shape[1] + 3)
        for s, la, t in jobs
        for m in sft_inputs(engine.upstream, t, s, la)
    )
    scheduler.limits = BatchLimits(max_batch=8, max_wait=1.0, rss_budget_bytes=base + worst)
    scheduler._rss = lambda: (
        base + sum(2 * 4 * j.row.keys.numel() for j in runner.active if j.row is not None)
    )
    rows: list[int] = []
    engine.set_step_observer(rows.append)
    results = speak_together(engine, jobs)
    assert all(isinstance(r, np.ndarray) for r in results), results
    assert max(rows) == 1
    # Without the budget the same jobs share steps.
    scheduler.limits = BatchLimits(max_batch=8, max_wait=1.0)
    rows.clear()
    speak_together(engine, jobs)
    assert max(rows) == 3


def test_int8_batching_stays_within_the_int8_bound(tiny_model_dir: Path) -> None:
    """Dynamic int8 quantizes each linear map's input with one scale for the whole batch, so
    with `fast` a job's log-probabilities move with its batch-mates. Batched, they stay within
    the bound the engine-speed work stated for int8 against fp32 (top-1 agreement >= 95%), and
    batching moves them by the same order as int8 itself does."""
    exact = CosyVoiceSynthesizer(str(tiny_model_dir), threads=1, preset="exact")
    fast = CosyVoiceSynthesizer(str(tiny_model_dir), threads=1, preset="fast")
    speaker, lang, text = SUBJECT
    (subject,) = sft_inputs(exact.upstream, text, speaker, lang)
    import torch

    torch.manual_seed(0)
    tokens = list(exact.decoder.generate(*decode_args(subject)))
    fp32 = exact.decoder.teacher_forced(*decode_args(subject), tokens)
    alone = fast.decoder.teacher_forced(*decode_args(subject), tokens)
    mates = [sft_inputs(exact.upstream, t, s, la)[0] for s, la, t in MATES]
    requests = [(*decode_args(subject), tokens)]
    requests += [(*decode_args(m), tokens[:1] * len(tokens)) for m in mates]
    together = fast.decoder.teacher_forced_together(requests)[0]
    int8_error = compare_log_probs(fp32, alone)
    batched_error = compare_log_probs(fp32, together)
    batching_error = compare_log_probs(alone, together)
    print(
        f"\nint8 alone vs fp32: {int8_error}\nint8 batched vs fp32: {batched_error}"
        f"\nint8 batched vs alone: {batching_error}"
    )
    assert batching_error.max_relative_difference > 0  # int8 rows do feel their batch-mates
    assert batched_error.top1_agreement >= INT8_TOP1_BOUND
    assert batching_error.max_relative_difference < 3 * int8_error.max_relative_difference
    assert batching_error.mean_kl < 3 * int8_error.mean_kl


def _outcome(engine: CosyVoiceSynthesizer, text: str, speaker: str, lang: str, **kw: Any) -> Any:
    try:
        return engine.synthesize(text, speaker=speaker, lang=lang, **kw)
    except Exception as exc:
        return exc


def wait_for(check: Any, timeout: float = 60.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_the_engine_thread_survives_a_failed_step(tiny_model_dir: Path) -> None:
    engine = batched_engine(tiny_model_dir, max_wait=0.0)
    scheduler = engine._scheduler
    assert scheduler is not None
    runner = scheduler.runner
    real_step = runner.step
    calls = {"n": 0}

    def failing_once() -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a step that broke")
        real_step()

    runner.step = failing_once
    speaker, lang, text = MATES[1]
    (broken,) = speak_together(engine, [MATES[1]])
    assert isinstance(broken, RuntimeError)
    # The thread lives on: the next job is served.
    audio = engine.synthesize(text, speaker=speaker, lang=lang)
    assert audio.size > 0


def test_a_batched_job_keeps_its_own_speed(
    tiny_engine: CosyVoiceSynthesizer, tiny_model_dir: Path
) -> None:
    # The scheduler's path (jobs decoded together) stretches the mel as the alone path does.
    speaker, lang, text = SUBJECT
    alone = tiny_engine.synthesize(text, speaker=speaker, lang=lang, speed=2.0)
    engine = batched_engine(tiny_model_dir)
    fast = speak_together(engine, [SUBJECT, MATES[1]], speed=2.0)[0]
    normal = speak_together(engine, [SUBJECT, MATES[1]])[0]
    assert isinstance(fast, np.ndarray) and isinstance(normal, np.ndarray)
    np.testing.assert_allclose(fast, alone, atol=1e-5)
    assert abs(fast.size - normal.size / 2) <= 2 * 256
