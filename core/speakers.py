"""Speakers by name: the canonical ids of CosyVoice-300M-SFT, their ASCII aliases, language and
gender, in one table.

An alias is resolved to its id at validation (core.contract.validate_spec), on the producer and
again on the worker, so a job asked with `en-female` and one asked with `英文女` are the same
job: same fingerprint, same content key, same cached audio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Speaker:
    """One voice: its canonical id (what engines and content keys use) and how people name it."""

    id: str
    alias: str
    lang: str
    gender: str


# The same seven ids as core.settings.COSYVOICE_SFT_SPEAKERS, in that order; the espeak engine
# maps the same ids to its voices (worker/engines/espeak.py).
SPEAKERS = (
    Speaker("中文女", "zh-female", "zh", "female"),
    Speaker("中文男", "zh-male", "zh", "male"),
    Speaker("日语男", "ja-male", "ja", "male"),
    Speaker("粤语女", "yue-female", "yue", "female"),
    Speaker("英文女", "en-female", "en", "female"),
    Speaker("英文男", "en-male", "en", "male"),
    Speaker("韩语女", "ko-female", "ko", "female"),
)
ALIASES = {s.alias: s.id for s in SPEAKERS}
_BY_ID = {s.id: s for s in SPEAKERS}


def canonical(name: Any) -> Any:
    """The canonical id of an alias; anything else (an id, an unknown name, a non-string)
    unchanged, for validation to judge."""
    return ALIASES.get(name, name) if isinstance(name, str) else name


def describe(speaker_id: str) -> Speaker | None:
    """The table's entry for a canonical id; None for an id the table does not know."""
    return _BY_ID.get(speaker_id)


def display_name(speaker_id: str) -> str:
    """`alias (id)` for a known id, the id alone otherwise: for messages and labels."""
    known = describe(speaker_id)
    return f"{known.alias} ({known.id})" if known else speaker_id


def aliases_for(speaker_ids: Any) -> dict[str, str]:
    """alias -> id for the given ids that have an alias, in the table's order."""
    offered = set(speaker_ids)
    return {s.alias: s.id for s in SPEAKERS if s.id in offered}


def language_mismatch(speaker_id: str, lang: str | None) -> str | None:
    """Why a row's `lang` disagrees with its speaker's language (the engine would speak one
    language in a voice made for another), or None when they agree or either is unknown."""
    known = describe(speaker_id)
    if known is None or lang is None or lang == known.lang:
        return None
    return f"speaker {known.alias} ({known.id}) speaks {known.lang}, the row asks for lang={lang}"
