"""Encoding samples into a file format, with soundfile."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

# soundfile (format, subtype) per job format; WAV PCM16 is the default.
_FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    # libsndfile 1.2.2 (bundled with soundfile) writes Opus in Ogg at 8/16/24/48 kHz only
    # (worker.render picks the rate) and MP3 through LAME.
    "opus": ("OGG", "OPUS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def encode(samples: np.ndarray, *, sample_rate: int, fmt: str) -> bytes:
    """Encode float mono samples; values outside [-1, 1] are clipped, not wrapped."""
    if fmt not in _FORMATS:
        raise ValueError(f"unsupported format {fmt!r}")
    audio = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("the engine returned empty or non-finite audio")
    container, subtype = _FORMATS[fmt]
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def encode_master(samples: np.ndarray, *, sample_rate: int) -> bytes:
    """The stored master of a synthesis: FLAC, 24-bit, at the engine's rate. 24 bits keep the
    engine's float output well below what any 16-bit rendition can show."""
    audio = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise ValueError("the engine returned empty or non-finite audio")
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_24")
    return buffer.getvalue()


def decode_master(data: bytes) -> tuple[np.ndarray, int]:
    """A master's float mono samples and its rate."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32")
    return np.asarray(samples, dtype=np.float32).reshape(-1), int(rate)


def duration_seconds(samples: np.ndarray, sample_rate: int) -> float:
    return float(np.asarray(samples).reshape(-1).shape[0]) / float(sample_rate)
