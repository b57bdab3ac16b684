"""A reusable cache of WeTextProcessing's Chinese text-normalization FSTs.

Upstream's frontend builds `ZhNormalizer(remove_erhua=False, full_to_half=False,
overwrite_cache=True)`: the FSTs are compiled again at every load (~14.5 s on two cores) and
written over the files shipped inside site-packages. Here they are compiled once per
(WeTextProcessing, pynini, options) and read back afterwards (well under a second).

Where: `<model_dir>/.tts-batch-fst/<key>/` when the model directory is writable, else
`<fallback>/<key>/` (a folder the caller owns). A build goes to a fresh temporary directory
beside the target and is renamed into place: a rename is atomic, so a directory named `<key>`
is always complete, and concurrent first starts cannot corrupt it (the loser of the race drops
its own build and reads the winner's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODEL_DIR_CACHE = ".tts-batch-fst"
# File names WeTextProcessing's `build_fst("zh_tn", ...)` reads and writes.
ZH_FILES = ("zh_tn_tagger.fst", "zh_tn_verbalizer.fst")


def cache_key(options: dict[str, Any]) -> str:
    """The cache folder's name: the normalizer, the two package versions that define the FST
    format and rules, and a hash of the build options (they change the compiled rules)."""
    versions = f"wetext{metadata.version('WeTextProcessing')}-pynini{metadata.version('pynini')}"
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return f"zh-{versions}-{digest}"


def candidate_roots(model_dir: Path, fallback: Path | None) -> list[Path]:
    """Cache roots in order of preference: inside the model directory, then the fallback."""
    roots = [model_dir / MODEL_DIR_CACHE]
    if fallback is not None:
        roots.append(fallback)
    return roots


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ZH_FILES)


def find_cached(roots: Sequence[Path], key: str) -> Path | None:
    """The first root's `<key>` folder that holds both FSTs, or None."""
    for root in roots:
        if _complete(root / key):
            return root / key
    return None


def build_cached(roots: Sequence[Path], key: str, build: Callable[[Path], None]) -> Path | None:
    """Build the FSTs into the first writable root; the folder they are in, or None when no
    root is writable. `build(folder)` writes the FST files into `folder`."""
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        except OSError as exc:  # read-only file system, permissions, a file in the way
            log.info("FST cache root %s not writable (%s); trying the next", root, exc)
            continue
        target = root / key
        try:
            build(staging)
            if not _complete(staging):
                raise RuntimeError(f"WeTextProcessing wrote no {', '.join(ZH_FILES)}")
            staging.chmod(0o755)  # mkdtemp makes it 0700; other users may share the cache
            try:
                staging.rename(target)
            except OSError:
                # Another process renamed its complete build into place first: use that one.
                if not _complete(target):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    return None


def zh_normalizer(
    normalizer_class: Callable[..., Any],
    *,
    model_dir: Path,
    fallback: Path | None,
    **options: Any,
) -> Any:
    """`normalizer_class(**options)` (WeTextProcessing's Chinese `Normalizer`) with its FSTs
    read from the cache, built into it first if absent; built in a throwaway folder (slow,
    every start) only when no cache root is writable."""
    options.pop("overwrite_cache", None)
    options.pop("cache_dir", None)
    roots = candidate_roots(model_dir, fallback)
    key = cache_key(options)
    folder = find_cached(roots, key)
    if folder is None:
        log.info("building the Chinese text-normalization FSTs once, cache key %s", key)

        def build(staging: Path) -> None:
            normalizer_class(cache_dir=str(staging), overwrite_cache=True, **options)

        folder = build_cached(roots, key, build)
    if folder is None:
        log.warning(
            "no writable FST cache (%s): building the text normalizer for this start only",
            ", ".join(str(r) for r in roots),
        )
        with tempfile.TemporaryDirectory(prefix="tts-batch-fst-") as scratch:
            return normalizer_class(cache_dir=scratch, overwrite_cache=True, **options)
    return normalizer_class(cache_dir=str(folder), overwrite_cache=False, **options)
