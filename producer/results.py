"""Getting a row's audio out of the bucket: download (skipping a file already there) or a
presigned URL. Used by JobResult's methods and by `tts-batch fetch`.

A local file counts as already there when its size and MD5 equal the object's: the worker
writes every object in one PUT (core/storage.py `put`), whose ETag is the MD5 of its bytes. An
ETag that is not an MD5 (a multipart upload made by another tool) never matches: the object is
downloaded again, which is slower but never wrong.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ObjectMissing

if TYPE_CHECKING:
    from core.storage import AudioStore, StoredObject
    from producer.api import JobResult

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
_MD5_HEX = re.compile(r"[0-9a-f]{32}")
# Downloads in flight: below botocore's connection pool (10), as verify's lookups.
FETCH_THREADS = 8
# Rows handed to the threads per round (bounded memory whatever the batch's size).
FETCH_CHUNK = 500

DOWNLOADED, SKIPPED, NO_AUDIO, MISSING = "downloaded", "skipped", "no_audio", "missing"


@dataclass(frozen=True)
class Fetched:
    """What fetching one row did: DOWNLOADED, SKIPPED (same file there already), NO_AUDIO
    (failed, pending or any status without an object) or MISSING (gone from the bucket)."""

    result: JobResult
    action: str
    path: Path | None = None


def file_name(result: JobResult) -> str:
    """`<row id>.<format>`. Row ids match [A-Za-z0-9._-]{1,128}: safe as file names, except
    '.' and '..' alone, which get a leading underscore."""
    if result.key is None:
        raise ValueError(f"row {result.row_id} has no audio (status {result.status})")
    extension = result.key.rsplit(".", 1)[-1]
    name = result.row_id if result.row_id not in (".", "..") else f"_{result.row_id}"
    return f"{name}.{extension}"


def same_content(path: Path, stored: StoredObject) -> bool:
    """True when the local file has the object's size and MD5 (its single-PUT ETag)."""
    etag = stored.etag.lower()
    if not _MD5_HEX.fullmatch(etag) or path.stat().st_size != stored.size:
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag


def fetch(store: AudioStore, result: JobResult, directory: Path) -> Fetched:
    """Download a row's audio into `directory` as `file_name(result)`, unless a file with the
    same content is there already. The folder must exist."""
    if not result.ok or result.key is None:
        return Fetched(result, NO_AUDIO)
    path = directory / file_name(result)
    if path.is_file():
        stored = store.head(result.key)
        if stored is None:
            return Fetched(result, MISSING, path)
        if same_content(path, stored):
            return Fetched(result, SKIPPED, path)
    try:
        store.download(result.key, path)
    except ObjectMissing:
        return Fetched(result, MISSING, path)
    return Fetched(result, DOWNLOADED, path)


def fetch_all(
    store: AudioStore, results: Iterable[JobResult], directory: Path
) -> Iterator[Fetched]:
    """`fetch` for every result, FETCH_THREADS at a time; yields in the results' order."""
    rows = iter(results)
    with ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="fetch") as pool:
        try:
            while chunk := list(itertools.islice(rows, FETCH_CHUNK)):
                yield from pool.map(lambda result: fetch(store, result, directory), chunk)
        finally:
            # On an error or Ctrl-C, the downloads not yet started are dropped, not waited for.
            pool.shutdown(wait=True, cancel_futures=True)


def presigned_url(store: AudioStore, result: JobResult, seconds: int) -> str:
    """A URL that GETs the row's audio without credentials for `seconds` (1 to 7 days)."""
    if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"seconds must be 1 to {MAX_PRESIGN_SECONDS}, not {seconds}")
    if not result.ok or result.key is None:
        raise ValueError(f"row {result.row_id} has no audio (status {result.status})")
    return store.presigned_url(result.key, seconds=seconds)
