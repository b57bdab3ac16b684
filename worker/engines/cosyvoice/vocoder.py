"""Faster HiFT vocoder for the CosyVoice engine: weight norm folded into the weights, and an
ONNX Runtime path for the whole deterministic computation.

Only the cosyvoice engine imports this module (torch is a hard dependency there).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch


def strip_weight_norm(hift: Any) -> int:
    """Fold weight normalization into plain weights, in place, in every submodule of `hift`
    (an upstream `HiFTGenerator`, or any module). Returns how many were removed.

    Upstream's own `HiFTGenerator.remove_weight_norm` calls the old hook-style remover, which
    fails on the `torch.nn.utils.parametrizations.weight_norm` that upstream uses with torch 2.x
    (and `m_source` has no such method): this handles both styles. The folded weight is the
    value the normalization computes on every forward, so the output is unchanged.
    """
    from torch.nn.utils import parametrize, remove_weight_norm
    from torch.nn.utils.parametrizations import _WeightNorm  # the parametrization's own class
    from torch.nn.utils.weight_norm import WeightNorm

    removed = 0
    for module in hift.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                chain = list(module.parametrizations[name])
                # Fold only a pure weight-norm chain: leave_parametrized would also bake in
                # any other parametrization stacked on the same tensor.
                if chain and all(isinstance(p, _WeightNorm) for p in chain):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    removed += 1
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                remove_weight_norm(module, hook.name)
                removed += 1
    return removed


def load_hift(model_dir: str | os.PathLike[str]) -> Any:
    """The upstream `HiFTGenerator` of a model directory, built from its `cosyvoice.yaml` and
    `hift.pt`, in eval mode, without building the LLM and flow (seconds instead of a full
    `CosyVoice` load): for exporting, tests and benchmarks."""
    from hyperpyyaml import load_hyperpyyaml

    directory = Path(model_dir)
    lines = (directory / "cosyvoice.yaml").read_text(encoding="utf-8").splitlines()
    # Keep the `hift:` block and the top-level scalars it may reference (`<sample_rate>`).
    kept: list[str] = []
    in_hift = False
    for line in lines:
        top = re.match(r"^([A-Za-z_]\w*):(.*)$", line)
        if top:
            in_hift = top.group(1) == "hift"
            value = top.group(2).strip()
            if not in_hift and value and not value.startswith("!"):
                kept.append(line)
                continue
        if in_hift:
            kept.append(line)
    hift = load_hyperpyyaml("\n".join(kept))["hift"]
    state = torch.load(directory / "hift.pt", map_location="cpu", weights_only=True)
    # Some releases prefix the generator's keys (upstream's loader strips it too).
    hift.load_state_dict({k.replace("generator.", ""): v for k, v in state.items()}, strict=True)
    return hift.eval()
