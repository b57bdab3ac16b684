"""Job output options in the contract: row/field errors, CSV text read as numbers, and keys
that change with every option that changes the bytes (and only then)."""

from __future__ import annotations

import hashlib
import json

import pytest

from core.contract import (
    SCHEMA_VERSION,
    JobSpec,
    build_message,
    content_key,
    object_key,
    parse_message,
    validate_spec,
)
from core.errors import InvalidJob
from core.settings import COSYVOICE_SFT_SPEAKERS

SPEAKERS = frozenset(COSYVOICE_SFT_SPEAKERS)
IDENTITY: dict[str, str | int] = {
    "engine": "espeak",
    "model": "espeak-ng-1.51",
    "sample_rate": 22050,
}


def spec(**fields: object) -> JobSpec:
    base: dict[str, object] = {"text": "Hello", "speaker": "英文女", **fields}
    return validate_spec(base, speakers=SPEAKERS, max_chars=500, row=4)


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"sample_rate": 11025}, "sample_rate", "11025 Hz is not offered"),
        ({"sample_rate": "48k"}, "sample_rate", "must be a whole number"),
        ({"sample_rate": 16000.5}, "sample_rate", "must be a whole number"),
        ({"format": "opus", "sample_rate": 44100}, "sample_rate", "opus takes"),
        ({"loudness": -60}, "loudness", "out of range -40..-5 LUFS"),
        ({"loudness": 0}, "loudness", "out of range"),
        ({"loudness": "loud"}, "loudness", "must be a number"),
        ({"loudness": "nan"}, "loudness", "must be a number"),
        ({"loudness": True}, "loudness", "must be a number"),
        ({"true_peak": 1}, "true_peak", "out of range -9..0 dBTP"),
        ({"lead_silence_ms": -1}, "lead_silence_ms", "out of range 0..10000 ms"),
        ({"trail_silence_ms": 10001}, "trail_silence_ms", "out of range"),
        ({"trail_silence_ms": "0.5"}, "trail_silence_ms", "must be a whole number"),
        ({"speed": 3}, "speed", "out of range 0.5..2 x"),
        ({"speed": [1]}, "speed", "must be a number"),
    ],
)
def test_bad_options_name_row_and_field(fields: dict[str, object], field: str, says: str) -> None:
    with pytest.raises(InvalidJob) as info:
        spec(**fields)
    assert (info.value.row, info.value.field) == (4, field)
    assert info.value.reason == "unsupported_format"
    assert says in str(info.value) and "\n" not in str(info.value)


def test_csv_cells_are_read_as_numbers_and_blanks_as_unset() -> None:
    from_csv = spec(
        format="MP3",
        sample_rate="8000",
        loudness=" -16 ",
        true_peak="-2",
        lead_silence_ms="250",
        trail_silence_ms="",
        speed="1.25",
    )
    assert from_csv == spec(
        format="mp3",
        sample_rate=8000,
        loudness=-16.0,
        true_peak=-2.0,
        lead_silence_ms=250,
        speed=1.25,
    )
    assert from_csv.trail_silence_ms == 0
    blank = spec(sample_rate="", loudness=None, speed="1")
    assert blank == spec()


def test_defaults_keep_the_old_content_key_and_message() -> None:
    # The key as it was computed before the options existed: caches stay valid.
    old_payload = json.dumps(
        {
            "v": SCHEMA_VERSION,
            "engine": IDENTITY,
            "speaker": "英文女",
            "lang": None,
            "text": "Hello",
            "format": "wav",
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    assert content_key(IDENTITY, spec()) == hashlib.sha256(old_payload.encode()).hexdigest()
    message = build_message(job_id="j", batch_id="b", spec=spec(), enqueued_at=1.0)
    assert set(message) == {
        *("v", "job_id", "batch_id", "row_id", "text", "speaker", "lang", "format"),
        *("enqueued_at", "send_id"),
    }
    # The engine's own rate asked for by name is the same audio, so the same object.
    assert content_key(IDENTITY, spec(sample_rate=22050)) == content_key(IDENTITY, spec())


@pytest.mark.parametrize(
    "option",
    [
        {"format": "mp3"},
        {"format": "opus"},
        {"sample_rate": 8000},
        {"loudness": -16},
        {"lead_silence_ms": 100},
        {"trail_silence_ms": 100},
        {"speed": 1.5},
    ],
)
def test_every_option_changes_the_key_and_the_job(option: dict[str, object]) -> None:
    assert content_key(IDENTITY, spec(**option)) != content_key(IDENTITY, spec())
    assert spec(**option).fingerprint() != spec().fingerprint()


def test_the_ceiling_counts_only_under_a_loudness_target() -> None:
    loud = spec(loudness=-16)
    assert content_key(IDENTITY, spec(loudness=-16, true_peak=-2)) != content_key(IDENTITY, loud)
    assert content_key(IDENTITY, spec(true_peak=-2)) == content_key(IDENTITY, spec())


def test_options_travel_in_the_message_and_back() -> None:
    chosen = spec(format="opus", sample_rate=48000, loudness=-23, lead_silence_ms=500, speed=0.75)
    message = build_message(job_id="j", batch_id="b", spec=chosen, enqueued_at=1.0)
    assert message["loudness"] == -23 and message["true_peak"] == -1.0
    parsed = parse_message(json.loads(json.dumps(message)), speakers=SPEAKERS, max_chars=500)
    assert parsed.spec == chosen
    # The worker checks them again: the queue is not trusted.
    with pytest.raises(InvalidJob) as info:
        parse_message({**message, "sample_rate": 12345}, speakers=SPEAKERS, max_chars=500)
    assert info.value.field == "sample_rate"


def test_new_formats_have_object_keys() -> None:
    key = "ab" * 32
    assert object_key(key, "mp3").endswith(".mp3")
    assert object_key(key, "opus").endswith(".opus")


def test_the_renditions_example_is_valid() -> None:
    from pathlib import Path

    from core.contract import synthesis_key
    from producer.rows import read_rows

    example = Path(__file__).resolve().parent.parent / "examples" / "renditions.csv"
    specs = []
    for line, fields in read_rows(example):
        assert isinstance(fields, dict), fields
        specs.append(validate_spec(fields, speakers=SPEAKERS, max_chars=500, row=line))
    assert [(s.fmt, s.sample_rate, s.loudness) for s in specs] == [
        ("wav", 48000, -16.0),
        ("wav", 8000, -18.0),
        ("mp3", 24000, -16.0),
    ]
    # One announcement in three renditions: one synthesis key, three content keys.
    assert len({synthesis_key(IDENTITY, s) for s in specs}) == 1
    assert len({content_key(IDENTITY, s) for s in specs}) == 3
