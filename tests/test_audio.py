"""Encoding: every format decodes back to the same length; bad samples are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from worker.audio import duration_seconds, encode


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg"])
def test_round_trip(fmt: str) -> None:
    t = np.arange(16000, dtype=np.float32) / 16000
    samples = 0.5 * np.sin(2 * np.pi * 440 * t)
    data = encode(samples, sample_rate=16000, fmt=fmt)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000
    assert abs(len(decoded) - len(samples)) < 100
    assert float(np.abs(decoded).max()) > 0.3


def test_wav_is_pcm16_and_clipped() -> None:
    data = encode(np.array([2.0, -2.0, 0.0], dtype=np.float32), sample_rate=8000, fmt="wav")
    info = sf.info(io.BytesIO(data))
    assert info.subtype == "PCM_16"
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert decoded.max() <= 1.0 and decoded.min() >= -1.0


@pytest.mark.parametrize("bad", [np.array([], dtype=np.float32), np.array([np.nan, 0.1])])
def test_empty_or_non_finite_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode(bad, sample_rate=8000, fmt="wav")


def test_duration() -> None:
    assert duration_seconds(np.zeros(22050), 22050) == 1.0
