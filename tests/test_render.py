"""Renditions (worker/render.py): every format decodes at the asked rate, length and loudness;
silence is where and as long as asked; the defaults give exactly the old bytes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import soundfile as sf

from core.contract import FORMATS, JobSpec, validate_spec
from core.settings import COSYVOICE_SFT_SPEAKERS
from worker.audio import encode
from worker.engines.fake import FakeSynthesizer
from worker.render import integrated_loudness, render, true_peak_dbtp

ENGINE_RATE = 22050  # espeak's and CosyVoice's rate: not one Opus takes


def spec(**options: object) -> JobSpec:
    fields: dict[str, object] = {"text": "Platform nine", "speaker": "英文女", **options}
    return validate_spec(fields, speakers=frozenset(COSYVOICE_SFT_SPEAKERS), max_chars=500)


def speech_like(seconds: float = 3.0, *, rate: int = ENGINE_RATE, seed: int = 1) -> np.ndarray:
    """Syllables of a few harmonics with pauses between, at a level far from any target: a
    crest factor like speech, so the limiter has work to do at -16 LUFS."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 110 + 60 * rng.random()
    voiced = sum(np.sin(2 * math.pi * f0 * k * t) / k for k in range(1, 8))
    syllables = np.clip(np.sin(2 * math.pi * (3 + rng.random()) * t), 0, None) ** 2
    level = 0.02 + 0.3 * rng.random()
    return (level * voiced * syllables / 2.5).astype(np.float32)


def decoded(data: bytes) -> tuple[np.ndarray, int, int]:
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples[:, 0], rate, samples.shape[1]


def test_defaults_give_exactly_the_old_bytes() -> None:
    samples = speech_like()
    old = encode(samples, sample_rate=ENGINE_RATE, fmt="wav")
    assert render(samples, source_rate=ENGINE_RATE, spec=spec()).data == old
    assert render(samples, source_rate=ENGINE_RATE, spec=spec(format="flac")).data == encode(
        samples, sample_rate=ENGINE_RATE, fmt="flac"
    )


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("rate", "target"), [(8000, -23.0), (48000, -16.0)])
def test_every_format_decodes_at_rate_length_and_loudness(
    fmt: str, rate: int, target: float
) -> None:
    samples = speech_like()
    out = render(
        samples, source_rate=ENGINE_RATE, spec=spec(format=fmt, sample_rate=rate, loudness=target)
    )
    audio, got_rate, channels = decoded(out.data)
    assert (got_rate, channels) == (rate, 1)
    # Within one frame (sample) of the resampled length; codecs keep it (gapless decoding).
    assert abs(audio.shape[0] - round(samples.shape[0] * rate / ENGINE_RATE)) <= 1
    assert abs(integrated_loudness(audio, rate) - target) < 0.5
    # The ceiling (-1 dBTP) holds in the lossless files; lossy codecs may add a little.
    if fmt in ("wav", "flac"):
        assert true_peak_dbtp(audio, rate) <= -1.0 + 0.1


def test_loud_peaks_are_limited_and_the_target_still_met() -> None:
    # A 40 dB crest (sparse clicks over a quiet tone): gain alone would clip far over 0 dBFS.
    t = np.arange(ENGINE_RATE * 3) / ENGINE_RATE
    samples = (0.01 * np.sin(2 * math.pi * 300 * t)).astype(np.float32)
    samples[::5000] = 0.9
    out = render(samples, source_rate=ENGINE_RATE, spec=spec(loudness=-14, true_peak=-2))
    audio, rate, _ = decoded(out.data)
    assert abs(integrated_loudness(audio, rate) + 14) < 0.5
    assert true_peak_dbtp(audio, rate) <= -2 + 0.1


@pytest.mark.parametrize("fmt", FORMATS)
def test_silence_lengths_within_one_frame_and_lead_is_silent(fmt: str) -> None:
    samples = speech_like(1.0)
    rate = 16000
    out = render(
        samples,
        source_rate=ENGINE_RATE,
        spec=spec(format=fmt, sample_rate=rate, lead_silence_ms=750, trail_silence_ms=333),
    )
    audio, got_rate, _ = decoded(out.data)
    assert got_rate == rate
    speech = round(samples.shape[0] * rate / ENGINE_RATE)
    lead, trail = round(0.750 * rate), round(0.333 * rate)
    assert abs(audio.shape[0] - (lead + speech + trail)) <= 1
    if fmt in ("wav", "flac"):
        assert not audio[: lead - 1].any()  # digital silence, exact zeros
    else:
        # A lossy codec smears the onset back a few ms (pre-echo); before that, under -60 dBFS.
        assert np.abs(audio[: lead - round(0.010 * rate)]).max() < 1e-3
    # The speech starts where the silence ends (within one frame), not later.
    first = int(np.argmax(np.abs(audio) > 1e-3))
    assert lead - 1 <= first <= lead + round(0.02 * rate)


def test_silence_does_not_move_the_measured_loudness() -> None:
    out = render(
        speech_like(2.0),
        source_rate=ENGINE_RATE,
        spec=spec(loudness=-16, lead_silence_ms=1500, trail_silence_ms=1500),
    )
    audio, rate, _ = decoded(out.data)
    assert abs(integrated_loudness(audio, rate) + 16) < 0.5


def test_ten_renditions_at_one_target_are_within_one_lu() -> None:
    # Ten voices at levels 25 dB apart, as a batch from different speakers would come.
    engine = FakeSynthesizer()
    measured = []
    for i in range(10):
        samples = speech_like(2.0 + i / 5, seed=i) if i % 2 else None
        if samples is None:
            samples = engine.synthesize(f"Announcement {i}", speaker="英文女", lang=None) * (
                0.05 + i / 10
            )
        out = render(samples, source_rate=ENGINE_RATE, spec=spec(format="mp3", loudness=-23))
        audio, rate, _ = decoded(out.data)
        measured.append(integrated_loudness(audio, rate))
    assert max(measured) - min(measured) < 1.0, measured


def test_opus_at_a_rate_it_lacks_is_written_at_48k() -> None:
    out = render(speech_like(1.0), source_rate=ENGINE_RATE, spec=spec(format="opus"))
    _, rate, _ = decoded(out.data)
    assert rate == out.sample_rate == 48000
    # A rate Opus has is kept as it is.
    kept = render(speech_like(1.0, rate=16000), source_rate=16000, spec=spec(format="opus"))
    assert decoded(kept.data)[1] == 16000


def test_result_describes_the_file() -> None:
    out = render(
        speech_like(1.0),
        source_rate=ENGINE_RATE,
        spec=spec(sample_rate=8000, loudness=-20, trail_silence_ms=500),
    )
    audio, rate, _ = decoded(out.data)
    assert out.sample_rate == rate == 8000
    assert out.seconds == pytest.approx(audio.shape[0] / rate)
    assert out.loudness is not None and abs(out.loudness + 20) < 0.1


def test_digital_silence_is_left_alone_by_a_loudness_target() -> None:
    out = render(np.zeros(8000, np.float32), source_rate=16000, spec=spec(loudness=-16))
    audio, _, _ = decoded(out.data)
    assert not audio.any()
