"""The job contract: normalization, validation errors that name row and field, keys."""

from __future__ import annotations

import pytest

from core.contract import (
    SCHEMA_VERSION,
    JobSpec,
    build_message,
    content_key,
    normalize_text,
    object_key,
    parse_message,
    resend,
    task_id_for,
    validate_row_id,
    validate_spec,
)
from core.errors import InvalidJob
from core.settings import COSYVOICE_SFT_SPEAKERS

SPEAKERS = frozenset(COSYVOICE_SFT_SPEAKERS)


def spec(**fields: object) -> JobSpec:
    base: dict[str, object] = {"text": "Hello", "speaker": "英文女"}
    base.update(fields)
    return validate_spec(base, speakers=SPEAKERS, max_chars=500, row=7)


def test_normalize_nfc_controls_and_whitespace() -> None:
    decomposed = "Cafe\u0301"
    assert normalize_text(f"  {decomposed}\x00\x07 \t\n  ok\u2028 ") == "Café ok"
    assert normalize_text("a\ud800b") == "ab"  # lone surrogate dropped


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"text": ""}, "text", "invalid_text"),
        ({"text": "   \n\t"}, "text", "invalid_text"),
        ({"text": "!!! ... ???"}, "text", "invalid_text"),
        ({"text": "😀😀"}, "text", "invalid_text"),
        ({"text": 42}, "text", "invalid_text"),
        ({"text": "x" * 501}, "text", "text_too_long"),
        ({"speaker": "nobody"}, "speaker", "unknown_speaker"),
        ({"speaker": None}, "speaker", "unknown_speaker"),
        ({"lang": "fr"}, "lang", "invalid_text"),
        ({"format": "aiff"}, "format", "unsupported_format"),
    ],
)
def test_invalid_fields_name_row_and_field(
    fields: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(InvalidJob) as info:
        spec(**fields)
    assert info.value.field == field
    assert info.value.reason == reason
    assert info.value.row == 7
    assert str(info.value).startswith(f"row 7, field '{field}'")


def test_limit_counts_normalized_characters() -> None:
    assert spec(text="x" * 500 + "   ").text == "x" * 500


def test_defaults_and_case() -> None:
    s = spec(lang="", format="WAV")
    assert (s.lang, s.fmt) == (None, "wav")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "a b", "x" * 129, None, 5, "é"])
def test_row_id_rules(bad: object) -> None:
    with pytest.raises(InvalidJob) as info:
        validate_row_id(bad, row=3)
    assert info.value.field == "id"


def test_task_id_is_stable_and_distinct() -> None:
    assert task_id_for("b1", "r1") == task_id_for("b1", "r1")
    assert task_id_for("b1", "r1") != task_id_for("b2", "r1")
    assert task_id_for("b1", "r1") != task_id_for("b1", "r2")


def test_content_key_covers_everything_that_changes_audio() -> None:
    identity: dict[str, str | int] = {"engine": "espeak", "model": "m1", "sample_rate": 22050}
    base = content_key(identity, spec())
    assert base == content_key(dict(identity), spec(text="  Hello "))
    assert base != content_key({**identity, "model": "m2"}, spec())
    assert base != content_key({**identity, "sample_rate": 16000}, spec())
    assert base != content_key(identity, spec(text="Hello!"))
    assert base != content_key(identity, spec(speaker="英文男"))
    assert base != content_key(identity, spec(lang="en"))
    assert base != content_key(identity, spec(format="flac"))


def test_object_key_holds_no_text() -> None:
    key = content_key({"engine": "fake"}, spec(text="secret announcement"))
    path = object_key(key, "wav")
    assert path == f"audio/{key[:2]}/{key}.wav"
    with pytest.raises(ValueError):
        object_key("../../etc/passwd", "wav")


def message(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": SCHEMA_VERSION,
        "job_id": "j1",
        "batch_id": "b1",
        "text": "Hi",
        "speaker": "英文女",
    }
    base.update(fields)
    return base


def test_parse_message_ignores_unknown_fields() -> None:
    parsed = parse_message(message(extra={"x": 1}), speakers=SPEAKERS, max_chars=500)
    assert parsed.job_id == "j1" and parsed.spec.text == "Hi"


@pytest.mark.parametrize(
    "bad",
    [
        "not a dict",
        [1, 2],
        None,
        message(v=2),
        message(v=True),
        message(job_id="../x"),
        message(batch_id=None),
        message(text=None),
        message(send_id=""),
        message(send_id=7),
        message(send_id="x" * 129),
    ],
)
def test_parse_message_rejects(bad: object) -> None:
    with pytest.raises(InvalidJob):
        parse_message(bad, speakers=SPEAKERS, max_chars=500)


def test_every_send_has_its_own_send_id_and_the_worker_reads_it() -> None:
    first = build_message(job_id="j1", batch_id="b1", spec=spec(), enqueued_at=1.0)
    second = build_message(job_id="j1", batch_id="b1", spec=spec(), enqueued_at=1.0)
    assert first["send_id"] != second["send_id"]
    parsed = parse_message(first, speakers=SPEAKERS, max_chars=500)
    assert parsed.send_id == first["send_id"]
    # A message from a producer without send ids is still accepted.
    assert parse_message(message(), speakers=SPEAKERS, max_chars=500).send_id is None
    again = resend(first, enqueued_at=2.0)
    assert again["send_id"] not in (first["send_id"], second["send_id"])
    assert {**again, "send_id": None, "enqueued_at": None} == {
        **first,
        "send_id": None,
        "enqueued_at": None,
    }
