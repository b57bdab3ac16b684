"""Reading job rows from CSV (with a header) or JSONL files, streaming, one row at a time.

Each row comes with its line number so that an error can name it. Fields: id, text, speaker,
and optional lang, format and the output options (core.contract). Unknown columns are ignored.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import InvalidBatch, InvalidJob

REQUIRED_FIELDS = ("id", "text", "speaker")
OPTIONAL_FIELDS = (
    "lang",
    "format",
    "sample_rate",
    "loudness",
    "true_peak",
    "lead_silence_ms",
    "trail_silence_ms",
    "speed",
)
# One CSV field may hold a long text, but not an unbounded one: the contract caps text far below.
_CSV_FIELD_LIMIT = 1 << 20

# A row that could not even be parsed comes as an InvalidJob, so that a caller skipping bad
# rows can go on with the next one.
Row = tuple[int, dict[str, Any] | InvalidJob]


def file_kind(path: Path) -> str:
    """'csv' or 'jsonl', from the extension, else from the first non-blank character."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "jsonl" if head.startswith(b"{") else "csv"


def read_rows(path: Path) -> Iterator[Row]:
    """Yield (line number, fields) for each row of a CSV or JSONL file."""
    if not path.is_file():
        raise InvalidBatch(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InvalidBatch(f"{path}: the file is empty")
    kind = file_kind(path)
    rows = _read_csv(path) if kind == "csv" else _read_jsonl(path)
    any_row = False
    for row in rows:
        any_row = True
        yield row
    if not any_row:
        raise InvalidBatch(f"{path}: the file has no rows")


def _read_jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield (
                    line_no,
                    InvalidJob(f"not valid UTF-8 at byte {exc.start}", row=line_no, field="line"),
                )
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield line_no, InvalidJob(f"not valid JSON: {exc.msg}", row=line_no, field="line")
                continue
            except (ValueError, RecursionError) as exc:
                # Valid JSON that Python will not load: an int of more than 4300 digits, or
                # nesting deeper than the recursion limit.
                problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                error = InvalidJob(f"not loadable: {problem[:80]}", row=line_no, field="line")
                yield line_no, error
                continue
            if not isinstance(value, dict):
                yield (
                    line_no,
                    InvalidJob(
                        f"expected a JSON object, got {type(value).__name__}",
                        row=line_no,
                        field="line",
                    ),
                )
                continue
            yield line_no, value


def _read_csv(path: Path) -> Iterator[Row]:
    csv.field_size_limit(min(_CSV_FIELD_LIMIT, sys.maxsize))
    with path.open(encoding="utf-8-sig", newline="", errors="strict") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise InvalidBatch(f"{path}: the file is empty") from None
        except UnicodeDecodeError:
            # The text stream decodes ahead in chunks: the bad byte may be lines further on.
            raise InvalidBatch(_utf8_error(path)) from None
        names = [name.strip().lower() for name in header]
        missing = [name for name in REQUIRED_FIELDS if name not in names]
        if missing:
            hint = ""
            if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
                hint = " (the file is not comma-separated: use commas)"
            raise InvalidBatch(
                f"{path}: the header (line 1) lacks {', '.join(missing)}; it has {header!r}{hint}",
            )
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError:
                # A text stream cannot resume after a decoding error: the file is refused.
                raise InvalidBatch(_utf8_error(path)) from None
            except csv.Error as exc:
                yield reader.line_num, InvalidJob(str(exc), row=reader.line_num, field="line")
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(names):
                yield (
                    reader.line_num,
                    InvalidJob(
                        f"expected {len(names)} columns, got {len(cells)}",
                        row=reader.line_num,
                        field="line",
                    ),
                )
                continue
            yield reader.line_num, dict(zip(names, cells, strict=True))


def _utf8_error(path: Path) -> str:
    """Which line of a file is not UTF-8 (read again, on the error path only)."""
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                return f"{path}: line {line_no} is not valid UTF-8 (byte {exc.start + 1})"
    return f"{path}: not valid UTF-8"
