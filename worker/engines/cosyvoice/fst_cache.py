"""A reusable cache of WeTextProcessing's text-normalization FSTs.

Upstream's frontend builds `ZhNormalizer(remove_erhua=False, full_to_half=False,
overwrite_cache=True)`: the Chinese FSTs are compiled again at every load (~14.5 s on two
cores) and written over the files shipped inside site-packages. Here they are compiled once per
(WeTextProcessing, pynini, options) and read back afterwards (well under a second). The English
normalizer keeps reading the FSTs the package ships for its default options, as upstream does.

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


def fst_files(prefix: str) -> tuple[str, str]:
    """The files WeTextProcessing's `build_fst(prefix, ...)` reads and writes."""
    return f"{prefix}_tagger.fst", f"{prefix}_verbalizer.fst"


def cache_key(prefix: str, options: dict[str, Any]) -> str:
    """The cache folder's name: the normalizer, the two package versions that define the FST
    format and rules, and a hash of the build options (they change the compiled rules)."""
    versions = f"wetext{metadata.version('WeTextProcessing')}-pynini{metadata.version('pynini')}"
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
    return f"{prefix}-{versions}-{digest}"


def candidate_roots(model_dir: Path, fallback: Path | None) -> list[Path]:
    """Cache roots in order of preference: inside the model directory, then the fallback."""
    roots = [model_dir / MODEL_DIR_CACHE]
    if fallback is not None:
        roots.append(fallback)
    return roots


def complete(folder: Path, prefix: str) -> bool:
    return all((folder / name).is_file() for name in fst_files(prefix))


def find_cached(roots: Sequence[Path], key: str, prefix: str) -> Path | None:
    """The first root's `<key>` folder that holds both FSTs, or None."""
    for root in roots:
        if complete(root / key, prefix):
            return root / key
    return None


def build_cached(
    roots: Sequence[Path], key: str, prefix: str, build: Callable[[Path], None]
) -> Path | None:
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
            if not complete(staging, prefix):
                raise RuntimeError(f"WeTextProcessing wrote no {' and '.join(fst_files(prefix))}")
            staging.chmod(0o755)  # mkdtemp makes it 0700; other users may share the cache
            try:
                staging.rename(target)
            except OSError:
                # Another process renamed its complete build into place first: use that one.
                if not complete(target, prefix):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target
    return None


def _read_as_written(self: Any, prefix: str, cache_dir: str, overwrite_cache: bool) -> None:
    # WeTextProcessing's own reader runs `optimize()` again on FSTs it optimized before
    # writing them (~1 s for English's 5 MB tagger); read them as written instead.
    from pynini import Fst

    tagger, verbalizer = fst_files(prefix)
    self.tagger = Fst.read(str(Path(cache_dir) / tagger))
    self.verbalizer = Fst.read(str(Path(cache_dir) / verbalizer))


def read_normalizer(normalizer_class: type[Any], folder: Path, **options: Any) -> Any:
    """`normalizer_class(**options)` with the FSTs in `folder` read as they were written.

    A subclass whose `build_fst` only reads: the rest of the constructor is upstream's."""
    namespace = {"build_fst": _read_as_written, "__module__": normalizer_class.__module__}
    reader = type(normalizer_class.__name__, (normalizer_class,), namespace)
    return reader(cache_dir=str(folder), overwrite_cache=False, **options)


def cached_normalizer(
    normalizer_class: type[Any],
    *,
    prefix: str,
    model_dir: Path,
    fallback: Path | None,
    shipped: Path | None = None,
    **options: Any,
) -> Any:
    """`normalizer_class(**options)` (a WeTextProcessing `Normalizer` whose FSTs are named
    `<prefix>_*.fst`) with its FSTs read from `shipped` (FSTs the package ships for these
    options) or the cache, built into the cache first if absent; built in a throwaway folder
    (slow, every start) only when no cache root is writable."""
    options.pop("overwrite_cache", None)
    options.pop("cache_dir", None)
    if shipped is not None and complete(shipped, prefix):
        return read_normalizer(normalizer_class, shipped, **options)
    roots = candidate_roots(model_dir, fallback)
    key = cache_key(prefix, options)
    folder = find_cached(roots, key, prefix)
    if folder is None:
        log.info("building text-normalization FSTs once, cache key %s", key)

        def build(staging: Path) -> None:
            normalizer_class(cache_dir=str(staging), overwrite_cache=True, **options)

        folder = build_cached(roots, key, prefix, build)
    if folder is None:
        log.warning(
            "no writable FST cache (%s): building the text normalizer for this start only",
            ", ".join(str(r) for r in roots),
        )
        with tempfile.TemporaryDirectory(prefix="tts-batch-fst-") as scratch:
            return normalizer_class(cache_dir=scratch, overwrite_cache=True, **options)
    return read_normalizer(normalizer_class, folder, **options)
