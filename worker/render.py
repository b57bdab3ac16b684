"""A rendition: the engine's samples made into the file a job asked for.

resample (soxr) -> lead and trail silence -> loudness to a target (pyloudnorm, ITU-R BS.1770)
under a true-peak ceiling -> encode (soundfile). The silence goes in before the loudness is set
so that the file as delivered measures at the target (silence stays exact zeros under gain).
With no options set this is exactly the old output: the engine's rate, no gain, no silence,
WAV PCM16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

from core.contract import OPUS_RATES, JobSpec
from worker.audio import encode

# BS.1770 measures in 400 ms blocks: shorter audio is measured as repeats of itself.
_BLOCK_SECONDS = 0.4
# True peak is read on a 4x oversampled signal (BS.1770 Annex 2 asks for at least 4x at 48 kHz).
_OVERSAMPLE = 4
# The limiter's gain moves over this window: short enough to keep the loudness, long enough not
# to distort as a clipper would.
_LIMITER_SECONDS = 0.005
# Loudness and limiting pull against each other; a few rounds settle within 0.1 LU.
_ROUNDS = 6


@dataclass(frozen=True)
class Rendered:
    """A rendition's bytes and what describes it (object metadata, the job's result)."""

    data: bytes
    sample_rate: int
    seconds: float
    loudness: float | None  # measured LUFS where a target was asked for


def output_rate(spec: JobSpec, engine_rate: int) -> int:
    """The rate of the file: the job's, else the engine's; Opus, which libsndfile writes only
    at 8, 16, 24 and 48 kHz, gets 48 kHz (its own internal rate) for another engine rate."""
    rate = spec.sample_rate or engine_rate
    if spec.fmt == "opus" and rate not in OPUS_RATES:
        return 48000
    return rate


def render(samples: np.ndarray, *, source_rate: int, spec: JobSpec) -> Rendered:
    """The rendition `spec` asks for of float mono `samples` at `source_rate`."""
    audio = np.asarray(samples, dtype=np.float32).reshape(-1)
    rate = output_rate(spec, source_rate)
    audio = resample(audio, source_rate, rate)
    audio = pad_silence(
        audio, rate=rate, lead_ms=spec.lead_silence_ms, trail_ms=spec.trail_silence_ms
    )
    measured = None
    if spec.loudness is not None:
        audio = normalize_loudness(
            audio, rate=rate, target_lufs=spec.loudness, ceiling_dbtp=spec.true_peak
        )
        measured = integrated_loudness(audio, rate)
    data = encode(audio, sample_rate=rate, fmt=spec.fmt)
    return Rendered(data=data, sample_rate=rate, seconds=audio.shape[0] / rate, loudness=measured)


def resample(audio: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    if rate == source_rate:
        return audio
    return np.asarray(soxr.resample(audio, source_rate, rate, quality="HQ"), dtype=np.float32)


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (-inf for silence)."""
    import pyloudnorm

    block = int(_BLOCK_SECONDS * rate) + 1
    if 0 < audio.shape[0] < block:
        audio = np.tile(audio, -(-block // audio.shape[0]))
    return float(pyloudnorm.Meter(rate).integrated_loudness(audio.astype(np.float64)))


def true_peak_dbtp(audio: np.ndarray, rate: int) -> float:
    peak = float(np.max(np.abs(_oversampled(audio, rate)), initial=0.0))
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def normalize_loudness(
    audio: np.ndarray, *, rate: int, target_lufs: float, ceiling_dbtp: float
) -> np.ndarray:
    """Gain to `target_lufs`, with a look-ahead limiter holding true peaks under the ceiling.
    Where the limiter takes loudness away, the gain is raised again and the limiter rerun."""
    loudness = integrated_loudness(audio, rate)
    if not np.isfinite(loudness):
        return audio  # digital silence has no loudness to set
    ceiling = 10.0 ** (ceiling_dbtp / 20.0)
    gain_db = target_lufs - loudness
    out = audio
    for _ in range(_ROUNDS):
        out = _limit(audio * np.float32(10.0 ** (gain_db / 20.0)), rate=rate, ceiling=ceiling)
        error = target_lufs - integrated_loudness(out, rate)
        if abs(error) < 0.05:
            break
        gain_db += error
    # The gain curve is smooth between samples; what it leaves over the ceiling is scaled off.
    over = true_peak_dbtp(out, rate) - ceiling_dbtp
    if over > 0:
        out = out * np.float32(10.0 ** (-over / 20.0))
    return out.astype(np.float32)


def _oversampled(audio: np.ndarray, rate: int) -> np.ndarray:
    return np.asarray(soxr.resample(audio, rate, rate * _OVERSAMPLE, quality="HQ"))


def _limit(audio: np.ndarray, *, rate: int, ceiling: float) -> np.ndarray:
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    peaks = np.abs(_oversampled(audio, rate))
    # The gain each sample needs: the least over the oversampled points around it.
    need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    need = minimum_filter1d(need, size=2 * _OVERSAMPLE + 1)[::_OVERSAMPLE][: audio.shape[0]]
    if need.shape[0] < audio.shape[0]:
        need = np.pad(need, (0, audio.shape[0] - need.shape[0]), constant_values=1.0)
    if need.min() >= 1.0:
        return audio
    # A minimum over 2w+1 samples, then a mean over w: the smooth curve never exceeds any
    # sample's own need (each mean's terms are minima that include that sample).
    width = max(1, int(_LIMITER_SECONDS * rate))
    held = minimum_filter1d(need, size=2 * width + 1)
    gain = uniform_filter1d(held, size=width)
    limited: np.ndarray = (audio * gain).astype(np.float32)
    return limited


def pad_silence(audio: np.ndarray, *, rate: int, lead_ms: int, trail_ms: int) -> np.ndarray:
    """Digital silence (exact zeros) before and after, rounded to whole samples."""
    lead = round(lead_ms * rate / 1000)
    trail = round(trail_ms * rate / 1000)
    if not lead and not trail:
        return audio
    return np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(trail, np.float32)]).astype(
        np.float32
    )
