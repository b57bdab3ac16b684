"""The hostile-input corpus, as data: rows and messages that must be refused (or, for some,
accepted and spoken as plain text), files that must be refused, and raw broker messages that
must be dropped and counted before any task code runs.

Used by tests/test_hostile_input.py; kept apart so that the cases read as one list.
"""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from core.contract import TASK_NAME
from core.delivery import QUEUE
from producer.sender import client_app

GOOD_ROW: dict[str, Any] = {
    "id": "bad",
    "text": "Mind the gap.",
    "speaker": "英文女",
    "lang": "en",
    "format": "wav",
}
# Marks a field to be removed from the good row or message.
DROP = object()


@dataclass(frozen=True)
class Bad:
    """One bad row (producer) and the same fault in a message (worker).

    `field` is the row field the producer's error names; `reason` the failure reason (one of
    ERROR_REASONS) both sides give. `worker=False`: not expressible as a JSON message."""

    name: str
    changes: dict[str, Any]
    field: str
    reason: str
    worker: bool = True

    def row(self) -> dict[str, Any]:
        return apply(GOOD_ROW, self.changes)

    def message(self, *, job_id: str, batch_id: str) -> dict[str, Any]:
        # The row id becomes the message's job_id (what the worker validates instead).
        changes = {("job_id" if k == "id" else k): v for k, v in self.changes.items()}
        base = {**good_message(job_id=job_id, batch_id=batch_id)}
        return apply(base, changes)

    @property
    def worker_field(self) -> str:
        return "job_id" if self.field == "id" else self.field


def apply(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


def good_message(*, job_id: str, batch_id: str, text: str = "Mind the gap.") -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": job_id,
        "batch_id": batch_id,
        "text": text,
        "speaker": "英文女",
        "lang": "en",
        "format": "wav",
        "enqueued_at": 1_790_000_000.0,
    }


TEN_KB = "a" * 10_240
BAD_ROWS: list[Bad] = [
    # Text that holds nothing to speak.
    Bad("empty_text", {"text": ""}, "text", "invalid_text"),
    Bad("whitespace_only", {"text": " \t\r\n \u3000 "}, "text", "invalid_text"),
    Bad("zero_width_only", {"text": "\u200b\u200c\u2060\ufeff"}, "text", "invalid_text"),
    Bad("nul_only", {"text": "\x00\x00\x00"}, "text", "invalid_text"),
    Bad("control_only", {"text": "\x01\x07\x1b\x7f\x9b"}, "text", "invalid_text"),
    Bad("lone_surrogate_only", {"text": "\ud800"}, "text", "invalid_text"),
    Bad("reversed_surrogates", {"text": "\udfff\ud800 \udc00"}, "text", "invalid_text"),
    Bad("emoji_only", {"text": "🚆🔔 🚇✨"}, "text", "invalid_text"),
    Bad("punctuation_only", {"text": "!!! ... ??? -- ;;"}, "text", "invalid_text"),
    Bad("symbols_only", {"text": "→ ★ © ™ ∞"}, "text", "invalid_text"),
    Bad("markup_without_words", {"text": "<></> <!-- --> ]]>"}, "text", "invalid_text"),
    # Text over the limit.
    Bad("text_501_chars", {"text": "a" * 501}, "text", "text_too_long"),
    Bad("text_1_mb", {"text": "Mind the gap. " * 75_000}, "text", "text_too_long"),
    # Text of the wrong JSON type.
    Bad("text_number", {"text": 42}, "text", "invalid_text"),
    Bad("text_huge_number", {"text": 10**400}, "text", "invalid_text"),
    Bad("text_float", {"text": 1e308}, "text", "invalid_text"),
    Bad("text_list", {"text": ["Mind", "the gap"]}, "text", "invalid_text"),
    Bad("text_object", {"text": {"text": "Mind the gap."}}, "text", "invalid_text"),
    Bad("text_null", {"text": None}, "text", "invalid_text"),
    Bad("text_bool", {"text": True}, "text", "invalid_text"),
    Bad("missing_text", {"text": DROP}, "text", "invalid_text"),
    # Speakers.
    Bad("unknown_speaker", {"speaker": "robot"}, "speaker", "unknown_speaker"),
    Bad("speaker_padded", {"speaker": " 英文女 "}, "speaker", "unknown_speaker"),
    Bad("speaker_markup", {"speaker": "<speak>英文女</speak>"}, "speaker", "unknown_speaker"),
    Bad("speaker_10_kb", {"speaker": TEN_KB}, "speaker", "unknown_speaker"),
    Bad("speaker_list", {"speaker": ["英文女"]}, "speaker", "unknown_speaker"),
    Bad("speaker_object", {"speaker": {"id": "英文女"}}, "speaker", "unknown_speaker"),
    Bad("speaker_null", {"speaker": None}, "speaker", "unknown_speaker"),
    Bad("missing_speaker", {"speaker": DROP}, "speaker", "unknown_speaker"),
    # More than 4300 digits: Python cannot even repr it; JSON cannot carry it to a worker.
    Bad("speaker_5000_digits", {"speaker": 10**5000}, "speaker", "unknown_speaker", worker=False),
    # Languages and formats.
    Bad("unknown_language", {"lang": "klingon"}, "lang", "invalid_text"),
    Bad("language_number", {"lang": 7}, "lang", "invalid_text"),
    Bad("language_list", {"lang": ["en"]}, "lang", "invalid_text"),
    Bad("unknown_format", {"format": "aiff"}, "format", "unsupported_format"),
    Bad("format_path", {"format": "../../etc/passwd"}, "format", "unsupported_format"),
    Bad("format_list", {"format": ["wav"]}, "format", "unsupported_format"),
    Bad("format_huge_number", {"format": 2**4096}, "format", "unsupported_format"),
    # Output options: numbers in bounds, or refused by field.
    Bad("rate_not_offered", {"sample_rate": 11025}, "sample_rate", "unsupported_format"),
    Bad("rate_path", {"sample_rate": "../../x"}, "sample_rate", "unsupported_format"),
    Bad("loudness_huge_number", {"loudness": 2**4096}, "loudness", "unsupported_format"),
    Bad("loudness_positive", {"loudness": 6}, "loudness", "unsupported_format"),
    Bad("silence_negative", {"lead_silence_ms": -5}, "lead_silence_ms", "unsupported_format"),
    Bad(
        "silence_an_hour", {"trail_silence_ms": 3_600_000}, "trail_silence_ms", "unsupported_format"
    ),
    Bad("speed_list", {"speed": [2]}, "speed", "unsupported_format"),
    # Ids (row ids for the producer; job ids for the worker).
    Bad("id_dot_dot", {"id": "../../etc/passwd"}, "id", "bad_message"),
    Bad("id_slash", {"id": "a/b"}, "id", "bad_message"),
    Bad("id_backslash", {"id": "a\\b"}, "id", "bad_message"),
    Bad("id_10_kb", {"id": TEN_KB}, "id", "bad_message"),
    Bad("id_empty", {"id": ""}, "id", "bad_message"),
    Bad("id_number", {"id": 12345}, "id", "bad_message"),
    Bad("id_nul", {"id": "a\x00b"}, "id", "bad_message"),
    Bad("id_unicode", {"id": "объявление"}, "id", "bad_message"),
    Bad("id_newline", {"id": "a\nb"}, "id", "bad_message"),
    Bad("missing_id", {"id": DROP}, "id", "bad_message"),
]


@dataclass(frozen=True)
class BadMessage:
    """A task call only a hostile client makes: the producer cannot express it."""

    name: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    # True when the message names a valid job and batch: the failure is recorded there.
    recorded: bool = True


def worker_only_messages(batch_id: str) -> list[BadMessage]:
    """Faults of the message envelope the task sees (all fail as bad_message)."""

    def msg(job_id: str, **changes: Any) -> dict[str, Any]:
        return apply(good_message(job_id=job_id, batch_id=batch_id), changes)

    return [
        BadMessage("version_missing", [msg("w-v-missing", v=DROP)]),
        BadMessage("version_2", [msg("w-v2", v=2)]),
        BadMessage("version_string", [msg("w-v-str", v="1")]),
        BadMessage("version_true", [msg("w-v-true", v=True)]),
        BadMessage("version_huge", [msg("w-v-huge", v=10**300)]),
        BadMessage("batch_id_dot_dot", [msg("w-b", batch_id="../x")], recorded=False),
        BadMessage("batch_id_missing", [msg("w-b2", batch_id=DROP)], recorded=False),
        BadMessage("message_is_a_string", ["Mind the gap."], recorded=False),
        BadMessage("message_is_a_list", [[1, 2, 3]], recorded=False),
        BadMessage("message_is_null", [None], recorded=False),
        BadMessage("no_arguments", [], recorded=False),
        BadMessage("two_arguments", [msg("w-two"), msg("w-two")], recorded=False),
        BadMessage("keyword_arguments", [], {"message": msg("w-kw")}, recorded=False),
    ]


# Accepted as text within a version: markup is never interpreted, unknown fields are ignored,
# characters that cannot be spoken are dropped, a hostile enqueued_at is ignored.
ACCEPTED: dict[str, dict[str, Any]] = {
    "extra_fields": {"priority": 9, "callback": "http://evil.example/", "x": {"y": [1]}},
    "ssml_speak": {"text": "<speak>Hello <break time='20s'/> world</speak>"},
    "xml_entity": {
        "text": "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
        "<speak>&e; hello</speak>"
    },
    "cdata_close": {"text": "]]><![CDATA[ Mind the gap ]]>"},
    "audio_src": {"text": "<audio src='file:///etc/passwd'>door</audio>"},
    "espeak_phonemes": {"text": "[[h@l'oU]] hello"},
    "option_like": {"text": "--stdout -w /tmp/x hello"},
    "control_mixed": {"text": "Mind\x00 the\x07 gap\x1b"},
    "surrogate_mixed": {"text": "Mind\ud800 the gap"},
    "bidi_override": {"text": "\u202eMind the gap"},
    "format_upper": {"format": "WAV"},
    "lang_null": {"lang": None},
}
# Only a message can carry these (the producer writes its own enqueued_at).
ACCEPTED_MESSAGE_ONLY: dict[str, dict[str, Any]] = {
    "enqueued_at_huge": {"enqueued_at": 10**400},
    "enqueued_at_nan": {"enqueued_at": float("nan")},
    "enqueued_at_string": {"enqueued_at": "yesterday"},
    "enqueued_at_negative": {"enqueued_at": -1e300},
}


@dataclass(frozen=True)
class BadFile:
    """A job file the producer must refuse: `expect` is in the error message."""

    name: str
    content: bytes
    expect: str
    suffix: str = ".csv"


CSV_HEAD = "id,text,speaker\n"
CSV_GOOD = "good1,Hello there,英文女\n"


def _csv(*lines: str) -> bytes:
    return (CSV_HEAD + CSV_GOOD + "".join(lines)).encode("utf-8")


def _jsonl(line: bytes) -> bytes:
    good = json.dumps({"id": "good1", "text": "Hello", "speaker": "英文女"}).encode()
    return good + b"\n" + line + b"\n"


BAD_FILES: list[BadFile] = [
    BadFile("empty_file", b"", "the file is empty"),
    BadFile("empty_jsonl", b"", "the file is empty", ".jsonl"),
    BadFile("header_only", CSV_HEAD.encode(), "the file has no rows"),
    BadFile("blank_lines_only_jsonl", b"\n\n  \n", "the file has no rows", ".jsonl"),
    BadFile(
        "semicolon_delimiter",
        "id;text;speaker\ngood1;Hello;英文女\n".encode(),
        "not comma-separated",
    ),
    BadFile("tab_delimiter", "id\ttext\tspeaker\ng\tHi\t英文女\n".encode(), "not comma-separated"),
    BadFile("missing_column", b"id,text\ngood1,Hello\n", "lacks speaker"),
    BadFile("utf16_file", (CSV_HEAD + CSV_GOOD).encode("utf-16"), "line 1 is not valid UTF-8"),
    BadFile("csv_invalid_utf8", _csv() + b"bad,caf\xe9,x\n", "line 3 is not valid UTF-8"),
    # One 1 MB line: read (the field limit is 1 MiB), refused for its length, named.
    BadFile("csv_1_mb_line", _csv(f"bad,{'a' * 1_000_000},英文女\n"), "row 3, field 'text'"),
    BadFile("csv_2_mb_field", _csv(f"bad,{'a' * (2 << 20)},英文女\n"), "row 3, field 'line'"),
    BadFile("csv_extra_cell", _csv("bad,Hello,英文女,surprise\n"), "row 3, field 'line'"),
    BadFile("csv_missing_cell", _csv("bad,Hello\n"), "row 3, field 'line'"),
    BadFile(
        "csv_unterminated_quote", _csv('bad,"Hello,英文女\n', "g3,Hi,英文女\n"), "field 'line'"
    ),
    BadFile("csv_duplicate_id", _csv("good1,Again,英文女\n"), "row 3, field 'id'"),
    BadFile("jsonl_not_json", _jsonl(b"{id: bad}"), "row 2, field 'line'", ".jsonl"),
    BadFile("jsonl_invalid_utf8", _jsonl(b'{"id":"b","text":"\xff"}'), "row 2", ".jsonl"),
    BadFile("jsonl_array", _jsonl(b'["b","Hello","x"]'), "row 2, field 'line'", ".jsonl"),
    BadFile("jsonl_string", _jsonl(b'"Hello"'), "row 2, field 'line'", ".jsonl"),
    BadFile(
        "jsonl_5000_digit_number",
        _jsonl(b'{"id":"b","text":"Hi","speaker":' + b"9" * 5000 + b"}"),
        "row 2, field 'line'",
        ".jsonl",
    ),
    BadFile(
        "jsonl_deep_nesting",
        _jsonl(b'{"id":"b","text":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "row 2, field 'line'",
        ".jsonl",
    ),
    BadFile(
        "jsonl_text_number",
        _jsonl(b'{"id":"b","text":42,"speaker":"\\u82f1\\u6587\\u5973"}'),
        "row 2, field 'text'",
        ".jsonl",
    ),
]
_JSONL_G2 = json.dumps({"id": "g2", "text": "Hi", "speaker": "英文男"}).encode()
# Accepted files: (name, content, suffix, rows accepted).
GOOD_FILES: list[tuple[str, bytes, str, int]] = [
    ("csv_with_bom", b"\xef\xbb\xbf" + _csv("g2,Platform two,英文男\n"), ".csv", 2),
    ("csv_crlf", _csv().replace(b"\n", b"\r\n"), ".csv", 1),
    ("csv_unknown_column", "id,text,speaker,priority\ng,Hi,英文女,9\n".encode(), ".csv", 1),
    ("csv_nul_in_text", _csv("g2,Mind\x00 the gap,英文女\n"), ".csv", 2),
    ("jsonl_with_bom", b"\xef\xbb\xbf" + _jsonl(_JSONL_G2), ".jsonl", 2),
    ("jsonl_extra_fields", _jsonl(_JSONL_G2[:-1] + b',"x":{"y":1},"v":99}'), ".jsonl", 2),
]


# ---- raw broker messages -----------------------------------------------------------------


def capture_envelope(settings: Any) -> dict[str, Any]:
    """A real kombu envelope of a good task, taken back off the list before any worker runs."""
    r = redis.Redis.from_url(settings.broker_url)
    message = good_message(job_id="template", batch_id="template")
    client_app(settings).send_task(TASK_NAME, args=[message], task_id=str(uuid.uuid4()))
    raw = r.rpop(QUEUE)
    assert raw is not None
    assert isinstance(raw, bytes)
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


class _Tripwire:
    """Unpickling this creates a file: proof, if the file exists, that a worker ran pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def raw_variants(envelope: dict[str, Any], *, tripwire: Path) -> dict[str, dict[str, Any]]:
    """Kombu envelopes for the Redis list, derived from a real one, whose body or headers
    fail before any task code runs (each must be dropped and counted as bad_message)."""
    real_body = base64.b64decode(envelope["body"])
    args, kwargs, embed = json.loads(real_body)
    pickled = pickle.dumps(((_Tripwire(tripwire), *args), kwargs, embed))

    def variant(
        body: bytes | None = None,
        *,
        content_type: str | None = None,
        encoding: str | None = None,
        headers: dict[str, Any] | None = None,
        drop_header: str | None = None,
    ) -> dict[str, Any]:
        env: dict[str, Any] = json.loads(json.dumps(envelope))
        if body is not None:
            env["body"] = base64.b64encode(body).decode()
        if content_type is not None:
            env["content-type"] = content_type
        if encoding is not None:
            env["content-encoding"] = encoding
        task_id = str(uuid.uuid4())
        env["headers"].update({"id": task_id, "root_id": task_id, **(headers or {})})
        if drop_header:
            env["headers"].pop(drop_header)
        env["properties"]["delivery_tag"] = str(uuid.uuid4())
        env["properties"]["correlation_id"] = task_id
        return env

    return {
        "body_not_json": variant(b"{not json"),
        "body_empty": variant(b""),
        "body_not_utf8": variant(b"\xff\xfe[[\x00\x81]]"),
        "body_pickle": variant(
            pickled, content_type="application/x-python-serialize", encoding="binary"
        ),
        "body_yaml": variant(b"- [1]\n- {}\n", content_type="application/x-yaml"),
        "body_json_number": variant(b"42"),
        "body_json_object": variant(b'{"a": 1}'),
        "body_short_list": variant(b"[1]"),
        "body_5000_digit_number": variant(b"[[" + b"7" * 5000 + b"], {}, {}]"),
        "body_deep_nesting": variant(b"[" * 100_000 + b"]" * 100_000),
        "unknown_task": variant(headers={"task": "tts.rm_rf"}),
        "no_task_header": variant(drop_header="task"),
    }
