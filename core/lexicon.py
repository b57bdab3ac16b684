"""Lexicons: how a word or pattern is spoken, per language (docs/lexicon.md).

A lexicon is a CSV, TSV or JSON file of entries (lang, match, say, kind). It is validated where
it enters (the producer at submit, the worker at start for the global one, TTS_LEXICON) with
errors naming the entry's row and field, and applied by the worker before synthesis. Its
content hash (`Lexicon.digest`) goes into the content key, so a changed lexicon makes new audio
and an unchanged one finds the cached audio.

Matching, per language:
- Spaced scripts (en, ko): a word entry matches whole words, case-insensitively.
- Chinese, Cantonese, Japanese (no spaces between words): a word entry matches anywhere, the
  longest entry first; only where an entry begins or ends with an ASCII letter or digit must the
  text beside it not be one (so "G1" does not match inside "G12").
- A `regex` entry is a Python regular expression used as written (add `(?i)` for case-folding);
  its `say` may use \\1 or \\g<name>. Regex entries apply first, in file order, then the word
  entries in one pass. Text an entry produced is final: no later entry and no number rule
  (worker/text/announce.py) rewrites it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.contract import LANGUAGES
from core.errors import InvalidBatch, InvalidJob

KINDS = ("word", "regex")
# Languages written without spaces between words: no word boundaries, longest entry first.
UNSPACED = frozenset({"zh", "yue", "ja"})
# Bounds that keep a lexicon small enough for Redis, a message's worker and a regex pass.
MAX_ENTRIES = 5000
MAX_FILE_BYTES = 512 * 1024
MAX_MATCH_CHARS = 200
MAX_SAY_CHARS = 500
# Redis key of a batch lexicon, by its digest (content-addressed: equal files share it).
REDIS_PREFIX = "tts:lexicon:"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_ASCII_ALNUM = re.compile(r"[A-Za-z0-9]")
_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")


@dataclass(frozen=True)
class Entry:
    """One lexicon line. `lang` None applies to every language."""

    lang: str | None
    match: str
    say: str
    kind: str = "word"


@dataclass(frozen=True)
class Segment:
    """A piece of text; `fixed` pieces came from the lexicon and are not rewritten again."""

    text: str
    fixed: bool = False


class Lexicon:
    """Validated entries, compiled per language on first use."""

    def __init__(self, entries: Iterable[Entry]) -> None:
        self.entries = tuple(entries)
        self._compiled: dict[str | None, _Rules] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self) -> str:
        """sha256 of the entries in a canonical form: the same entries, the same digest,
        whatever the file's format or spacing."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        """The canonical JSON form: what Redis stores, read back by parse_lexicon(fmt="json")."""
        rows = [
            {"lang": e.lang or "*", "match": e.match, "say": e.say, "kind": e.kind}
            for e in self.entries
        ]
        return json.dumps(rows, ensure_ascii=False, sort_keys=True, separators=(",", ":"))

    def apply(self, segments: list[Segment], lang: str | None) -> list[Segment]:
        """Rewrite the non-fixed segments with the entries for `lang` (and those for all)."""
        rules = self._compiled.get(lang)
        if rules is None:
            rules = self._compiled[lang] = _Rules.build(self.entries, lang)
        for pattern, template in rules.patterns:
            segments = _split(segments, pattern, lambda m, t=template: m.expand(t))
        if rules.words is not None:
            folded = rules.folded
            segments = _split(
                segments, rules.words, lambda m: folded[" ".join(m.group(0).split()).casefold()]
            )
        return segments


@dataclass(frozen=True)
class _Rules:
    patterns: tuple[tuple[re.Pattern[str], str], ...]
    words: re.Pattern[str] | None
    folded: Mapping[str, str]

    @classmethod
    def build(cls, entries: tuple[Entry, ...], lang: str | None) -> _Rules:
        mine = [e for e in entries if e.lang is None or e.lang == lang]
        patterns = tuple((re.compile(e.match), e.say) for e in mine if e.kind == "regex")
        folded: dict[str, str] = {}
        for e in mine:
            # The first entry for a word wins (a batch lexicon is applied before the global one).
            if e.kind == "word":
                folded.setdefault(e.match.casefold(), e.say)
        if not folded:
            return cls(patterns, None, {})
        ordered = sorted(folded, key=len, reverse=True)
        unspaced = lang in UNSPACED
        alternatives = [_word_pattern(word, unspaced=unspaced) for word in ordered]
        return cls(patterns, re.compile("|".join(alternatives), re.IGNORECASE), folded)


def _word_pattern(word: str, *, unspaced: bool) -> str:
    # A space in an entry matches any run of whitespace.
    body = r"\s+".join(re.escape(part) for part in word.split(" "))
    if unspaced:
        # No word boundaries in CJK text, but a Latin/digit run inside it is still a word.
        before = r"(?<![A-Za-z0-9])" if _ASCII_ALNUM.match(word[0]) else ""
        after = r"(?![A-Za-z0-9])" if _ASCII_ALNUM.match(word[-1]) else ""
        return before + body + after
    return rf"(?<!\w){body}(?!\w)"


def _split(segments: list[Segment], pattern: re.Pattern[str], say: Any) -> list[Segment]:
    out: list[Segment] = []
    for seg in segments:
        if seg.fixed:
            out.append(seg)
            continue
        last = 0
        for m in pattern.finditer(seg.text):
            if m.start() == m.end():
                continue
            if m.start() > last:
                out.append(Segment(seg.text[last : m.start()]))
            out.append(Segment(say(m), fixed=True))
            last = m.end()
        if last < len(seg.text):
            out.append(Segment(seg.text[last:]))
    return out


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def load_lexicon(path: Path | str) -> Lexicon:
    """Read and validate a lexicon file (format by extension: .csv, .tsv, .json); InvalidBatch
    naming the file, the entry's row and the field."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("csv", "tsv", "json"):
        raise InvalidBatch(
            f"lexicon {path.name}: unknown format {path.suffix!r}; use .csv, .tsv or .json"
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidBatch(f"lexicon {path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        return parse_lexicon(data, fmt=fmt)
    except InvalidJob as exc:
        raise InvalidBatch(f"lexicon {path.name}: {exc}") from exc


def parse_lexicon(data: bytes | str, *, fmt: str) -> Lexicon:
    """Validate a lexicon's content; InvalidJob naming the row (CSV/TSV: line; JSON: entry
    number, from 1) and field."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidJob(f"{len(raw)} bytes, the limit is {MAX_FILE_BYTES}", field="file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"not UTF-8 (byte {exc.start})", field="file") from None
    rows = (
        _json_rows(text)
        if fmt == "json"
        else _table_rows(text, delimiter="\t" if fmt == "tsv" else ",")
    )
    entries = []
    for row, fields in rows:
        entries.append(_entry(fields, row=row))
        if len(entries) > MAX_ENTRIES:
            raise InvalidJob(f"more than {MAX_ENTRIES} entries", row=row)
    return Lexicon(entries)


def _table_rows(text: str, *, delimiter: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [name.strip().lower() for name in reader.fieldnames or []]
    missing = [name for name in ("match", "say") if name not in header]
    if missing:
        raise InvalidJob(
            "the header needs the columns lang, match, say (and optionally kind); "
            f"missing: {', '.join(missing)}",
            row=1,
        )
    reader.fieldnames = header
    for fields in reader:
        if None in fields:
            raise InvalidJob("more cells than header columns", row=reader.line_num)
        if all(not (v or "").strip() for v in fields.values()):
            continue
        yield reader.line_num, fields


def _json_rows(text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"not JSON: {exc.msg} (line {exc.lineno})", field="file") from None
    if isinstance(doc, dict):
        # {"en": {"word": "spoken form"}, "*": {...}}: word entries by language.
        number = 0
        for lang, words in doc.items():
            if not isinstance(words, dict):
                raise InvalidJob("expected an object of word -> spoken form", field=str(lang)[:20])
            for match, say in words.items():
                number += 1
                yield number, {"lang": lang, "match": match, "say": say}
        return
    if not isinstance(doc, list):
        raise InvalidJob("expected a list of entries or an object by language", field="file")
    for number, item in enumerate(doc, start=1):
        if not isinstance(item, dict):
            raise InvalidJob("an entry must be an object with lang, match, say", row=number)
        yield number, item


def _entry(fields: Mapping[str, Any], *, row: int) -> Entry:
    lang = _string(fields.get("lang"), "lang", row=row, allow_empty=True).strip()
    if lang in ("", "*"):
        lang_or_all = None
    elif lang in LANGUAGES:
        lang_or_all = lang
    else:
        raise InvalidJob(
            f"unknown language {lang!r}; known: {', '.join(LANGUAGES)} or *", field="lang", row=row
        )
    kind = _string(fields.get("kind"), "kind", row=row, allow_empty=True).strip().lower() or "word"
    if kind not in KINDS:
        raise InvalidJob(f"unknown kind {kind!r}; known: {', '.join(KINDS)}", field="kind", row=row)
    match = _string(fields.get("match"), "match", row=row)
    if kind == "word":
        match = " ".join(match.split())
    say = " ".join(_string(fields.get("say"), "say", row=row).split())
    if len(match) > MAX_MATCH_CHARS:
        raise InvalidJob(
            f"{len(match)} characters, the limit is {MAX_MATCH_CHARS}", field="match", row=row
        )
    if len(say) > MAX_SAY_CHARS:
        raise InvalidJob(
            f"{len(say)} characters, the limit is {MAX_SAY_CHARS}", field="say", row=row
        )
    if kind == "regex":
        _check_regex(match, say, row=row)
    return Entry(lang=lang_or_all, match=match, say=say, kind=kind)


def _string(value: Any, field: str, *, row: int, allow_empty: bool = False) -> str:
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise InvalidJob(f"must be a string, got {type(value).__name__}", field=field, row=row)
    if not allow_empty and not value.strip():
        raise InvalidJob("is empty", field=field, row=row)
    return value


def _check_regex(match: str, say: str, *, row: int) -> None:
    try:
        compiled = re.compile(match)
    except re.error as exc:
        raise InvalidJob(f"not a valid regular expression: {exc}", field="match", row=row) from None
    if compiled.search("") is not None:
        # A pattern that matches nothing at all would insert its spoken form everywhere.
        raise InvalidJob("the pattern matches empty text", field="match", row=row)
    for number, name in _GROUP_REF.findall(say):
        known = (
            int(number) <= compiled.groups
            if number
            else (name in compiled.groupindex or (name.isdigit() and int(name) <= compiled.groups))
        )
        if not known:
            raise InvalidJob(
                f"refers to group {number or name!r}, which the pattern lacks", field="say", row=row
            )
