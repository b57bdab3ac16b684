"""Faster HiFT vocoder for the CosyVoice engine: weight norm folded into the weights, and an
ONNX Runtime path for the whole deterministic computation.

Only the cosyvoice engine imports this module (torch is a hard dependency there).
"""

from __future__ import annotations

import math
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
                    _own_class(module)
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    removed += 1
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                remove_weight_norm(module, hook.name)
                removed += 1
    return removed


def _own_class(module: Any) -> None:
    """Give a parametrized module a class of its own. torch makes one class per parametrized
    module, but `copy.deepcopy` shares it with the copy, and removing the last parametrization
    deletes the tensor's property from that class: the other module would lose its `weight`."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


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


# ONNX graph interface. The graph takes the random draws as inputs: ONNX Runtime's generators
# differ from torch's, and a seeded job must give the same audio on either path.
_INPUTS = ("speech_feat", "cache_source", "phase", "sine_noise")
_OUTPUTS = ("speech", "source")
_META_UPSAMPLE = "tts_batch.hift.samples_per_frame"
_META_HARMONICS = "tts_batch.hift.harmonics"
_META_FORMAT = "tts_batch.hift.format"
_FORMAT = "1"
_OPSET = 17


class _HiftGraph(torch.nn.Module):
    """Upstream `HiFTGenerator.inference` as one traceable module around the loaded submodules,
    given the random draws. Two changes make it exportable: `torch.stft` and `torch.istft`
    become convolutions with a fixed windowed DFT basis (n_fft is 16, so a direct DFT is cheap),
    and the excitation's phase is summed in float64, as torch's CPU cumsum does internally for
    float32 (a float32 running sum over 30 s of samples would drift by whole radians)."""

    stft_basis: torch.Tensor
    istft_basis: torch.Tensor
    window_sq: torch.Tensor
    multiples: torch.Tensor

    def __init__(self, hift: Any) -> None:
        super().__init__()
        self.hift = hift
        sine = hift.m_source.l_sin_gen
        self.sampling_rate = int(sine.sampling_rate)
        self.sine_amp = float(sine.sine_amp)
        self.noise_std = float(sine.noise_std)
        self.voiced_threshold = float(sine.voiced_threshold)
        self.harmonics = int(sine.harmonic_num) + 1
        self.upsample = int(hift.f0_upsamp.scale_factor)
        self.n_fft = int(hift.istft_params["n_fft"])
        self.hop = int(hift.istft_params["hop_len"])
        stft, istft, window_sq = _dft_bases(hift.stft_window.double(), self.n_fft)
        self.register_buffer("stft_basis", stft)
        self.register_buffer("istft_basis", istft)
        self.register_buffer("window_sq", window_sq)
        multiples = torch.arange(1, self.harmonics + 1, dtype=torch.float32)
        self.register_buffer("multiples", multiples.reshape(1, -1, 1))

    def forward(
        self, speech_feat: Any, cache_source: Any, phase: Any, sine_noise: Any
    ) -> tuple[Any, Any]:
        h = self.hift
        f0 = h.f0_predictor(speech_feat)  # [B, T]
        batch = f0.shape[0]
        # Nearest upsampling by an integer factor: each frame's f0 repeated.
        f0 = f0.unsqueeze(-1).expand(-1, -1, self.upsample).reshape(batch, 1, -1)
        # SineGen with its draws given: same operations in the same order as upstream.
        step = f0 * self.multiples / self.sampling_rate
        theta = 2 * math.pi * (torch.cumsum(step.double(), dim=-1).float() % 1)
        sines = self.sine_amp * torch.sin(theta + phase)
        uv = (f0 > self.voiced_threshold).float()
        noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
        sines = sines * uv + noise_amp * sine_noise
        source = h.m_source.l_tanh(h.m_source.l_linear(sines.transpose(1, 2))).transpose(1, 2)
        # The cache overwrites the start of the source (upstream avoids glitches that way).
        source = torch.cat([cache_source, source[:, :, cache_source.shape[2] :]], dim=2)
        return self._decode(speech_feat, source), source

    def _decode(self, x: Any, source: Any) -> Any:
        h = self.hift
        half = self.n_fft // 2
        padded = torch.nn.functional.pad(source, (half, half), mode="reflect")
        spec = torch.nn.functional.conv1d(padded, self.stft_basis, stride=self.hop)
        x = h.conv_pre(x)
        kernels = int(h.num_kernels)
        for i, up in enumerate(h.ups):
            x = up(torch.nn.functional.leaky_relu(x, h.lrelu_slope))
            if i == len(h.ups) - 1:
                x = h.reflection_pad(x)
            x = x + h.source_resblocks[i](h.source_downs[i](spec))
            total = h.resblocks[i * kernels](x)
            for j in range(1, kernels):
                total = total + h.resblocks[i * kernels + j](x)
            x = total / kernels
        x = h.conv_post(torch.nn.functional.leaky_relu(x))
        magnitude = torch.clamp(torch.exp(x[:, : half + 1]), max=1e2)
        angle = torch.sin(x[:, half + 1 :])
        parts = torch.cat([magnitude * torch.cos(angle), magnitude * torch.sin(angle)], dim=1)
        # Inverse STFT: windowed inverse DFT, overlap-add, divided by the summed squared window,
        # and the centre padding cut off both ends.
        frames = torch.nn.functional.conv_transpose1d(parts, self.istft_basis, stride=self.hop)
        ones = torch.ones_like(parts[:1, :1])
        envelope = torch.nn.functional.conv_transpose1d(ones, self.window_sq, stride=self.hop)
        speech = (frames / envelope)[:, 0, half:-half]
        return torch.clamp(speech, -h.audio_limit, h.audio_limit)


def _dft_bases(window: Any, n_fft: int) -> tuple[Any, Any, Any]:
    """Conv weights (built in float64, stored float32) for a one-sided STFT of `n_fft` points
    as [real; imag] channels, its inverse with the window applied, and the squared window."""
    bins = n_fft // 2 + 1
    k = torch.arange(bins, dtype=torch.float64).unsqueeze(1)
    n = torch.arange(n_fft, dtype=torch.float64).unsqueeze(0)
    angle = 2 * math.pi * k * n / n_fft
    cos, sin = torch.cos(angle), torch.sin(angle)
    sin[0] = 0.0  # the DC and Nyquist rows are exactly real
    if n_fft % 2 == 0:
        sin[-1] = 0.0
    forward = torch.cat([cos * window, -sin * window]).unsqueeze(1)
    # A one-sided spectrum counts the inner bins twice (their mirror images).
    weight = torch.full((bins, 1), 2.0, dtype=torch.float64)
    weight[0] = 1.0
    if n_fft % 2 == 0:
        weight[-1] = 1.0
    inverse = torch.cat([weight * cos * window, -weight * sin * window]) / n_fft
    return (
        forward.float(),
        inverse.unsqueeze(1).float(),
        (window * window).reshape(1, 1, -1).float(),
    )


def export_hift_onnx(hift: Any, path: str | os.PathLike[str]) -> None:
    """Write `hift` (a loaded upstream `HiFTGenerator`) as an ONNX file at `path` for
    `OnnxHift`: mel in, waveform and source out, batch and time axes dynamic. Weight norm is
    folded first in a copy; `hift` itself is left as it was."""
    import copy

    import onnx

    graph = _HiftGraph(copy.deepcopy(hift).eval())
    strip_weight_norm(graph)
    frames = 20
    samples = frames * graph.upsample
    example = (
        torch.randn(1, 80, frames),
        torch.zeros(1, 1, 0),
        torch.zeros(1, graph.harmonics, 1),
        torch.randn(1, graph.harmonics, samples),
    )
    axes = {
        "speech_feat": {0: "batch", 2: "frames"},
        "cache_source": {0: "batch", 2: "cached"},
        "phase": {0: "batch"},
        "sine_noise": {0: "batch", 2: "samples"},
        "speech": {0: "batch", 1: "samples"},
        "source": {0: "batch", 2: "samples"},
    }
    target = Path(path)
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example,
            str(target),
            input_names=list(_INPUTS),
            output_names=list(_OUTPUTS),
            dynamic_axes=axes,
            opset_version=_OPSET,
            dynamo=False,  # the dynamo exporter needs onnxscript, not in the runtime set
        )
    model = onnx.load(str(target))
    meta = {
        _META_FORMAT: _FORMAT,
        _META_UPSAMPLE: str(graph.upsample),
        _META_HARMONICS: str(graph.harmonics),
    }
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(target))


class OnnxHift:
    """The HiFT vocoder on ONNX Runtime (CPU), from a file written by `export_hift_onnx` (a
    path, or its bytes). `inference` is a drop-in for upstream `HiFTGenerator.inference`: same
    arguments, same `(speech [B, samples], source [B, 1, samples])`, and the same draws from
    torch's global RNG in the same order, so a seeded run gets the same excitation noise.

    The session is created on the first call in each process (and again after a fork): an ONNX
    Runtime thread pool does not survive a fork, and a worker loads its engine before forking.
    `threads` defaults to torch's thread count at that moment. Not thread-safe.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, *, threads: int | None = None):
        self._model = model if isinstance(model, bytes) else str(Path(model))
        self._threads = threads
        self._session: Any = None
        self._session_pid = -1
        # Sessions inherited through a fork: never freed, since freeing one joins pool threads
        # that do not exist in the child (it would wait forever).
        self._inherited: list[Any] = []
        self._upsample = 0
        self._harmonics = 0

    def open(self) -> None:
        """Open this process's session now (else the first `inference` does)."""
        self._ensure_session()

    def _ensure_session(self) -> Any:
        if self._session is None or self._session_pid != os.getpid():
            import onnxruntime as ort

            if self._session is not None:
                self._inherited.append(self._session)

            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(
                self._model, sess_options=options, providers=["CPUExecutionProvider"]
            )
            meta = session.get_modelmeta().custom_metadata_map
            if meta.get(_META_FORMAT) != _FORMAT:
                raise ValueError("not a HiFT model written by export_hift_onnx (or another format)")
            self._upsample = int(meta[_META_UPSAMPLE])
            self._harmonics = int(meta[_META_HARMONICS])
            self._session = session
            self._session_pid = os.getpid()
        return self._session

    def inference(self, speech_feat: Any, cache_source: Any = None) -> tuple[Any, Any]:
        """Mel `speech_feat` [B, 80, frames] to `(speech, source)`, as upstream."""
        from torch.distributions.uniform import Uniform

        session = self._ensure_session()
        if cache_source is None:
            cache_source = torch.zeros(1, 1, 0)
        batch, frames = int(speech_feat.shape[0]), int(speech_feat.shape[2])
        samples = frames * self._upsample
        # Upstream's draws, in its order: the harmonics' initial phases (uniform, the
        # fundamental's then zeroed), the sine noise, then the noise branch's normal draw, which
        # upstream inference discards but which still advances the generator.
        with torch.inference_mode():
            phase = Uniform(low=-math.pi, high=math.pi).sample((batch, self._harmonics, 1))
            phase[:, 0, :] = 0
            sine_noise = torch.randn(batch, self._harmonics, samples)
            torch.randn(batch, 1, samples)
        feeds = {
            "speech_feat": _numpy(speech_feat),
            "cache_source": _numpy(cache_source),
            "phase": phase.numpy(),
            "sine_noise": sine_noise.numpy(),
        }
        speech, source = session.run(list(_OUTPUTS), feeds)
        return torch.from_numpy(speech), torch.from_numpy(source)


def _numpy(tensor: Any) -> Any:
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy()
