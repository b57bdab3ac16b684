"""Speech engines behind one `Synthesizer` protocol. No Celery here.

An engine is built once per worker process by `load_engine(settings)` and then asked for
float32 mono PCM in [-1, 1] at its own sample rate. `identity` names everything about the
engine that changes the audio; it goes into the content key.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from producer.errors import ConfigError, InvalidJob
from producer.settings import COSYVOICE_SFT_SPEAKERS, Settings

ENGINES = ("espeak", "fake", "cosyvoice")


class Synthesizer(Protocol):
    name: str
    model_id: str
    sample_rate: int

    def speakers(self) -> frozenset[str]:
        """The speaker ids this engine can voice."""
        ...

    def identity(self) -> dict[str, str | int]:
        """Everything about the engine that changes the audio (goes into the content key)."""
        ...

    def synthesize(self, text: str, *, speaker: str, lang: str | None) -> np.ndarray:
        """Speak normalized `text`; float32 mono samples at `sample_rate`."""
        ...


# espeak-ng voices for each SFT speaker: (default language, voice variant). The language of a
# job overrides the default; the variant keeps the speaker's gender.
_ESPEAK_SPEAKERS: dict[str, tuple[str, str]] = {
    "中文女": ("zh", "f3"),
    "中文男": ("zh", "m3"),
    "日语男": ("ja", "m3"),
    "粤语女": ("yue", "f3"),
    "英文女": ("en", "f3"),
    "英文男": ("en", "m3"),
    "韩语女": ("ko", "f3"),
}
_ESPEAK_VOICES = {"zh": "cmn", "en": "en-us", "ja": "ja", "yue": "yue", "ko": "ko"}


class EspeakSynthesizer:
    """espeak-ng (Debian package `espeak-ng`): real speech with no model download."""

    name = "espeak"
    sample_rate = 22050

    def __init__(self, *, binary: str = "espeak-ng", words_per_minute: int = 160) -> None:
        path = shutil.which(binary)
        if path is None:
            raise ConfigError(
                f"engine 'espeak' needs the {binary} program: apt-get install espeak-ng"
            )
        self._binary = path
        self._wpm = words_per_minute
        version = (
            subprocess.run(
                [path, "--version"], capture_output=True, text=True, check=False, timeout=30
            )
            .stdout.split(":")[1]
            .split()[0]
        )
        self.model_id = f"espeak-ng-{version}"

    def speakers(self) -> frozenset[str]:
        return frozenset(_ESPEAK_SPEAKERS)

    def identity(self) -> dict[str, str | int]:
        return {
            "engine": self.name,
            "model": self.model_id,
            "sample_rate": self.sample_rate,
            "wpm": self._wpm,
        }

    def synthesize(self, text: str, *, speaker: str, lang: str | None) -> np.ndarray:
        if speaker not in _ESPEAK_SPEAKERS:
            raise InvalidJob(f"espeak has no speaker {speaker!r}", reason="unknown_speaker")
        default_lang, variant = _ESPEAK_SPEAKERS[speaker]
        voice = f"{_ESPEAK_VOICES[lang or default_lang]}+{variant}"
        # Text goes on stdin, never argv: it cannot be taken for an option. No -m: markup in
        # the text is spoken (or skipped) as text, never interpreted as SSML.
        proc = subprocess.run(
            [self._binary, "--stdout", "-b", "1", "-v", voice, "-s", str(self._wpm)],
            input=text.encode("utf-8"),
            capture_output=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise RuntimeError(
                f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}"
            )
        samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if rate != self.sample_rate:
            raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {self.sample_rate}")
        return np.asarray(samples, dtype=np.float32)


class FakeSynthesizer:
    """A deterministic tone whose length follows the text: plumbing tests and benchmarks.

    `delay` seconds of sleep per call stand in for a slow engine.
    """

    name = "fake"
    model_id = "fake-tone-1"
    sample_rate = 16000

    def __init__(self, *, delay: float = 0.0, marker_dir: str = "") -> None:
        self._delay = delay
        self._marker_dir = Path(marker_dir) if marker_dir else None

    def speakers(self) -> frozenset[str]:
        return frozenset(COSYVOICE_SFT_SPEAKERS)

    def identity(self) -> dict[str, str | int]:
        return {"engine": self.name, "model": self.model_id, "sample_rate": self.sample_rate}

    def synthesize(self, text: str, *, speaker: str, lang: str | None) -> np.ndarray:
        if self._marker_dir is not None:
            # Lets a fault test know that this process is inside a synthesis right now.
            marker = self._marker_dir / f"{os.getpid()}-{time.time_ns()}"
            marker.write_text(text, encoding="utf-8")
        if self._delay:
            time.sleep(self._delay)
        seconds = min(0.3 + 0.06 * len(text), 60.0)
        digest = hashlib.sha256(f"{speaker}|{lang}|{text}".encode()).digest()
        freq = 180.0 + digest[0] * 2.0
        t = np.arange(int(seconds * self.sample_rate), dtype=np.float32) / self.sample_rate
        envelope = np.minimum(1.0, np.minimum(t, seconds - t) * 20.0)
        return (0.4 * envelope * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def load_engine(settings: Settings) -> Synthesizer:
    """Build the engine named by settings. Heavy engines are imported only here."""
    if settings.engine == "espeak":
        return EspeakSynthesizer()
    if settings.engine == "fake":
        return FakeSynthesizer(delay=settings.fake_delay, marker_dir=settings.fake_marker_dir)
    if settings.engine == "cosyvoice":
        from worker.cosyvoice_engine import CosyVoiceSynthesizer

        engine: Synthesizer = CosyVoiceSynthesizer.from_settings(settings)
        return engine
    raise ConfigError(
        f"TTS_ENGINE: unknown engine {settings.engine!r}; known: {', '.join(ENGINES)}"
    )
