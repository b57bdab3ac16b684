"""Write a CosyVoice-300M-SFT model directory with RANDOM weights: noise, for testing only.

The weights come from the real upstream classes (instantiated from the `cosyvoice.yaml` this
module writes), so the directory goes through the real loader and real SFT inference. The
output is noise, not speech. A marker file says so, and the engine refuses nothing but logs it.

    python -m worker.engines.cosyvoice.random_model make-random --size tiny|full DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.settings import COSYVOICE_SFT_SPEAKERS
from worker.engines.cosyvoice.config import SIZES, render_config
from worker.engines.cosyvoice.model_dir import RANDOM_MARKER, REQUIRED_FILES

BANNER = "RANDOM WEIGHTS written by tts-batch: noise for testing only, not a trained model"
_SPK_DIM = 192


def make_random_model(directory: Path, *, size: str, seed: int = 0) -> Path:
    """Write a complete model directory (the seven published files plus a marker) with random
    weights of the given size ("tiny" or "full") and return its absolute path.

    Refuses a directory that holds model files but no random-weights marker, so a real model
    is never overwritten.
    """
    import torch
    from hyperpyyaml import load_hyperpyyaml

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    directory = directory.resolve()
    if (
        any((directory / n).exists() for n in REQUIRED_FILES)
        and not (directory / RANDOM_MARKER).exists()
    ):
        raise FileExistsError(f"{directory} holds model files that are not random: not touched")
    directory.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    config_text = render_config(size, banner=BANNER)
    (directory / "cosyvoice.yaml").write_text(config_text, encoding="utf-8")
    with open(directory / "cosyvoice.yaml", encoding="utf-8") as f:
        configs = load_hyperpyyaml(f)
    counts: dict[str, int] = {}
    for part in ("llm", "flow", "hift"):
        module = configs[part]
        counts[part] = sum(p.numel() for p in module.parameters())
        torch.save(module.state_dict(), directory / f"{part}.pt")
    del configs

    # SFT reads only each speaker's 192-dim embedding (unit length, as trained x-vectors are).
    spk2info: dict[str, dict[str, Any]] = {}
    for name in COSYVOICE_SFT_SPEAKERS:
        embedding = torch.randn(1, _SPK_DIM)
        spk2info[name] = {"embedding": embedding / embedding.norm()}
    torch.save(spk2info, directory / "spk2info.pt")

    _write_onnx_stubs(directory, seed=seed)
    marker = {
        "random_weights": True,
        "purpose": "noise for testing only; not a trained model, produces no speech",
        "written_by": "tts-batch worker.engines.cosyvoice.random_model.make_random_model",
        "size": size,
        "seed": seed,
        "parameters": counts,
        "speakers": list(COSYVOICE_SFT_SPEAKERS),
    }
    (directory / RANDOM_MARKER).write_text(
        json.dumps(marker, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return directory


def _write_onnx_stubs(directory: Path, *, seed: int) -> None:
    """Small valid ONNX graphs with the published files' inputs and outputs.

    The frontend opens both in its constructor; SFT never runs them (zero-shot, cross-lingual
    and voice conversion do). campplus: fbank [1, T, 80] -> embedding [1, 192]. The speech
    tokenizer: log-mel [1, 128, T] and its length [1] -> tokens [1, T].
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32

    def save(graph: onnx.GraphProto, name: str) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8  # readable by older onnxruntime releases too
        model.doc_string = BANNER
        onnx.checker.check_model(model)
        onnx.save(model, str(directory / name))

    proj = numpy_helper.from_array(rng.standard_normal((80, _SPK_DIM), dtype=np.float32), "proj")
    campplus = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["pooled", "proj"], ["embedding"]),
        ],
        "campplus_random",
        [helper.make_tensor_value_info("input", f32, [1, "T", 80])],
        [helper.make_tensor_value_info("embedding", f32, [1, _SPK_DIM])],
        [proj],
    )
    save(campplus, "campplus.onnx")

    codebook = numpy_helper.from_array(
        rng.standard_normal((128, 4096), dtype=np.float32), "codebook"
    )
    tokenizer = helper.make_graph(
        [
            helper.make_node("Transpose", ["feats"], ["frames"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["frames", "codebook"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["ids"], axis=2, keepdims=0),
            helper.make_node("Cast", ["ids"], ["indices"], to=i32),
            helper.make_node("Identity", ["feats_length"], ["indices_lens"]),
        ],
        "speech_tokenizer_random",
        [
            helper.make_tensor_value_info("feats", f32, [1, 128, "T"]),
            helper.make_tensor_value_info("feats_length", i32, [1]),
        ],
        [
            helper.make_tensor_value_info("indices", i32, [1, "T"]),
            helper.make_tensor_value_info("indices_lens", i32, [1]),
        ],
        [codebook],
    )
    save(tokenizer, "speech_tokenizer_v1.onnx")


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.engines.cosyvoice.random_model make-random --size tiny|full [--seed N]
    DIR`."""
    parser = argparse.ArgumentParser(prog="python -m worker.engines.cosyvoice.random_model")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-random", help="write a random-weights model directory")
    make.add_argument("--size", choices=sorted(SIZES), default="tiny")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    path = make_random_model(args.directory, size=args.size, seed=args.seed)
    print(f"wrote {path} ({args.size}): RANDOM WEIGHTS, noise for testing only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
