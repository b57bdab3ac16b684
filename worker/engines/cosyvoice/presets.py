"""The CosyVoice engine's speed presets (`TTS_COSYVOICE_PRESET`): which levers each turns on.

- `upstream`: upstream's code for every stage, as `CosyVoice.inference_sft` runs it: the
  reference the others are measured against.
- `exact` (the default): the project's own decode loop (the same tokens, log-probabilities
  within 1e-6), the flow estimator on ONNX Runtime (mel within ~1e-6 relative of PyTorch) and
  weight norm folded out of the vocoder (bit-identical): upstream's audio up to float rounding.
- `fast`: `exact` plus the approximate levers that paid in the benchmark: int8 LLM layers, six
  flow steps on a pruned copy of upstream's time table, and the vocoder on ONNX Runtime.
  Checked on random weights only, which cannot rank them for speech: see docs/cosyvoice.md.

Every lever changes the audio at least at float level, so the preset and its levers are part of
the engine identity, and with it the content key: audio of two presets never shares a cache
entry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    # "upstream": TransformerLM.inference; "exact": worker.engines.cosyvoice.decode.
    decode: str = "exact"
    # Dynamic int8 (qint8) for the LLM layers' linear maps (approximate).
    llm_int8: bool = False
    # Fold HiFT's weight normalization into plain weights once at load (exact).
    hift_fold_weight_norm: bool = True
    # "torch", or "onnx": HiFT exported from the loaded weights and run by ONNX Runtime.
    hift_runtime: str = "torch"
    # "upstream": MaskedDiffWithXvec.inference; "torch": the project's ODE loop
    # (worker.engines.cosyvoice.flow_solver) over the PyTorch estimator; "onnx": the same loop
    # over the estimator exported to ONNX Runtime.
    flow_runtime: str = "torch"
    # The flow ODE: upstream integrates 10 Euler steps on a cosine time table; fewer steps
    # (with another table or solver) are approximate.
    flow_steps: int = 10
    flow_schedule: str = "cosine"
    flow_solver: str = "euler"

    @property
    def exact(self) -> bool:
        """True if the preset gives upstream's audio up to float rounding."""
        upstream_ode = (self.flow_steps, self.flow_schedule, self.flow_solver) == (
            10,
            "cosine",
            "euler",
        )
        return not self.llm_int8 and upstream_ode

    def identity(self) -> dict[str, str | int]:
        """The preset's part of the engine identity (and so of the content key)."""
        levers = ",".join(f"{k}={v}" for k, v in asdict(self).items() if k != "name")
        return {"preset": self.name, "levers": levers}


PRESETS = {
    "upstream": Preset(
        "upstream", decode="upstream", hift_fold_weight_norm=False, flow_runtime="upstream"
    ),
    "exact": Preset("exact", flow_runtime="onnx"),
    "fast": Preset(
        "fast",
        llm_int8=True,
        flow_runtime="onnx",
        flow_steps=6,
        flow_schedule="pruned",
        hift_runtime="onnx",
    ),
}
DEFAULT_PRESET = "exact"


def get_preset(name: str) -> Preset:
    """The preset called `name`, or ConfigError naming the setting and the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise ConfigError(
            f"TTS_COSYVOICE_PRESET: unknown preset {name!r}; known: {known}"
        ) from None
