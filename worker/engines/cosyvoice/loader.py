"""Load CosyVoice-300M-SFT through the upstream classes, without upstream's slow start-up.

`CosyVoice(model_dir)` (upstream `cosyvoice/cli/cosyvoice.py`) costs a cold start about
7 s of imports and 17 s of load on two cores. Most of that is not model loading:
- its frontend recompiles the Chinese text-normalization FSTs at every load
  (`overwrite_cache=True`, ~14.5 s); here they come from `fst_cache` (built once);
- its module imports modelscope (hub downloads, ~1 s with its own imports) and the
  CosyVoice2/3 classes, none of which SFT uses.

`load_cosyvoice` does what `CosyVoice.__init__` does for a v1 model directory on CPU with the
same upstream pieces: the directory's `cosyvoice.yaml` through hyperpyyaml, `CosyVoiceFrontEnd`
(tokenizer, the two ONNX sessions, `spk2info.pt`, the normalizers) and
`CosyVoiceModel.load` of `llm.pt`, `flow.pt`, `hift.pt`; no JIT, TensorRT or fp16, as upstream
forces without CUDA. The result has the public shape the engine uses (`.frontend`, `.model`,
`.sample_rate`, `list_available_spks()`).

Imports happen in the functions (no work at import time), and a model directory that does not
exist is an error, never a hub model id.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.engines.cosyvoice import fst_cache


@dataclass
class LoadedCosyVoice:
    """What the engine uses of upstream's `CosyVoice`: the frontend, the model, the rate."""

    frontend: Any
    model: Any
    sample_rate: int

    def list_available_spks(self) -> list[str]:
        return list(self.frontend.spk2info.keys())


def default_cache_dir() -> Path:
    """The FST cache used when the model directory is read-only: the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tts-batch" / "wetext-fst"


def import_runtime() -> None:
    """Import the upstream modules a load needs (most of a cold start's import time); a
    missing runtime raises ImportError (or OSError for a CUDA torchaudio) here."""
    import cosyvoice.cli.frontend
    import cosyvoice.cli.model  # noqa: F401
    import hyperpyyaml  # noqa: F401
    import torch  # noqa: F401


# torch.nn.init functions the module constructors call (Linear, Conv, Embedding, LSTM, norms).
_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "orthogonal_",
)


@contextlib.contextmanager
def _skip_weight_init() -> Iterator[None]:
    """While the yaml builds the modules, `torch.nn.init` leaves tensors as allocated.

    The random init of 436M parameters is ~2 s of a start and is thrown away:
    `CosyVoiceModel.load` then overwrites every parameter and persistent buffer
    (`load_state_dict(strict=True)` fails on any missing key). Values a constructor computes
    without `torch.nn.init` (positional tables, windows) are untouched."""
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    for name in _INIT_FUNCTIONS:
        setattr(init, name, keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


@contextlib.contextmanager
def _cached_zh_normalizer(model_dir: Path, fallback: Path | None) -> Iterator[None]:
    """While the frontend is built, its module's `ZhNormalizer` reads cached FSTs.

    `CosyVoiceFrontEnd.__init__` looks the class up in its module's globals at call time, so
    swapping that one name for the duration of the call runs the rest of upstream's
    constructor unchanged. The name is restored on exit; with ttsfrd installed upstream never
    uses WeTextProcessing and there is nothing to swap."""
    import cosyvoice.cli.frontend as frontend_module

    original = getattr(frontend_module, "ZhNormalizer", None)
    if original is None:
        yield
        return

    def cached(**options: Any) -> Any:
        return fst_cache.zh_normalizer(original, model_dir=model_dir, fallback=fallback, **options)

    frontend_module.ZhNormalizer = cached
    try:
        yield
    finally:
        frontend_module.ZhNormalizer = original


def load_cosyvoice(model_dir: str | Path, *, cache_dir: str | Path | None) -> LoadedCosyVoice:
    """Load a CosyVoice v1 model directory (300M-SFT) for SFT inference on CPU.

    `cache_dir` is where the text-normalization FSTs are cached when `model_dir` is not
    writable (None: nowhere else; they are then rebuilt at every start)."""
    path = Path(model_dir).resolve()
    # Upstream would take a missing path for a hub model id and download it: never here.
    if not path.is_dir():
        raise FileNotFoundError(f"CosyVoice model directory {str(path)!r} does not exist")
    fallback = Path(cache_dir) if cache_dir is not None else None
    import_runtime()
    from cosyvoice.cli.frontend import CosyVoiceFrontEnd
    from cosyvoice.cli.model import CosyVoiceModel
    from hyperpyyaml import load_hyperpyyaml

    with open(path / "cosyvoice.yaml", encoding="utf-8") as f, _skip_weight_init():
        configs = load_hyperpyyaml(f)
    # The yaml instantiates the modules, so their classes are imported by now.
    from cosyvoice.utils.class_utils import get_model_type

    if get_model_type(configs) is not CosyVoiceModel:
        raise ValueError(f"{path} is not a CosyVoice v1 (300M) model directory")
    with _cached_zh_normalizer(path, fallback):
        frontend = CosyVoiceFrontEnd(
            configs["get_tokenizer"],
            configs["feat_extractor"],
            str(path / "campplus.onnx"),
            str(path / "speech_tokenizer_v1.onnx"),
            str(path / "spk2info.pt"),
            configs["allowed_special"],
        )
    model = CosyVoiceModel(configs["llm"], configs["flow"], configs["hift"], False)
    model.load(str(path / "llm.pt"), str(path / "flow.pt"), str(path / "hift.pt"))
    return LoadedCosyVoice(frontend=frontend, model=model, sample_rate=int(configs["sample_rate"]))
