"""The demo's audio report measures the files it is given (rate, channels, length, loudness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf

from devstack.audio_report import describe_file, main


def test_a_tone_is_described_by_what_the_file_holds(tmp_path: Path) -> None:
    rate = 8000
    t = np.arange(rate * 2) / rate
    tone = 0.1 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "ivr.wav"
    sf.write(str(path), tone, rate, subtype="PCM_16")
    expected = pyloudnorm.Meter(rate).integrated_loudness(sf.read(str(path))[0])

    line = describe_file(path)
    assert "8000 Hz" in line and "1 ch" in line and "2.00 s" in line
    assert f"{expected:6.1f} LUFS" in line


def test_an_empty_folder_is_exit_1_and_usage_exit_2(tmp_path: Path) -> None:
    assert main([str(tmp_path)]) == 1
    assert main([]) == 2
