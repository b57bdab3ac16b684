"""espeak-ng: the embedded engine. Real speech with no model download; no Celery here."""

from __future__ import annotations

import io
import shutil
import subprocess
import time

import numpy as np
import soundfile as sf

from core.errors import ConfigError, InvalidJob, JobTimeout

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
# No text within the length limit takes espeak-ng this long: a hung process, not a slow one.
_RUN_SECONDS = 120.0


class EspeakSynthesizer:
    """espeak-ng (Debian package `espeak-ng`): real speech with no model download."""

    name = "espeak"
    sample_rate = 22050
    # A job's `speed` scales the words per minute (-s); other engines refuse it.
    supports_speed = True

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

    def synthesize(
        self,
        text: str,
        *,
        speaker: str,
        lang: str | None,
        deadline: float | None = None,
        speed: float = 1.0,
    ) -> np.ndarray:
        if speaker not in _ESPEAK_SPEAKERS:
            raise InvalidJob(f"espeak has no speaker {speaker!r}", reason="unknown_speaker")
        default_lang, variant = _ESPEAK_SPEAKERS[speaker]
        voice = f"{_ESPEAK_VOICES[lang or default_lang]}+{variant}"
        limit = _RUN_SECONDS
        if deadline is not None:
            limit = min(limit, deadline - time.monotonic())
            if limit <= 0:
                raise JobTimeout("espeak: the job's deadline passed before it started")
        # Text goes on stdin, never argv: it cannot be taken for an option. No -m: markup in
        # the text is spoken (or skipped) as text, never interpreted as SSML.
        try:
            proc = subprocess.run(
                [
                    self._binary,
                    "--stdout",
                    "-b",
                    "1",
                    "-v",
                    voice,
                    "-s",
                    str(round(self._wpm * speed)),
                ],
                input=text.encode("utf-8"),
                capture_output=True,
                check=False,
                timeout=limit,
            )
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout("espeak: past the job's deadline") from None
            raise
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise RuntimeError(
                f"espeak-ng exited {proc.returncode}: {proc.stderr.decode(errors='replace')[:200]}"
            )
        samples, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        if rate != self.sample_rate:
            raise RuntimeError(f"espeak-ng wrote {rate} Hz, expected {self.sample_rate}")
        return np.asarray(samples, dtype=np.float32)
