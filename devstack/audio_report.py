"""Prints what a folder of fetched audio files is: format, rate, channels, length, measured
loudness. `make demo` uses it to show one announcement in three renditions.

    python -m devstack.audio_report out/BATCH

Measured here with soundfile and pyloudnorm (ITU-R BS.1770), independently of the worker's
rendering code, so the figures check the renditions rather than repeat their targets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf

# BS.1770 gates 400 ms blocks: shorter audio has no integrated loudness.
_MIN_SECONDS = 0.4


def describe_file(path: Path) -> str:
    audio, rate = sf.read(str(path), dtype="float64", always_2d=True)
    info = sf.info(str(path))
    seconds = audio.shape[0] / rate
    if seconds >= _MIN_SECONDS:
        loudness = f"{pyloudnorm.Meter(rate).integrated_loudness(audio):6.1f} LUFS"
    else:
        loudness = "   (too short to measure)"
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    peak_db = f"{20 * np.log10(peak):5.1f} dBFS" if peak > 0 else " -inf dBFS"
    return (
        f"{path.name:<16} {info.format:<5} {rate:>6} Hz  {audio.shape[1]} ch  "
        f"{seconds:5.2f} s  {loudness}  sample peak {peak_db}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m devstack.audio_report FOLDER", file=sys.stderr)
        return 2
    files = sorted(p for p in Path(args[0]).iterdir() if p.is_file())
    for path in files:
        print(describe_file(path))
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
