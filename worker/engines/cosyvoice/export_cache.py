"""Where exported artifacts (ONNX graphs built from a model's weights) are kept between starts.

An artifact lives at `<dir>/<key>/<name>`, the key a hash of what the bytes depend on: the
model's fingerprint, the exporter's version and the torch/onnxruntime versions. The first
writable folder of the caller's list wins; the model directory's `.tts-cache` is the first
choice (`cache_dirs`), and when nothing is writable the artifact is built in a temporary folder
and returned as bytes (ONNX Runtime opens bytes as well as paths). Nothing is ever downloaded.

Writes go to a temporary file in the target folder and are renamed into place, so a reader never
sees half a file; two processes exporting at once both build, and the last rename wins with an
identical, complete file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from worker.engines.cosyvoice.model_dir import model_fingerprint

log = logging.getLogger(__name__)

CACHE_FOLDER = ".tts-cache"


def cache_dirs(model_dir: Path, fallback: Path | None = None) -> list[Path]:
    """The folders to try, in order: the model directory's own cache, then `fallback` (e.g. the
    local stack folder or `TTS_CACHE_DIR`)."""
    dirs = [model_dir / CACHE_FOLDER]
    if fallback is not None:
        dirs.append(fallback)
    return dirs


def artifact_key_parts(model_dir: Path, exporter_version: str) -> list[str]:
    """What an exported graph depends on: the weights, the export code, and the versions of the
    library that wrote it and the one that runs it."""
    return [
        f"model={model_fingerprint(model_dir)}",
        f"exporter={exporter_version}",
        f"torch={_version('torch')}",
        f"onnxruntime={_version('onnxruntime')}",
    ]


def cached_artifact(
    name: str,
    key_parts: Sequence[str],
    build: Callable[[Path], None],
    dirs: Sequence[Path],
) -> Path | bytes:
    """The artifact `name` for `key_parts`: an existing file from the first of `dirs` holding
    it; else built by `build(path)` into the first writable of `dirs`; else built in a temporary
    folder and returned as bytes."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name must be a plain file name, got {name!r}")
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:16]
    for base in dirs:
        found = base / key / name
        if found.is_file():
            return found
    for base in dirs:
        built = _build_into(base / key, name, build)
        if built is not None:
            return built
    log.warning("no writable cache folder in %s: %s kept in memory", [str(d) for d in dirs], name)
    with tempfile.TemporaryDirectory(prefix="tts-export-") as scratch:
        path = Path(scratch) / name
        build(path)
        return path.read_bytes()


def _build_into(folder: Path, name: str, build: Callable[[Path], None]) -> Path | None:
    # None when the folder cannot be written (read-only model dir, no permission, a file in the
    # way): the caller tries the next one. Errors of the build itself propagate.
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        log.info("cache folder %s not writable (%s)", folder, exc)
        return None
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        build(tmp)
        # mkstemp makes the file 0600: workers running as another user must still read it.
        tmp.chmod(0o644)
        final = folder / name
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"
