"""The flow estimator (upstream `ConditionalDecoder`) exported to ONNX and run by ONNX Runtime
on the CPU, as a drop-in `Estimator` for `flow_solver`.

The export is the loaded weights' own (no download): batch fixed at 2 (the CFG pair, as upstream
exported it) and a dynamic frame axis. Export needs the TorchScript-based exporter
(`dynamo=False`): the dynamo exporter needs onnxscript, which the runtime does not ship.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch

# Bump when the export itself changes (inputs, opset, wrapper): it is part of the cache key.
EXPORTER_VERSION = "estimator-1"
OPSET = 17
INPUT_NAMES = ("x", "mask", "mu", "t", "spks", "cond")
OptLevel = Literal["disable", "basic", "extended", "all"]


class _EstimatorForExport(torch.nn.Module):
    # Pins upstream's `streaming=False` so the graph has the six tensor inputs only.
    def __init__(self, estimator: Any) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        out: torch.Tensor = self.estimator(x, mask, mu, t, spks, cond)
        return out


def example_inputs(frames: int, *, channels: int = 80, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random estimator inputs of `frames` mel frames, in INPUT_NAMES order (own generator: the
    global RNG is left alone)."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, channels, frames, generator=g),
        torch.ones(2, 1, frames),
        torch.randn(2, channels, frames, generator=g),
        torch.rand(2, generator=g),
        torch.randn(2, channels, generator=g),  # the speaker embedding, projected to 80
        torch.randn(2, channels, frames, generator=g),
    )


def export_estimator(estimator: Any, path: Path, *, frames: int = 200) -> None:
    """Write `estimator` (flow.decoder.estimator, fp32) to `path` as one ONNX file with inputs
    x, mask, mu, t, spks, cond (batch 2, frame axis dynamic) and output `velocity`."""
    x, mask, mu, t, spks, cond = example_inputs(frames, channels=int(estimator.out_channels))
    frame_axis = {"x": {2: "frames"}, "mask": {2: "frames"}, "mu": {2: "frames"}}
    frame_axis |= {"cond": {2: "frames"}, "velocity": {2: "frames"}}
    with warnings.catch_warnings():
        # The tracer warns about Python ints taken from shapes; the dynamic axis is checked by
        # running other lengths through the exported graph (tests/cosyvoice/test_flow.py).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _EstimatorForExport(estimator).eval(),
            (x, mask, mu, t, spks, cond),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["velocity"],
            dynamic_axes=frame_axis,
            opset_version=OPSET,
            dynamo=False,
        )


class OrtEstimator:
    """ONNX Runtime session over an exported estimator, callable like the PyTorch module.

    `model` is the .onnx path or its bytes (`export_cache.cached_artifact` returns either).
    """

    def __init__(self, model: Path | bytes, *, threads: int, opt_level: OptLevel = "all") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[opt_level]
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(
            source, sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
    ) -> torch.Tensor:
        feeds = {
            name: tensor.detach().contiguous().numpy()
            for name, tensor in zip(INPUT_NAMES, (x, mask, mu, t, spks, cond), strict=True)
        }
        (velocity,) = self.session.run(["velocity"], feeds)
        return torch.from_numpy(velocity)
