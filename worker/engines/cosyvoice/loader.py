"""Load CosyVoice-300M-SFT through the upstream classes, without upstream's slow start-up.

`CosyVoice(model_dir)` (upstream `cosyvoice/cli/cosyvoice.py`) costs a cold start about
7 s of imports and 17 s of load on two cores. Most of that is not model loading:
- its frontend recompiles the Chinese text-normalization FSTs at every load
  (`overwrite_cache=True`, ~14.5 s); here they come from `fst_cache` (built once), and both
  normalizers' FSTs are read without a second `optimize()` (~1 s);
- the yaml's modules get a random init (~2 s) that the weights then overwrite: skipped;
- the weights are read into memory, then copied into the model: mapped instead (~1 s);
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
import zipfile
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
def _cached_normalizers(model_dir: Path, fallback: Path | None) -> Iterator[None]:
    """While the frontend is built, its module's `ZhNormalizer` and `EnNormalizer` read cached
    FSTs (`fst_cache`) instead of compiling them.

    `CosyVoiceFrontEnd.__init__` looks the classes up in its module's globals at call time, so
    swapping those two names for the duration of the call runs the rest of upstream's
    constructor unchanged; they are restored on exit. With ttsfrd installed upstream never
    uses WeTextProcessing and there is nothing to swap."""
    import cosyvoice.cli.frontend as frontend_module

    zh = getattr(frontend_module, "ZhNormalizer", None)
    en = getattr(frontend_module, "EnNormalizer", None)
    if zh is None or en is None:
        yield
        return
    from importlib_resources import files

    def cached_zh(**options: Any) -> Any:
        return fst_cache.cached_normalizer(
            zh, prefix="zh_tn", model_dir=model_dir, fallback=fallback, **options
        )

    def cached_en(**options: Any) -> Any:
        # The package ships English FSTs built with the default options (upstream reads them).
        shipped = None if options else Path(str(files("tn")))
        return fst_cache.cached_normalizer(
            en, prefix="en_tn", model_dir=model_dir, fallback=fallback, shipped=shipped, **options
        )

    frontend_module.ZhNormalizer = cached_zh
    frontend_module.EnNormalizer = cached_en
    try:
        yield
    finally:
        frontend_module.ZhNormalizer = zh
        frontend_module.EnNormalizer = en


@contextlib.contextmanager
def _mmap_torch_load() -> Iterator[None]:
    """While `CosyVoiceModel.load` runs, `torch.load` maps the checkpoint files.

    Upstream's `load` reads each file into fresh tensors, then `load_state_dict` copies them
    into the model: two copies of 1.7 GB. Mapped, the copy into the model is the only one
    (~1 s less, and a lower peak RSS). The mapping is private (copy-on-write, torch's default),
    so nothing can write to the files; the load is single-threaded, in one call."""
    import torch

    original = torch.load

    def load_mapped(f: Any, *args: Any, **kwargs: Any) -> Any:
        # Only torch.save's zip format can be mapped; an older checkpoint is read as before.
        if isinstance(f, (str, os.PathLike)) and zipfile.is_zipfile(f):
            kwargs.setdefault("mmap", True)
        return original(f, *args, **kwargs)

    torch.load = load_mapped
    try:
        yield
    finally:
        torch.load = original


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
    with _cached_normalizers(path, fallback):
        frontend = CosyVoiceFrontEnd(
            configs["get_tokenizer"],
            configs["feat_extractor"],
            str(path / "campplus.onnx"),
            str(path / "speech_tokenizer_v1.onnx"),
            str(path / "spk2info.pt"),
            configs["allowed_special"],
        )
    model = CosyVoiceModel(configs["llm"], configs["flow"], configs["hift"], False)
    with _mmap_torch_load():
        model.load(str(path / "llm.pt"), str(path / "flow.pt"), str(path / "hift.pt"))
    return LoadedCosyVoice(frontend=frontend, model=model, sample_rate=int(configs["sample_rate"]))
