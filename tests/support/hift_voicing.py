"""Speech-like pitch for a random-weights HiFT.

A random f0 predictor outputs ~0.1 Hz everywhere: all frames fall under the 10 Hz voicing
threshold, so the harmonic source (phases, running phase sum, voiced noise) never reaches the
output and comparisons of it would prove nothing. Rescaling the predictor's last layer gives
f0 = |centre + spread * z| with z about unit-normal per frame: mostly 30-300 Hz, a few
unvoiced frames between.
"""

from __future__ import annotations

from typing import Any


def give_speech_like_f0(hift: Any, mel: Any, *, centre: float = 120.0, spread: float = 90.0) -> Any:
    """Rescale `hift.f0_predictor.classifier` in place (calibrated on `mel`); returns the
    f0 [B, frames] it now predicts for `mel`."""
    import torch

    predictor = hift.f0_predictor
    with torch.no_grad():
        raw = predictor.classifier(predictor.condnet(mel).transpose(1, 2)).squeeze(-1)
        scale = spread / float(raw.std())
        # new output = centre + scale * (old output - its mean): both terms move the bias.
        predictor.classifier.weight.mul_(scale)
        bias = predictor.classifier.bias
        bias.copy_(centre + scale * (bias - float(raw.mean())))
        result: Any = predictor(mel)
    return result
