"""The job contract: what a job message holds and how it is validated.

Defined once, used by the producer (before enqueueing) and by the worker (again, because the
queue is not trusted). Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.errors import InvalidJob
from core.speakers import SPEAKERS, aliases_for, canonical, describe

SCHEMA_VERSION = 1
TASK_NAME = "tts.synthesize"
# A job's terminal outcomes (batch state, results, `tts_tasks_total{status}`); the first two
# mean the audio exists.
TASK_STATUSES = ("succeeded", "cached", "failed")
SUCCESS_STATUSES = TASK_STATUSES[:2]
# The Pushgateway `job` label of every worker node's metrics group.
PUSH_JOB = "tts_worker"

ROW_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
BATCH_ID_PATTERN = ROW_ID_PATTERN
# Language codes the engines understand; None lets the engine pick from the speaker.
LANGUAGES = ("zh", "en", "ja", "yue", "ko")
FORMATS = ("wav", "flac", "ogg", "opus", "mp3")
# Output options (issue 14). None or 0 is today's output: the engine's own rate, no loudness
# change, no silence; such a job keeps its old fingerprint and content key.
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)
# libsndfile's Opus encoder takes only these rates (Opus itself runs at 48 kHz inside).
OPUS_RATES = (8000, 16000, 24000, 48000)
LOUDNESS_RANGE = (-40.0, -5.0)  # target integrated loudness, LUFS (ITU-R BS.1770)
TRUE_PEAK_RANGE = (-9.0, 0.0)  # true-peak ceiling, dBTP, applied with a loudness target
DEFAULT_TRUE_PEAK = -1.0
SILENCE_MS_MAX = 10_000
SPEED_RANGE = (0.5, 2.0)  # a factor on the engine's own speaking rate

# A fixed namespace so that task ids derived from (batch, row) are the same on every machine.
_TASK_ID_NAMESPACE = uuid.UUID("5d0c7c55-4f0e-4f86-9a4e-7d1b5d0a9f11")
_WHITESPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC, control characters (and lone surrogates) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif category in {"Cc", "Cs", "Co", "Cn"} or ch in "\u2028\u2029":
            continue
        else:
            kept.append(ch)
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def _has_letter_or_digit(text: str) -> bool:
    return any(unicodedata.category(ch)[0] in {"L", "N"} for ch in text)


@dataclass(frozen=True)
class JobSpec:
    """A validated request: what to say, in which voice, in which format."""

    text: str
    speaker: str
    lang: str | None
    fmt: str
    sample_rate: int | None = None
    loudness: float | None = None
    true_peak: float = DEFAULT_TRUE_PEAK
    lead_silence_ms: int = 0
    trail_silence_ms: int = 0
    speed: float | None = None
    # The digest of the batch's lexicon (core.lexicon), stored in Redis by the producer; None
    # when the batch has none.
    lexicon: str | None = None

    def options(self) -> dict[str, Any]:
        """The output options this job sets (message fields), leaving out the defaults."""
        chosen: dict[str, Any] = {
            "sample_rate": self.sample_rate,
            "loudness": self.loudness,
            "lead_silence_ms": self.lead_silence_ms or None,
            "trail_silence_ms": self.trail_silence_ms or None,
            "speed": self.speed,
        }
        if self.loudness is not None:
            # The ceiling only matters under a loudness target.
            chosen["true_peak"] = self.true_peak
        return {name: value for name, value in chosen.items() if value is not None}

    def fingerprint(self) -> str:
        """A hash of the request alone (engine-independent); equal requests share a job."""
        fields: list[Any] = [SCHEMA_VERSION, self.text, self.speaker, self.lang, self.fmt]
        if self.lexicon is not None:
            fields.append(self.lexicon)
        if self.options():
            fields.append(self.options())
        payload = json.dumps(fields, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def validate_spec(
    fields: Mapping[str, Any],
    *,
    speakers: frozenset[str] | set[str] | tuple[str, ...],
    max_chars: int,
    row: int | str | None = None,
) -> JobSpec:
    """Check text, speaker, lang and format of one row or message; raise InvalidJob naming
    the row and the field."""
    text = fields.get("text")
    if not isinstance(text, str):
        raise InvalidJob(
            f"text must be a string, got {_type_name(text)}",
            reason="invalid_text",
            field="text",
            row=row,
        )
    normalized = normalize_text(text)
    if not _has_letter_or_digit(normalized):
        raise InvalidJob(
            "text has no letter or digit to speak" if normalized else "text is empty",
            reason="invalid_text",
            field="text",
            row=row,
        )
    if len(normalized) > max_chars:
        raise InvalidJob(
            f"text has {len(normalized)} characters, the limit is {max_chars}",
            reason="text_too_long",
            field="text",
            row=row,
        )
    # An ASCII alias (en-female) becomes its id (英文女) here, on both sides: one job, one key.
    speaker = canonical(fields.get("speaker"))
    if not isinstance(speaker, str) or speaker not in speakers:
        raise InvalidJob(
            f"unknown speaker {_short(fields.get('speaker'))}; known: {_known(speakers)}",
            reason="unknown_speaker",
            field="speaker",
            row=row,
        )
    lang = fields.get("lang")
    if lang in ("", None):
        lang = None
    elif not isinstance(lang, str) or lang not in LANGUAGES:
        raise InvalidJob(
            f"unknown language {_short(lang)}; known: {', '.join(LANGUAGES)}",
            reason="invalid_text",
            field="lang",
            row=row,
        )
    fmt = fields.get("format")
    if fmt in ("", None):
        fmt = "wav"
    elif not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise InvalidJob(
            f"unsupported format {_short(fmt)}; supported: {', '.join(FORMATS)}",
            reason="unsupported_format",
            field="format",
            row=row,
        )
    fmt = str(fmt).lower()
    rate = _option_number(fields, "sample_rate", row=row, whole=True)
    if rate is not None and rate not in SAMPLE_RATES:
        raise _bad_option(
            "sample_rate", f"{rate:g} Hz is not offered; choose one of {_listed(SAMPLE_RATES)}", row
        )
    if fmt == "opus" and rate is not None and rate not in OPUS_RATES:
        raise _bad_option("sample_rate", f"opus takes {_listed(OPUS_RATES)} Hz, not {rate:g}", row)
    loudness = _option_number(fields, "loudness", row=row, bounds=LOUDNESS_RANGE, unit="LUFS")
    true_peak = _option_number(fields, "true_peak", row=row, bounds=TRUE_PEAK_RANGE, unit="dBTP")
    lead = _option_number(
        fields, "lead_silence_ms", row=row, whole=True, bounds=(0, SILENCE_MS_MAX), unit="ms"
    )
    trail = _option_number(
        fields, "trail_silence_ms", row=row, whole=True, bounds=(0, SILENCE_MS_MAX), unit="ms"
    )
    speed = _option_number(fields, "speed", row=row, bounds=SPEED_RANGE, unit="x")
    return JobSpec(
        text=normalized,
        speaker=speaker,
        lang=lang,
        fmt=fmt,
        sample_rate=None if rate is None else int(rate),
        loudness=loudness,
        true_peak=DEFAULT_TRUE_PEAK if true_peak is None else true_peak,
        lead_silence_ms=int(lead or 0),
        trail_silence_ms=int(trail or 0),
        # 1.0 is the engine's own pace: the same audio as no speed at all, so the same key.
        speed=None if speed in (None, 1.0) else speed,
    )


def _option_number(
    fields: Mapping[str, Any],
    name: str,
    *,
    row: int | str | None,
    whole: bool = False,
    bounds: tuple[float, float] | None = None,
    unit: str = "",
) -> float | None:
    """An optional numeric option: a JSON number or a CSV cell's text; blank or null is unset."""
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float (10**400) is out of every range
            number = math.inf
    elif isinstance(value, str) and len(value) <= 32:
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    kind = "a whole number" if whole else "a number"
    if number is None or math.isnan(number) or (whole and not number.is_integer()):
        raise _bad_option(name, f"must be {kind}, got {_short(value)}", row)
    if math.isinf(number):
        raise _bad_option(name, f"is far out of range, got {_short(value)}", row)
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        raise _bad_option(
            name, f"{number:g} is out of range {bounds[0]:g}..{bounds[1]:g} {unit}".rstrip(), row
        )
    return number


def _bad_option(name: str, problem: str, row: int | str | None) -> InvalidJob:
    return InvalidJob(f"{name} {problem}", reason="unsupported_format", field=name, row=row)


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)


def _known(speakers: frozenset[str] | set[str] | tuple[str, ...]) -> str:
    aliases = {speaker_id: alias for alias, speaker_id in aliases_for(speakers).items()}
    return ", ".join(
        f"{aliases[s]} ({s})" if s in aliases else s for s in sorted(speakers, key=_speaker_order)
    )


def _speaker_order(speaker_id: str) -> tuple[int, str]:
    # The table's order first (zh, ja, yue, en, ko), then any other configured id by name.
    known = describe(speaker_id)
    return (SPEAKERS.index(known), "") if known else (len(SPEAKERS), speaker_id)


def validate_row_id(value: Any, *, row: int | str | None = None, field: str = "id") -> str:
    if not isinstance(value, str) or not ROW_ID_PATTERN.fullmatch(value):
        raise InvalidJob(
            f"{_short(value)} is not a valid id (1-128 of A-Z a-z 0-9 . _ -)",
            reason="bad_message",
            field=field,
            row=row,
        )
    return value


def task_id_for(batch_id: str, job_key: str) -> str:
    """The Celery task id of a job: stable for (batch, job), so a resubmission finds it."""
    return str(uuid.uuid5(_TASK_ID_NAMESPACE, f"{batch_id}\x00{job_key}"))


def new_send_id() -> str:
    """A fresh id for one send of a job. Every message a producer sends gets its own; a
    redelivery of that message, or Celery's retry of it, keeps it. So the worker can tell a
    start that repeats a lost one from a second message of the same job (a duplicate)."""
    return uuid.uuid4().hex


def build_message(
    *,
    job_id: str,
    batch_id: str,
    spec: JobSpec,
    enqueued_at: float,
    row_id: str | None = None,
) -> dict[str, Any]:
    """The task's single JSON argument, with a fresh send id. `row_id` (the first row asking
    for this job) only labels the task for people (task_label); workers do not need it."""
    return {
        "v": SCHEMA_VERSION,
        "job_id": job_id,
        "batch_id": batch_id,
        "row_id": row_id,
        "text": spec.text,
        "speaker": spec.speaker,
        "lang": spec.lang,
        "format": spec.fmt,
        **spec.options(),
        "enqueued_at": enqueued_at,
        "send_id": new_send_id(),
        **({"lexicon": spec.lexicon} if spec.lexicon is not None else {}),
    }


def resend(message: dict[str, Any], *, enqueued_at: float) -> dict[str, Any]:
    """A stored message made ready to be sent again (`tts-batch retry`): a new send id."""
    return {**message, "enqueued_at": enqueued_at, "send_id": new_send_id()}


# How much of a job's text its task label shows.
_LABEL_TEXT_CHARS = 40


def task_label(message: Any) -> str:
    """The task's `argsrepr`: what Flower and Celery's events show instead of the message
    (batch, row, speaker, the text's start), so an operator can tell batches apart. Short and
    one line whatever the message holds: ids only when they are valid ids, the text normalized
    (no control characters or newlines) and cut; nothing else of the message (no other field
    could carry a secret into the events)."""
    if not isinstance(message, Mapping):
        return f"<{_type_name(message)}, not a job message>"
    parts = []
    for key, name in (("batch_id", "batch"), ("row_id", "row")):
        value = message.get(key)
        if isinstance(value, str) and ROW_ID_PATTERN.fullmatch(value):
            parts.append(f"{name}={value}")
    speaker = message.get("speaker")
    if isinstance(speaker, str):
        known = describe(canonical(speaker))
        parts.append(f"speaker={known.alias if known else _preview(speaker, 20)}")
    text = message.get("text")
    if isinstance(text, str):
        parts.append(f"text={_preview(text, _LABEL_TEXT_CHARS)!r}")
    return " ".join(parts)


def _preview(text: str, limit: int) -> str:
    # Normalize a bounded slice only: a hostile message may carry megabytes of text.
    shown = normalize_text(text[: limit * 4])
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


@dataclass(frozen=True)
class JobMessage:
    """A message as the worker accepts it, after validation."""

    job_id: str
    batch_id: str
    spec: JobSpec
    enqueued_at: float | None
    # The send this message came from (core.contract.new_send_id); None in a message from a
    # producer that predates send ids.
    send_id: str | None = None


def parse_message(
    message: Any,
    *,
    speakers: frozenset[str] | set[str] | tuple[str, ...],
    max_chars: int,
) -> JobMessage:
    """Validate a message taken off the queue. Unknown fields are ignored within a version."""
    if not isinstance(message, Mapping):
        raise InvalidJob(f"message must be a JSON object, got {_type_name(message)}")
    version = message.get("v")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise InvalidJob(
            f"unsupported schema version {_short(version)}; this worker speaks {SCHEMA_VERSION}",
            field="v",
        )
    job_id = validate_row_id(message.get("job_id"), field="job_id")
    batch_id = validate_row_id(message.get("batch_id"), field="batch_id")
    send_id = message.get("send_id")
    if send_id is not None:
        send_id = validate_row_id(send_id, field="send_id")
    spec = validate_spec(message, speakers=speakers, max_chars=max_chars)
    lexicon = message.get("lexicon")
    if lexicon is not None:
        if not isinstance(lexicon, str) or not re.fullmatch(r"[0-9a-f]{64}", lexicon):
            raise InvalidJob(f"{_short(lexicon)} is not a lexicon digest", field="lexicon")
        spec = replace(spec, lexicon=lexicon)
    return JobMessage(
        job_id=job_id,
        batch_id=batch_id,
        spec=spec,
        enqueued_at=_timestamp(message.get("enqueued_at")),
        send_id=send_id,
    )


def _timestamp(value: Any) -> float | None:
    """A positive, finite epoch time, else None: a hostile enqueued_at (10**400, NaN) must
    neither crash the task nor poison the queue-wait histogram's sum."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:
        # An int of more than 4300 digits has no repr (Python's limit against slow str()).
        return f"<{_type_name(value)} too large to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def content_key(identity: Mapping[str, str | int], spec: JobSpec) -> str:
    """The hash of everything that changes the audio: the engine's identity (engine, model,
    sample rate, options) and the request (speaker, language, normalized text, format, and
    the output options that differ from the engine's own output)."""
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "engine": dict(identity),
        "speaker": spec.speaker,
        "lang": spec.lang,
        "text": spec.text,
        "format": spec.fmt,
    }
    options = spec.options()
    if options.get("sample_rate") == identity.get("sample_rate"):
        # The engine's own rate asked for by name: the same bytes as no rate at all.
        options.pop("sample_rate", None)
    if options:
        fields["options"] = options
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def synthesis_key(identity: Mapping[str, str | int], spec: JobSpec) -> str:
    """The hash of everything that changes the speech itself, before any rendition: the
    engine's identity (with the text rules the worker applied: number rules' version, lexicon
    digests, as content_key gets it), speaker, language, normalized text and speed.
    Renditions of one synthesis key (format, rate, loudness, silence) share one master."""
    fields: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "kind": "master",
        "engine": dict(identity),
        "speaker": spec.speaker,
        "lang": spec.lang,
        "text": spec.text,
        "speed": spec.speed,
    }
    payload = json.dumps(fields, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def master_key(key: str) -> str:
    """Where the master (lossless FLAC at the engine's rate) of a synthesis key lives."""
    if not re.fullmatch(r"[0-9a-f]{64}", key):
        raise ValueError(f"not a synthesis key: {key!r}")
    return f"masters/{key[:2]}/{key}.flac"


def object_key(key: str, fmt: str) -> str:
    """Where the audio of a content key lives in the bucket: hash-derived only, never text."""
    if not re.fullmatch(r"[0-9a-f]{64}", key) or fmt not in FORMATS:
        raise ValueError(f"not a content key and format: {key!r}, {fmt!r}")
    return f"audio/{key[:2]}/{key}.{fmt}"
