"""The `cosyvoice` engine: CosyVoice-300M-SFT on CPU through the upstream inference code.

The runtime (PyPI `cosyvoice2-fr-infer`, upstream FunAudioLLM/CosyVoice code) is installed by
`make install-cosyvoice`. The model directory is the published one (or one written by
`worker.engines.cosyvoice.random_model`, for tests); it is checked before anything heavy is
imported and is never replaced by a hub download.

Threads: the model loads with one torch thread, so that a worker can load it in its parent
process and fork (no OpenMP pool exists yet to break in the children, pytorch#17199); each
process switches to `threads` on its first synthesis.

Speed: `TTS_COSYVOICE_PRESET` (worker.engines.cosyvoice.presets) picks upstream's code for every
stage, the exact default (own decode loop, flow estimator on ONNX Runtime, weight norm folded)
or the approximate fast levers.
Every preset runs the stages the way upstream's non-streaming `CosyVoiceModel.tts` does (LLM,
then flow, then vocoder, drawing on the global torch RNG in the same order), and records each
stage's time in `last_stages`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np

from core.delivery import worker_pool
from core.errors import ConfigError, InvalidJob
from core.settings import Settings
from worker.engines.cosyvoice.batching import (
    BatchLimits,
    BatchRunner,
    BatchScheduler,
    SpeechJob,
    StageTimes,
    Voice,
)
from worker.engines.cosyvoice.loader import default_cache_dir, import_runtime, load_cosyvoice
from worker.engines.cosyvoice.model_dir import check_model_dir, is_random_model, model_fingerprint
from worker.engines.cosyvoice.presets import DEFAULT_PRESET, Preset, get_preset
from worker.engines.cosyvoice.text import TextSplitter

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

RUNTIME_PACKAGE = "cosyvoice2-fr-infer"


def default_threads(settings: Settings) -> int:
    """`settings.threads`, or (0) the machine's cores divided among the worker processes."""
    if settings.threads > 0:
        return settings.threads
    return max(1, (os.cpu_count() or 1) // max(1, worker_pool(settings).processes))


class CosyVoiceSynthesizer:
    """CosyVoice-300M-SFT: the seven built-in speakers, 22050 Hz float32 mono.

    One instance per worker process (or per parent, before the fork). With `max_batch` > 1
    (and a preset with the project's decode loop), `synthesize` is thread-safe: concurrent
    calls are decoded together by one engine thread (worker.engines.cosyvoice.batching).
    `load_seconds` is how long the import and the load took; `version` names the runtime.
    """

    name = "cosyvoice"
    # A job's `speed`, as upstream SFT inference takes it (worker.pipeline checks this flag).
    supports_speed = True

    def __init__(
        self,
        model_dir: str,
        *,
        threads: int,
        seed: int = 0,
        preset: str | Preset = DEFAULT_PRESET,
        batch: BatchLimits | None = None,
    ) -> None:
        self.preset = preset if isinstance(preset, Preset) else get_preset(preset)
        path = check_model_dir(model_dir)
        self.random_weights = is_random_model(path)
        prefix = "cosyvoice-300m-sft-random" if self.random_weights else "cosyvoice-300m-sft"
        self.model_id = f"{prefix}-{model_fingerprint(path)}"
        self.threads = threads
        self._seed = seed
        self._threads_pid = -1
        started = time.monotonic()
        self._model = _load_cosyvoice(path)
        self._stages = _build_stages(self._model.model, self.preset, path, threads)
        self.load_seconds = time.monotonic() - started
        self.last_stages = StageTimes()
        self.sample_rate = int(self._model.sample_rate)
        self._speakers = frozenset(str(s) for s in self._model.list_available_spks())
        self._splitter = TextSplitter(self._model.frontend)
        self._voice = Voice(
            splitter=self._splitter, frontend=self._model.frontend, stages=self._stages
        )
        self._runner: BatchRunner | None = None
        self._scheduler: BatchScheduler | None = None
        self.max_batch = 1
        if self._stages.decoder is not None:
            self._runner = BatchRunner(self._stages.decoder, self._voice)
            limits = batch or BatchLimits(max_batch=1)
            if limits.max_batch > 1:
                self.max_batch = limits.max_batch
                self._scheduler = BatchScheduler(
                    self._runner, limits, on_thread_start=self._start_engine_thread
                )
        # The runtime's release: the worker's info metric reports it as the engine version.
        self.version = f"{RUNTIME_PACKAGE}-{metadata.version(RUNTIME_PACKAGE)}"
        if self.random_weights:
            log.warning("model %s holds RANDOM weights: it produces noise, not speech", path)
        log.info("cosyvoice model %s loaded in %.1f s", self.model_id, self.load_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> CosyVoiceSynthesizer:
        """Load `settings.model_dir` with `settings.threads` (0: cores / concurrency)."""
        return cls(
            settings.model_dir,
            threads=default_threads(settings),
            preset=settings.cosyvoice_preset,
            batch=BatchLimits(
                max_batch=settings.effective_engine_batch,
                max_wait=settings.engine_batch_wait_ms / 1000,
                rss_budget_bytes=settings.engine_rss_budget_mb << 20,
            ),
        )

    def speakers(self) -> frozenset[str]:
        return self._speakers

    def identity(self) -> dict[str, str | int]:
        return {
            "engine": self.name,
            "model": self.model_id,
            "sample_rate": self.sample_rate,
            "runtime": self.version,
            "frontend": self._splitter.frontend_name,
            "seed": self._seed,
            **self.preset.identity(),
        }

    def synthesize(
        self,
        text: str,
        *,
        speaker: str,
        lang: str | None,
        deadline: float | None = None,
        speed: float = 1.0,
    ) -> np.ndarray:
        """Speak `text` in `speaker`'s voice; long text is split into sentence chunks of at most
        about 80 text tokens (the frontend's own limits) and the chunks' audio concatenated.
        `speed` stretches the speech in time (upstream SFT's speed: the mel is resampled before
        the vocoder). Past `deadline` (time.monotonic()) the job fails with JobTimeout."""
        import torch

        if speaker not in self._speakers:
            known = ", ".join(sorted(self._speakers))
            raise InvalidJob(
                f"cosyvoice model has no speaker {speaker!r}; it has {known}",
                reason="unknown_speaker",
                field="speaker",
            )
        # Sampling (LLM), flow noise and the vocoder's excitation are random: each job draws
        # from its own generator with a fixed seed, so the same request gives the same audio
        # (a redelivered job, a re-run batch) whatever else the engine decodes with it.
        job = SpeechJob(
            text,
            speaker,
            lang,
            torch.Generator().manual_seed(self._seed),
            deadline=deadline,
            speed=speed,
        )
        if self._scheduler is not None:
            audio = self._scheduler.synthesize(job)
        else:
            self.prepare_process()
            audio = self._synthesize_alone(job)
        self.last_stages = job.times
        if not np.isfinite(audio).all():
            raise RuntimeError("cosyvoice produced non-finite samples")
        return audio

    def set_step_observer(self, observer: Callable[[int], None]) -> None:
        """Call `observer(rows)` after every decode step (the worker's batch-size metric)."""
        if self._runner is not None:
            self._runner.on_step = observer

    def _synthesize_alone(self, job: SpeechJob) -> np.ndarray:
        if self._runner is not None:
            return self._runner.run_alone(job)
        # Upstream's own LLM loop: the whole chunk on the job's generator.
        from worker.engines.cosyvoice.decode import drawing_from

        pieces = []
        with drawing_from(job.generator):
            for model_input in self._voice.model_inputs(job):
                pieces.append(self._stages.speak(model_input, job.times, job.speed))
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def _start_engine_thread(self) -> None:
        import torch

        # The batch thread does all of this process's torch work: give it the process's threads.
        torch.set_num_threads(self.threads)
        self._threads_pid = os.getpid()

    def prepare_process(self) -> None:
        """Set this process's torch threads to `threads` (once per process; a forked child
        starts with the parent's single load thread)."""
        if self._threads_pid != os.getpid():
            import torch

            torch.set_num_threads(self.threads)
            self._threads_pid = os.getpid()

    @property
    def stages(self) -> _Stages:
        """The preset's stages (benchmarks time and compare them one by one)."""
        return self._stages

    @property
    def decoder(self) -> Any:
        """The preset's `SpeechTokenDecoder`, or None for upstream's loop (parity checks)."""
        return self._stages.decoder

    @property
    def upstream(self) -> Any:
        """The upstream `CosyVoice` object (benchmarks time its stages)."""
        return self._model


def torch_inference_mode(fn: Callable[P, R]) -> Callable[P, R]:
    """`torch.inference_mode()` as a decorator, with torch imported at the first call."""

    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapped


class _Stages:
    """LLM, flow and vocoder of one preset, run as upstream's non-streaming `tts` runs them."""

    def __init__(self, model: Any, preset: Preset, *, flow: Any, hift: Any) -> None:
        self._llm = model.llm
        self._flow = flow
        self._hift = hift
        # The project's decode loop (None: upstream's `TransformerLM.inference`).
        self.decoder: Any = None
        if preset.decode == "exact":
            from worker.engines.cosyvoice.decode import SpeechTokenDecoder

            self.decoder = SpeechTokenDecoder(model.llm)

    def open_sessions(self) -> None:
        """Open this process's ONNX Runtime sessions now rather than in the first job (a
        second or more for the full-size flow graph); benchmarks call it before timing."""
        estimator = getattr(self._flow, "estimator", None)
        for runtime in (estimator, self._hift):
            opener = getattr(runtime, "open", None)
            if callable(opener):
                opener()

    def speak(
        self, model_input: dict[str, Any], times: StageTimes, speed: float = 1.0
    ) -> np.ndarray:
        import torch

        started = time.perf_counter()
        with torch.inference_mode():
            tokens = list(self._speech_tokens(model_input))
        flow_started = time.perf_counter()
        mel = self.flow_mel(tokens, model_input)
        hift_started = time.perf_counter()
        speech = self.vocode(mel, speed)
        done = time.perf_counter()
        times.llm += flow_started - started
        times.flow += hift_started - flow_started
        times.hift += done - hift_started
        times.tokens.append(tokens)
        return speech

    @torch_inference_mode
    def flow_mel(self, tokens: list[int], model_input: dict[str, Any]) -> Any:
        """The mel of `tokens`: the call upstream `CosyVoiceModel.token2wav(...,
        finalize=True)` makes for a whole utterance with no prompt and no streaming cache."""
        import torch

        mel, _ = self._flow.inference(
            token=torch.tensor(tokens).unsqueeze(dim=0),
            token_len=torch.tensor([len(tokens)], dtype=torch.int32),
            prompt_token=torch.zeros(1, 0, dtype=torch.int32),
            prompt_token_len=torch.tensor([0], dtype=torch.int32),
            prompt_feat=torch.zeros(1, 0, 80),
            prompt_feat_len=torch.tensor([0], dtype=torch.int32),
            embedding=model_input["flow_embedding"],
            flow_cache=torch.zeros(1, 80, 0, 2),
        )
        return mel

    @torch_inference_mode
    def vocode(self, mel: Any, speed: float = 1.0) -> np.ndarray:
        """Float32 samples of `mel` (upstream's finalizing vocoder call). A `speed` other than
        1 stretches the mel in time first, as upstream `token2wav(speed=...)` does."""
        import torch

        if speed != 1.0:
            frames = max(1, int(mel.shape[2] / speed))
            mel = torch.nn.functional.interpolate(mel, size=frames, mode="linear")
        speech, _ = self._hift.inference(speech_feat=mel, cache_source=torch.zeros(1, 1, 0))
        return speech.reshape(-1).numpy()  # type: ignore[no-any-return]

    def _speech_tokens(self, model_input: dict[str, Any]) -> Any:
        import torch

        text = model_input["text"]
        text_len = torch.tensor([text.shape[1]], dtype=torch.int32)
        if self.decoder is not None:
            return self.decoder.generate(text, text_len, model_input["llm_embedding"])
        # Upstream `CosyVoiceModel.llm_job` for SFT: no prompt text, no prompt speech.
        no_prompt = torch.zeros(1, 0, dtype=torch.int32)
        return self._llm.inference(
            text=text,
            text_len=text_len,
            prompt_text=no_prompt,
            prompt_text_len=torch.tensor([0], dtype=torch.int32),
            prompt_speech_token=no_prompt,
            prompt_speech_token_len=torch.tensor([0], dtype=torch.int32),
            embedding=model_input["llm_embedding"],
        )


def _build_stages(model: Any, preset: Preset, model_dir: Path, threads: int) -> _Stages:
    """Apply the preset's levers to the loaded upstream model (in place) and wrap its stages.
    ONNX graphs are exported from the loaded weights once and cached by model fingerprint
    (worker.engines.cosyvoice.export_cache); their sessions open in each process on first use,
    after a worker's fork."""
    if preset.llm_int8:
        from worker.engines.cosyvoice.quantize import quantize_llm_layers

        quantize_llm_layers(model.llm)
    if preset.hift_fold_weight_norm:
        from worker.engines.cosyvoice.vocoder import strip_weight_norm

        strip_weight_norm(model.hift)
    hift = model.hift
    if preset.hift_runtime == "onnx":
        from worker.engines.cosyvoice.vocoder import OnnxHift, export_hift_onnx

        graph = _exported(model_dir, "hift.onnx", "hift-1", lambda p: export_hift_onnx(hift, p))
        hift = OnnxHift(graph, threads=threads)
    flow = model.flow
    if preset.flow_runtime != "upstream":
        from worker.engines.cosyvoice.flow_solver import FlowOptions

        options = FlowOptions(
            steps=preset.flow_steps,
            schedule=preset.flow_schedule,  # type: ignore[arg-type]
            solver=preset.flow_solver,  # type: ignore[arg-type]
        )
        estimator = None
        if preset.flow_runtime == "onnx":
            from worker.engines.cosyvoice.flow_onnx import EXPORTER_VERSION, export_estimator

            graph = _exported(
                model_dir,
                "flow_estimator.onnx",
                EXPORTER_VERSION,
                lambda p: export_estimator(model.flow.decoder.estimator, p),
            )
            estimator = _OrtPerProcess(graph, threads=threads)
        flow = _OwnFlow(model.flow, options, estimator)
    return _Stages(model, preset, flow=flow, hift=hift)


class _OwnFlow:
    """The flow with the project's ODE loop: `inference` as upstream's, other options."""

    def __init__(self, flow: Any, options: Any, estimator: Any) -> None:
        self._flow, self._options, self.estimator = flow, options, estimator

    def inference(self, **inputs: Any) -> Any:
        from worker.engines.cosyvoice.flow_solver import flow_inference

        return flow_inference(self._flow, options=self._options, estimator=self.estimator, **inputs)


class _OrtPerProcess:
    """An `OrtEstimator` opened in the process that first calls it: an ONNX Runtime thread
    pool made in a worker's parent would not survive the fork (as torch's, pytorch#17199)."""

    def __init__(self, graph: Path | bytes, *, threads: int) -> None:
        self._graph, self._threads = graph, threads
        self._session: Any = None
        self._pid = -1

    def open(self) -> None:
        if self._pid != os.getpid():
            from worker.engines.cosyvoice.flow_onnx import OrtEstimator

            self._session = OrtEstimator(self._graph, threads=self._threads)
            self._pid = os.getpid()

    def __call__(self, *inputs: Any) -> Any:
        self.open()
        return self._session(*inputs)


def _exported(model_dir: Path, name: str, version: str, build: Callable[[Path], None]) -> Any:
    """The cached export `name` of this model (a path, or bytes if nothing is writable)."""
    from worker.engines.cosyvoice.export_cache import (
        artifact_key_parts,
        cache_dirs,
        cached_artifact,
    )

    started = time.monotonic()
    fallback = default_cache_dir().parent / "exports"
    artifact = cached_artifact(
        name, artifact_key_parts(model_dir, version), build, cache_dirs(model_dir, fallback)
    )
    log.info("%s ready in %.1f s", name, time.monotonic() - started)
    return artifact


def _load_cosyvoice(path: Path) -> Any:
    try:
        import torch

        # One thread while loading: no OpenMP pool exists when a worker parent forks.
        torch.set_num_threads(1)
        import_runtime()
    except (ImportError, OSError) as exc:  # OSError: a CUDA torchaudio's missing libraries
        raise ConfigError(
            f"engine 'cosyvoice' needs the CosyVoice runtime ({exc}): run make install-cosyvoice"
        ) from exc
    # The upstream classes without `CosyVoice(path)`'s start-up cost (see loader.py); the
    # normalizer FSTs are cached in the model directory, or per user if it is read-only.
    return load_cosyvoice(path, cache_dir=default_cache_dir())
