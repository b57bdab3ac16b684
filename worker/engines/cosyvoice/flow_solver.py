"""The flow stage's ODE loop, ours, driving the loaded upstream estimator.

Upstream `MaskedDiffWithXvec.inference` encodes the speech tokens (conformer encoder + length
regulator) and hands the result to `ConditionalCFM`, which integrates the flow-matching ODE from
noise (t=0) to a mel spectrogram (t=1) with 10 Euler steps on a cosine time table and
classifier-free guidance (CFG). `flow_inference` below runs the same stages with upstream's
modules and replaces only that loop, so the number of steps, the time table and the solver
become options. `UPSTREAM` reproduces upstream's output exactly under the same seed.

The fewer-step options are approximate, and how good they are can only be judged on trained
weights: a random estimator's velocity is not smooth in t (upstream embeds t with sinusoids at
scale 1000; on the tiny random model v changes by 19% for dt = 0.001), so on random weights any
t off upstream's grid meets an unrelated field and the mel errors say nothing about speech.

The estimator is anything callable as `estimator(x, mask, mu, t, spks, cond)` on a batch of two
rows (conditional, unconditional), as upstream's `ConditionalDecoder` is: the PyTorch module
itself, or `flow_onnx.OrtEstimator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Schedule = Literal["cosine", "linear", "sway", "pruned"]
Solver = Literal["euler", "midpoint", "ab2"]
Estimator = Callable[..., torch.Tensor]

# Upstream's mel frame rate: 22050 Hz audio, hop 256.
MEL_RATE = 22050 / 256
# Upstream keeps the last 34 frames of noise and mu for its streaming overlap cache.
_CACHE_TAIL = 34

# "pruned": step tables that keep the start of upstream's 10-step cosine table, where the
# velocity changes fastest, and take longer strides later, where the path is nearly straight
# (the idea of EPSS, Zheng et al. 2025, applied to upstream's own table). Indices into the
# 11 points of the 10-step cosine table.
_PRUNED_INDICES: dict[int, tuple[int, ...]] = {
    4: (0, 1, 3, 6, 10),
    5: (0, 1, 2, 4, 7, 10),
    6: (0, 1, 2, 3, 5, 7, 10),
    7: (0, 1, 2, 3, 4, 6, 8, 10),
    8: (0, 1, 2, 3, 4, 5, 7, 8, 10),
}


@dataclass(frozen=True)
class FlowOptions:
    """How the flow ODE is integrated.

    steps: solver steps. Estimator calls (each a batch of 2 for CFG) are `steps` for "euler"
      and "ab2" (two-step Adams-Bashforth: second order for the cost of Euler, the first step
      is Euler), `2 * steps` for "midpoint".
    schedule: the time table. "cosine" is upstream's (t = 1 - cos(pi/2 u), u uniform);
      "linear" is u itself; "sway" is F5-TTS sway sampling t = u + sway * (cos(pi/2 u) - 1 + u)
      (sway -1 is "cosine", 0 "linear"); "pruned" is a subset of upstream's 10-step cosine
      table (steps 4 to 8).
    """

    steps: int = 10
    schedule: Schedule = "cosine"
    solver: Solver = "euler"
    sway: float = -1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.schedule == "pruned" and self.steps not in _PRUNED_INDICES:
            raise ValueError(f"pruned schedule has tables for steps {sorted(_PRUNED_INDICES)}")
        if not -1.0 <= self.sway <= 0.0:
            # Below -1 the table stops being monotonic; above 0 it crowds the end instead.
            raise ValueError(f"sway must lie in [-1, 0], got {self.sway}")

    @property
    def estimator_calls(self) -> int:
        return 2 * self.steps if self.solver == "midpoint" else self.steps

    def time_table(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The `steps + 1` times from 0 to 1, in `dtype`."""
        if self.schedule == "pruned":
            full = _cosine(torch.linspace(0, 1, 11, dtype=dtype))
            return full[list(_PRUNED_INDICES[self.steps])]
        u = torch.linspace(0, 1, self.steps + 1, dtype=dtype)
        if self.schedule == "cosine":
            return _cosine(u)
        if self.schedule == "linear":
            return u
        return u + self.sway * (torch.cos(u * (math.pi / 2)) - 1 + u)


# Upstream's settings: the exact path.
UPSTREAM = FlowOptions()


def _cosine(u: torch.Tensor) -> torch.Tensor:
    # Same float32 operations, in the same order, as upstream, so the table is bit-identical.
    return 1 - torch.cos(u * 0.5 * torch.pi)


class _Guided:
    """v(x, t) with classifier-free guidance: one estimator call on [conditional, unconditional]
    rows (upstream's layout: the unconditional row has zero mu, speaker and prompt condition),
    combined as (1 + rate) * v_cond - rate * v_uncond. Buffers are allocated once per
    utterance and filled in place (upstream notes that concatenation can change memory format)."""

    def __init__(
        self,
        estimator: Estimator,
        *,
        mu: torch.Tensor,
        mask: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        rate: float,
    ) -> None:
        frames = mu.size(2)
        self.estimator = estimator
        self.rate = rate
        self.x = torch.zeros(2, mu.size(1), frames, dtype=mu.dtype)
        self.mask = torch.zeros(2, 1, frames, dtype=mu.dtype)
        self.mu = torch.zeros(2, mu.size(1), frames, dtype=mu.dtype)
        self.t = torch.zeros(2, dtype=mu.dtype)
        self.spks = torch.zeros(2, spks.size(1), dtype=mu.dtype)
        self.cond = torch.zeros(2, cond.size(1), frames, dtype=mu.dtype)
        self.mask[:] = mask
        self.mu[0] = mu
        self.spks[0] = spks
        self.cond[0] = cond

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.x[:] = x
        self.t[:] = t
        out = self.estimator(self.x, self.mask, self.mu, self.t, self.spks, self.cond)
        v_cond, v_uncond = out[:1], out[1:]
        return (1.0 + self.rate) * v_cond - self.rate * v_uncond


def solve(
    estimator: Estimator,
    *,
    z: torch.Tensor,
    mu: torch.Tensor,
    mask: torch.Tensor,
    spks: torch.Tensor,
    cond: torch.Tensor,
    cfg_rate: float,
    options: FlowOptions = UPSTREAM,
) -> torch.Tensor:
    """Integrate from the noise `z` [1, 80, T] at t=0 to t=1 and return the mel [1, 80, T]."""
    velocity = _Guided(estimator, mu=mu, mask=mask, spks=spks, cond=cond, rate=cfg_rate)
    table = options.time_table(z.dtype)
    x = z
    previous: tuple[torch.Tensor, torch.Tensor] | None = None  # (velocity, dt) for ab2
    # Upstream accumulates t += dt with dt = table[k+1] - t; in float32 that lands exactly on
    # the table entries for its cosine tables (checked for 5-20 steps), so stepping over the
    # table is the same float path. The equality test against upstream guards this.
    for k in range(1, len(table)):
        t = table[k - 1].unsqueeze(0)
        dt = table[k] - table[k - 1]
        v = velocity(x, t)
        if options.solver == "midpoint":
            v = velocity(x + (0.5 * dt) * v, t + 0.5 * dt)
            x = x + dt * v
        elif options.solver == "ab2" and previous is not None:
            # Adams-Bashforth 2 with a variable step: extrapolate the velocity to mid-step.
            v_prev, dt_prev = previous
            ratio = dt / (2 * dt_prev)
            x = x + dt * ((1 + ratio) * v - ratio * v_prev)
            previous = (v, dt)
        else:
            x = x + dt * v
            previous = (v, dt)
    return x.float()


def flow_inference(
    flow: Any,
    *,
    token: torch.Tensor,
    token_len: torch.Tensor,
    prompt_token: torch.Tensor,
    prompt_token_len: torch.Tensor,
    prompt_feat: torch.Tensor,
    prompt_feat_len: torch.Tensor,
    embedding: torch.Tensor,
    flow_cache: torch.Tensor,
    options: FlowOptions = UPSTREAM,
    estimator: Estimator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upstream `MaskedDiffWithXvec.inference` (same arguments, same result: the mel
    [1, 80, frames] and the streaming cache) with our ODE loop under `options`.

    `flow` is the loaded upstream module (`CosyVoice(...).model.flow`); its encoder, length
    regulator and projections run as they are. `estimator` defaults to the PyTorch estimator.
    Draws the initial noise from the global RNG exactly as upstream does (one `randn_like`).
    """
    from cosyvoice.utils.mask import make_pad_mask

    if token.shape[0] != 1:
        raise ValueError("flow_inference takes one utterance (batch 1), as upstream does")
    decoder = flow.decoder
    with torch.inference_mode():
        embedding = torch.nn.functional.normalize(embedding, dim=1)
        embedding = flow.spk_embed_affine_layer(embedding)

        prompt_tokens, new_tokens = prompt_token.shape[1], token.shape[1]
        token = torch.concat([prompt_token, token], dim=1)
        token_len = prompt_token_len + token_len
        mask = (~make_pad_mask(token_len)).unsqueeze(-1).to(embedding)
        token = flow.input_embedding(torch.clamp(token, min=0)) * mask

        h, _ = flow.encoder(token, token_len)
        h = flow.encoder_proj(h)
        prompt_frames = prompt_feat.shape[1]
        # Same float expression as upstream: the frame count must match to the frame.
        new_frames = int(new_tokens / flow.input_frame_rate * 22050 / 256)
        h, _ = flow.length_regulator.inference(
            h[:, :prompt_tokens],
            h[:, prompt_tokens:],
            prompt_frames,
            new_frames,
            flow.input_frame_rate,
        )
        total = prompt_frames + new_frames
        cond = torch.zeros(1, total, flow.output_size, dtype=h.dtype)
        cond[:, :prompt_frames] = prompt_feat
        cond = cond.transpose(1, 2)
        mel_mask = (~make_pad_mask(torch.tensor([total]))).to(h).unsqueeze(1)
        mu = h.transpose(1, 2).contiguous()

        z = torch.randn_like(mu)
        cached = flow_cache.shape[2]
        if cached:
            # Streaming continuation: reuse the previous chunk's noise and mu for the overlap.
            z[:, :, :cached] = flow_cache[:, :, :, 0]
            mu[:, :, :cached] = flow_cache[:, :, :, 1]
        z_keep = torch.concat([z[:, :, :prompt_frames], z[:, :, -_CACHE_TAIL:]], dim=2)
        mu_keep = torch.concat([mu[:, :, :prompt_frames], mu[:, :, -_CACHE_TAIL:]], dim=2)
        new_cache = torch.stack([z_keep, mu_keep], dim=-1)

        mel = solve(
            estimator if estimator is not None else decoder.estimator,
            z=z,
            mu=mu,
            mask=mel_mask,
            spks=embedding,
            cond=cond,
            cfg_rate=float(decoder.inference_cfg_rate),
            options=options,
        )
    mel = mel[:, :, prompt_frames:]
    if mel.shape[2] != new_frames:
        raise RuntimeError(f"flow produced {mel.shape[2]} frames, expected {new_frames}")
    return mel.float(), new_cache


def load_flow(model_dir: Path) -> Any:
    """Only the flow module of a model directory (`MaskedDiffWithXvec`, eval mode, fp32), built
    from its `cosyvoice.yaml` with `flow.pt` loaded: for tests and benchmarks, without the
    LLM, the vocoder and the text frontend that `CosyVoice(dir)` also loads."""
    from hyperpyyaml import load_hyperpyyaml

    with open(model_dir / "cosyvoice.yaml", encoding="utf-8") as f:
        # Overriding the other two modules with null skips building them (and their RAM).
        configs = load_hyperpyyaml(f, overrides={"llm": None, "hift": None})
    flow = configs["flow"]
    flow.load_state_dict(torch.load(model_dir / "flow.pt", map_location="cpu", weights_only=True))
    return flow.eval()


def native_bf16() -> bool:
    """True if this CPU computes bf16 natively (AVX512_BF16 or AMX). Elsewhere oneDNN emulates
    bf16, slower than fp32, so autocast would only lose precision."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Bf16Estimator:
    """Runs a PyTorch estimator under bf16 autocast (approximate: ~3 significant digits in
    matmuls) and returns fp32. Refuses CPUs without native bf16 unless `force`: never silent."""

    def __init__(self, estimator: Any, *, force: bool = False) -> None:
        if not (force or native_bf16()):
            raise RuntimeError("this CPU has no native bf16 (avx512_bf16/amx_bf16)")
        self.estimator = estimator

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out: torch.Tensor = self.estimator(*inputs)
        return out.float()
