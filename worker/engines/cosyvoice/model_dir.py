"""What a CosyVoice-300M-SFT model directory must hold, and its content identity.

No torch here: a worker (or the CLI) checks a directory before paying for the runtime import.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from core.errors import ConfigError

# The files of the published CosyVoice-300M-SFT directory that SFT inference opens.
REQUIRED_FILES = (
    "cosyvoice.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "spk2info.pt",
    "campplus.onnx",
    "speech_tokenizer_v1.onnx",
)
# Written by `make_random_model` beside the model files: the directory holds noise.
RANDOM_MARKER = "RANDOM_WEIGHTS_NOT_A_MODEL.json"


def check_model_dir(model_dir: str) -> Path:
    """Return `model_dir` as a Path if it is an absolute directory holding every required file;
    else raise ConfigError with a one-line message naming what is missing.

    An absolute existing path matters: upstream `CosyVoice(path)` takes any path that does not
    exist for a hub model id and tries to download it.
    """
    hint = "set TTS_MODEL_DIR to the absolute path of a CosyVoice-300M-SFT directory"
    if not model_dir:
        raise ConfigError(f"TTS_MODEL_DIR is empty: {hint}")
    path = Path(model_dir)
    if not path.is_absolute():
        raise ConfigError(f"TTS_MODEL_DIR must be an absolute path, got {model_dir!r}: {hint}")
    if not path.is_dir():
        raise ConfigError(f"TTS_MODEL_DIR {model_dir!r} is not a directory: {hint}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigError(
            f"TTS_MODEL_DIR {model_dir!r} lacks {len(missing)} of {len(REQUIRED_FILES)} "
            f"model files: {', '.join(missing)}"
        )
    return path


def model_fingerprint(path: Path) -> str:
    """A short hash of the directory's model content: the config's bytes and every weight
    file's size and mtime (hashing 1.7 GB of weights at each start would cost seconds)."""
    digest = hashlib.sha256()
    digest.update((path / "cosyvoice.yaml").read_bytes())
    for name in REQUIRED_FILES:
        stat = (path / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def is_random_model(path: Path) -> bool:
    """True if the directory was written by `make_random_model` (noise, for tests only)."""
    return (path / RANDOM_MARKER).is_file()
