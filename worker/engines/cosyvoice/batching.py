"""Continuous batching for CosyVoice: the speech-token steps of every job in flight run as one
batch, jobs join and leave between steps, and a job's audio does not depend on its batch-mates.

`BatchRunner` is the synchronous core (one step at a time; tests and the batch-1 path drive it
directly). `BatchScheduler` runs a runner on one engine thread of its own and hands each caller
a future: Celery's task threads call `CosyVoiceSynthesizer.synthesize`, which waits on it.

Why one thread does all the compute: the 2-core machines this runs on gain nothing from two
torch computations at once, and a single thread makes each job's random draws its own (a job
carries a generator whose state is swapped in around upstream code that draws from the global
RNG, `decode.drawing_from`). A job's chunks run in upstream's order (tokens, flow, vocoder,
next chunk), so its draws come in the same sequence alone or in any batch.

Why flow and vocoder run per job: they are compute-bound already at batch 1 (a 5 s utterance
is 430 mel frames through the estimator, 10 steps x 2 for guidance), so batching them saves
little, and padding jobs of different lengths would change their audio; see docs/cosyvoice.md
for the measurement.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import InvalidJob, JobTimeout

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Seconds spent in each stage of one synthesis (all its chunks), and its speech tokens.
    In a batch, `llm` is the wall time of the steps the job took part in."""

    llm: float = 0.0
    flow: float = 0.0
    hift: float = 0.0
    # Each chunk's speech tokens (parity checks compare them with upstream's).
    tokens: list[list[int]] = field(default_factory=list)

    @property
    def speech_tokens(self) -> int:
        return sum(len(chunk) for chunk in self.tokens)


@dataclass
class SpeechJob:
    """One synthesis request and its progress through its chunks."""

    text: str
    speaker: str
    lang: str | None
    generator: Any  # torch.Generator: every random draw of this job
    deadline: float | None = None  # time.monotonic(); past it the job fails with `timeout`
    speed: float = 1.0  # a factor on the pace: the mel is stretched before the vocoder
    future: Future[np.ndarray] = field(default_factory=Future)
    times: StageTimes = field(default_factory=StageTimes)
    chunks: list[dict[str, Any]] = field(default_factory=list)  # model inputs still to speak
    pieces: list[np.ndarray] = field(default_factory=list)
    row: Any = None  # decode.Row of the chunk being decoded
    estimate_bytes: int = 0  # the most decode cache memory its current chunk can take

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline


class Voice:
    """What the runner needs from the engine: text to model inputs, tokens to audio."""

    def __init__(self, *, splitter: Any, frontend: Any, stages: Any) -> None:
        self._splitter, self._frontend, self.stages = splitter, frontend, stages

    def model_inputs(self, job: SpeechJob) -> list[dict[str, Any]]:
        chunks = self._splitter.split(job.text, lang=job.lang)
        if not chunks:
            raise InvalidJob("nothing to say after text normalization", reason="invalid_text")
        # The text is already normalized (and kept away from the package's French branch):
        # upstream `CosyVoice.inference_sft` with text_frontend=False, chunk by chunk.
        return [self._frontend.frontend_sft(chunk, job.speaker) for chunk in chunks]

    def audio(self, job: SpeechJob, tokens: list[int], model_input: dict[str, Any]) -> np.ndarray:
        """Flow and vocoder of one chunk, drawing from the job's generator."""
        from worker.engines.cosyvoice.decode import drawing_from

        started = time.perf_counter()
        with drawing_from(job.generator):
            mel = self.stages.flow_mel(tokens, model_input)
            vocoded = time.perf_counter()
            speech = self.stages.vocode(mel, job.speed)
        job.times.flow += vocoded - started
        job.times.hift += time.perf_counter() - vocoded
        return speech  # type: ignore[no-any-return]


class BatchRunner:
    """The jobs in flight on one engine and the step that advances them all.

    Not thread-safe: one thread calls `prepare`, `admit` and `step`."""

    def __init__(self, decoder: Any, voice: Voice) -> None:
        self.decoder = decoder
        self.voice = voice
        self.active: list[SpeechJob] = []
        # Called after every decode step with the number of rows (jobs) in it.
        self.on_step: Callable[[int], None] = lambda rows: None

    def prepare(self, job: SpeechJob) -> bool:
        """Normalize and tokenize the job's text; False (the job failed) if it cannot be."""
        try:
            job.chunks = self.voice.model_inputs(job)
        except Exception as exc:  # a bad text fails its own job, never the engine thread
            job.future.set_exception(exc)
            return False
        job.estimate_bytes = self._chunk_bytes(job.chunks[0])
        return True

    def admit(self, job: SpeechJob) -> None:
        """Start a prepared job's first chunk: it joins the next step."""
        self.active.append(job)
        self._start_chunk(job)

    def outstanding_bytes(self) -> int:
        """How much the active rows' caches may still grow."""
        return sum(job.row.outstanding_bytes() for job in self.active if job.row is not None)

    def run_alone(self, job: SpeechJob) -> np.ndarray:
        """The job on its own, on the calling thread (batch size 1)."""
        if self.prepare(job):
            self.admit(job)
            while self.active:
                self.step()
        return job.future.result()

    def step(self) -> None:
        """Fail the jobs past their deadline; draw one token for every active row; finish the
        chunks that ended (flow and vocoder; the job's next chunk starts at once); feed the
        drawn tokens through the LLM as one batch."""
        now = time.monotonic()
        for job in [j for j in self.active if j.expired(now)]:
            self.fail(job, JobTimeout(_timeout_message(job)))
        rows, tokens, stepping = [], [], []
        for job in list(self.active):
            try:
                token = self.decoder.next_token(job.row)
                while token is None:  # the chunk has ended
                    if not self._finish_chunk(job):
                        break
                    token = self.decoder.next_token(job.row)
            except Exception as exc:  # one job's failure is not its batch-mates'
                log.exception("synthesis failed")
                self.fail(job, exc)
                continue
            if token is not None:
                rows.append(job.row)
                tokens.append(token)
                stepping.append(job)
        if not rows:
            return
        started = time.perf_counter()
        try:
            self.decoder.advance(rows, tokens)
        except Exception as exc:
            log.exception("decode step failed")
            for job in stepping:
                self.fail(job, exc)
            return
        elapsed = time.perf_counter() - started
        for job in stepping:
            job.times.llm += elapsed
        self.on_step(len(rows))

    # --- one job's chunks --------------------------------------------------------------------

    def _start_chunk(self, job: SpeechJob) -> None:
        import torch

        model_input = job.chunks[0]
        text = model_input["text"]
        started = time.perf_counter()
        job.row = self.decoder.start(
            text,
            torch.tensor([text.shape[1]], dtype=torch.int32),
            model_input["llm_embedding"],
            generator=job.generator,
        )
        job.times.llm += time.perf_counter() - started

    def _finish_chunk(self, job: SpeechJob) -> bool:
        """Speak the chunk just decoded; start the next one (True) or resolve the job."""
        tokens = list(job.row.decoded)
        job.times.tokens.append(tokens)
        job.pieces.append(self.voice.audio(job, tokens, job.chunks.pop(0)))
        if job.chunks:
            self._start_chunk(job)
            return True
        self.active.remove(job)
        job.row = None
        audio = np.concatenate(job.pieces).astype(np.float32, copy=False)
        job.future.set_result(audio)
        return False

    def fail(self, job: SpeechJob, exc: BaseException) -> None:
        if job in self.active:
            self.active.remove(job)
        job.row = None
        if not job.future.done():
            job.future.set_exception(exc)

    def _chunk_bytes(self, model_input: dict[str, Any]) -> int:
        text_tokens = int(model_input["text"].shape[1])
        # The prefix is sos, speaker, the encoded text and the task token.
        return int(self.decoder.row_bytes(text_tokens, text_tokens + 3))


@dataclass(frozen=True)
class BatchLimits:
    """The scheduler's settings: rows per step, how long an idle engine waits for a batch to
    fill before it starts, and the process memory it will not grow past (0: no limit)."""

    max_batch: int = 8
    max_wait: float = 0.05
    rss_budget_bytes: int = 0


class BatchScheduler:
    """A `BatchRunner` on a thread of its own, fed by any number of caller threads."""

    def __init__(
        self,
        runner: BatchRunner,
        limits: BatchLimits,
        *,
        on_thread_start: Callable[[], None] = lambda: None,
        rss: Callable[[], int] | None = None,
    ) -> None:
        self.runner = runner
        self.limits = limits
        self._on_thread_start = on_thread_start
        self._rss = rss or current_rss_bytes
        self._inbox: queue.Queue[SpeechJob] = queue.Queue()
        self._waiting: list[SpeechJob] = []  # prepared, not yet admitted
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = -1

    def synthesize(self, job: SpeechJob) -> np.ndarray:
        """Queue the job and wait for its audio (or its error)."""
        self._ensure_thread()
        self._inbox.put(job)
        return job.future.result()

    def _ensure_thread(self) -> None:
        # A thread does not survive a fork: a forked process starts its own.
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="cosyvoice-batch", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        self._on_thread_start()
        while True:
            try:
                self._turn()
            except Exception as exc:  # never leave callers waiting on a dead engine thread
                log.exception("batch scheduler step failed: failing the jobs in hand")
                for job in [*self.runner.active, *self._waiting]:
                    self.runner.fail(job, exc)
                self._waiting.clear()

    def _turn(self) -> None:
        """Take new jobs (waiting for some when idle), drop expired ones, admit, one step."""
        if not self.runner.active and not self._waiting:
            self._take(block=True)
            self._fill_batch()
        else:
            self._take(block=False)
        self._expire_waiting()
        self._admit()
        self.runner.step()

    def _take(self, *, block: bool) -> None:
        """Move jobs from the inbox to the waiting list, preparing each (text to tokens)."""
        try:
            job = self._inbox.get(block=block)
            while True:
                self._receive(job)
                job = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _receive(self, job: SpeechJob) -> None:
        """Prepare a new job (text to tokens); it waits to join unless that failed it."""
        if self.runner.prepare(job):
            self._waiting.append(job)

    def _fill_batch(self) -> None:
        """An idle engine waits up to max_wait for more jobs before its first step."""
        until = time.monotonic() + self.limits.max_wait
        while len(self._waiting) < self.limits.max_batch:
            left = until - time.monotonic()
            if left <= 0:
                return
            try:
                job = self._inbox.get(timeout=left)
            except queue.Empty:
                return
            self._receive(job)

    def _expire_waiting(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._waiting if j.expired(now)]:
            self._waiting.remove(job)
            job.future.set_exception(JobTimeout(_timeout_message(job)))

    def _admit(self) -> None:
        """Waiting jobs join, oldest first, while the batch has room and memory allows."""
        runner = self.runner
        while self._waiting and len(runner.active) < self.limits.max_batch:
            job = self._waiting[0]
            if runner.active and not self._fits(job):
                return  # it joins when a row ends and frees its cache
            self._waiting.pop(0)
            try:
                runner.admit(job)
            except Exception as exc:
                log.exception("could not start a job")
                runner.fail(job, exc)

    def _fits(self, job: SpeechJob) -> bool:
        budget = self.limits.rss_budget_bytes
        if budget <= 0:
            return True
        return self._rss() + self.runner.outstanding_bytes() + job.estimate_bytes <= budget


def current_rss_bytes() -> int:
    """This process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _timeout_message(job: SpeechJob) -> str:
    spoken = job.times.speech_tokens + (len(job.row.decoded) if job.row is not None else 0)
    return f"the job ran past its deadline ({spoken} speech tokens decoded)"
