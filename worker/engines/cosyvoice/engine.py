"""The `cosyvoice` engine: CosyVoice-300M-SFT on CPU through the upstream inference code.

The runtime (PyPI `cosyvoice2-fr-infer`, upstream FunAudioLLM/CosyVoice code) is installed by
`make install-cosyvoice`. The model directory is the published one (or one written by
`worker.engines.cosyvoice.random_model`, for tests); it is checked before anything heavy is
imported and is never replaced by a hub download.

Threads: the model loads with one torch thread, so that a worker can load it in its parent
process and fork (no OpenMP pool exists yet to break in the children, pytorch#17199); each
process switches to `threads` on its first synthesis.
"""

from __future__ import annotations

import logging
import os
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, InvalidJob
from core.settings import Settings
from worker.engines.cosyvoice.loader import default_cache_dir, import_runtime, load_cosyvoice
from worker.engines.cosyvoice.model_dir import check_model_dir, is_random_model, model_fingerprint
from worker.engines.cosyvoice.text import TextSplitter

log = logging.getLogger(__name__)

RUNTIME_PACKAGE = "cosyvoice2-fr-infer"


def default_threads(settings: Settings) -> int:
    """`settings.threads`, or (0) the machine's cores divided among the worker processes."""
    if settings.threads > 0:
        return settings.threads
    return max(1, (os.cpu_count() or 1) // max(1, settings.concurrency))


class CosyVoiceSynthesizer:
    """CosyVoice-300M-SFT: the seven built-in speakers, 22050 Hz float32 mono.

    One instance per worker process (or per parent, before the fork); not thread-safe.
    `load_seconds` is how long the import and the load took; `version` names the runtime.
    """

    name = "cosyvoice"

    def __init__(self, model_dir: str, *, threads: int, seed: int = 0) -> None:
        path = check_model_dir(model_dir)
        self.random_weights = is_random_model(path)
        prefix = "cosyvoice-300m-sft-random" if self.random_weights else "cosyvoice-300m-sft"
        self.model_id = f"{prefix}-{model_fingerprint(path)}"
        self.threads = threads
        self._seed = seed
        self._threads_pid = -1
        started = time.monotonic()
        self._model = _load_cosyvoice(path)
        self.load_seconds = time.monotonic() - started
        self.sample_rate = int(self._model.sample_rate)
        self._speakers = frozenset(str(s) for s in self._model.list_available_spks())
        self._splitter = TextSplitter(self._model.frontend)
        # The runtime's release: the worker's info metric reports it as the engine version.
        self.version = f"{RUNTIME_PACKAGE}-{metadata.version(RUNTIME_PACKAGE)}"
        if self.random_weights:
            log.warning("model %s holds RANDOM weights: it produces noise, not speech", path)
        log.info("cosyvoice model %s loaded in %.1f s", self.model_id, self.load_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> CosyVoiceSynthesizer:
        """Load `settings.model_dir` with `settings.threads` (0: cores / concurrency)."""
        return cls(settings.model_dir, threads=default_threads(settings))

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
        }

    def synthesize(self, text: str, *, speaker: str, lang: str | None) -> np.ndarray:
        """Speak `text` in `speaker`'s voice; long text is split into sentence chunks of at most
        about 80 text tokens (the frontend's own limits) and the chunks' audio concatenated."""
        import torch

        if speaker not in self._speakers:
            known = ", ".join(sorted(self._speakers))
            raise InvalidJob(
                f"cosyvoice model has no speaker {speaker!r}; it has {known}",
                reason="unknown_speaker",
                field="speaker",
            )
        chunks = self._splitter.split(text, lang=lang)
        if not chunks:
            raise InvalidJob("nothing to say after text normalization", reason="invalid_text")
        self.prepare_process()
        # Sampling (LLM), flow noise and the vocoder's excitation are random: a fixed seed per
        # job makes the same request give the same audio (a redelivered job, a re-run batch).
        torch.manual_seed(self._seed)
        pieces = []
        for chunk in chunks:
            # text_frontend=False: the text is already normalized (and kept away from the
            # package's French branch, which misroutes zh/en text containing "son", "car"...).
            # These two calls are upstream `CosyVoice.inference_sft` with text_frontend=False,
            # minus its progress bar (which would flood worker logs).
            model_input = self._model.frontend.frontend_sft(chunk, speaker)
            for out in self._model.model.tts(**model_input, stream=False, speed=1.0):
                pieces.append(out["tts_speech"].reshape(-1).numpy())
        audio = np.concatenate(pieces).astype(np.float32, copy=False)
        if not np.isfinite(audio).all():
            raise RuntimeError("cosyvoice produced non-finite samples")
        return audio

    def prepare_process(self) -> None:
        """Set this process's torch threads to `threads` (once per process; a forked child
        starts with the parent's single load thread)."""
        if self._threads_pid != os.getpid():
            import torch

            torch.set_num_threads(self.threads)
            self._threads_pid = os.getpid()

    @property
    def upstream(self) -> Any:
        """The upstream `CosyVoice` object (benchmarks time its stages)."""
        return self._model


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
