"""Dynamic int8 for the CosyVoice LLM's per-step linear maps (an approximate lever).

Batch-1 decoding reads every weight for every token, so it is bound by memory bandwidth: int8
weights are a quarter of the bytes. Only the maps run at every step are quantized (attention
q/k/v/out, feed-forward, the output layer); the text encoder runs once per utterance and the
position projections are tabulated once (worker.engines.cosyvoice.decode), so both stay fp32.
Activations are quantized per call with PyTorch's default reduced (7-bit) range, which keeps the
int8 products clear of the 16-bit saturation of AVX2-only kernels; fbgemm picks VNNI kernels
where the CPU has them. Whether both kinds of machine then give bit-identical results was not
checked (only AVX-512 machines were at hand): int8 is an approximate lever either way.
"""

from __future__ import annotations

import warnings
from typing import Any


def quantize_llm_layers(llm: Any) -> int:
    """Replace the step-time `nn.Linear` modules of a loaded v1 TransformerLM with dynamic
    qint8 ones, in place; returns how many were replaced."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    targets: list[tuple[Any, str]] = [(llm, "llm_decoder")]
    for layer in llm.llm.encoders:
        attention = layer.self_attn
        targets += [(attention, n) for n in ("linear_q", "linear_k", "linear_v", "linear_out")]
        targets += [(layer.feed_forward, "w_1"), (layer.feed_forward, "w_2")]
    with warnings.catch_warnings():
        # torch 2.13 marks the quantized tensor API deprecated in favour of torchao, which has
        # no CPU dynamic-int8 path for plain Linear yet; the API still works.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for owner, name in targets:
            wrapped = torch.nn.Sequential(getattr(owner, name))
            quantized = quantize_dynamic(  # type: ignore[no-untyped-call]
                wrapped, {torch.nn.Linear}, dtype=torch.qint8
            )
            setattr(owner, name, quantized[0])
    return len(targets)
