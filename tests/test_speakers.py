"""Speakers by name: ASCII aliases are the same job as their ids; language mismatches are named;
task labels (Flower's args) are short, one line and carry only what tells batches apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.contract import (
    JobSpec,
    build_message,
    content_key,
    parse_message,
    task_label,
    validate_spec,
)
from core.errors import InvalidJob
from core.settings import COSYVOICE_SFT_SPEAKERS
from core.speakers import ALIASES, SPEAKERS, language_mismatch
from tests.support.helpers import make_settings, run_cli
from worker.engine_info import engine_info
from worker.engines.fake import FakeSynthesizer
from worker.synth import load_engine

EXPECTED_ALIASES = {
    "zh-female": "中文女",
    "zh-male": "中文男",
    "ja-male": "日语男",
    "yue-female": "粤语女",
    "en-female": "英文女",
    "en-male": "英文男",
    "ko-female": "韩语女",
}


def spec_of(speaker: str, lang: str | None = None) -> JobSpec:
    fields = {"text": "Platform 4.", "speaker": speaker, "lang": lang}
    return validate_spec(fields, speakers=COSYVOICE_SFT_SPEAKERS, max_chars=500)


def test_the_alias_table_covers_every_default_speaker_once() -> None:
    assert ALIASES == EXPECTED_ALIASES
    assert tuple(s.id for s in SPEAKERS) == COSYVOICE_SFT_SPEAKERS


def test_espeak_maps_every_speaker_of_the_table_with_its_language() -> None:
    from worker.engines.espeak import _ESPEAK_SPEAKERS

    assert {s.id: s.lang for s in SPEAKERS} == {k: v[0] for k, v in _ESPEAK_SPEAKERS.items()}


@pytest.mark.parametrize(("alias", "speaker_id"), sorted(EXPECTED_ALIASES.items()))
def test_an_alias_is_the_same_request_as_its_id(alias: str, speaker_id: str) -> None:
    by_alias, by_id = spec_of(alias), spec_of(speaker_id)
    assert by_alias == by_id
    assert by_alias.speaker == speaker_id
    # Same fingerprint (one job per batch) and same content key (one cached object).
    assert by_alias.fingerprint() == by_id.fingerprint()
    identity = FakeSynthesizer().identity()
    assert content_key(identity, by_alias) == content_key(identity, by_id)


def test_the_worker_accepts_an_alias_in_a_message_and_reads_the_id() -> None:
    message = {
        "v": 1,
        "job_id": "j1",
        "batch_id": "b1",
        "text": "Hello.",
        "speaker": "en-male",
        "format": "wav",
    }
    parsed = parse_message(message, speakers=COSYVOICE_SFT_SPEAKERS, max_chars=500)
    assert parsed.spec.speaker == "英文男"


def test_an_unknown_speaker_is_refused_with_the_aliases_listed() -> None:
    with pytest.raises(InvalidJob) as caught:
        validate_spec(
            {"text": "Hi.", "speaker": "en-child"},
            speakers=COSYVOICE_SFT_SPEAKERS,
            max_chars=500,
            row=3,
        )
    text = str(caught.value)
    assert caught.value.reason == "unknown_speaker"
    assert text.startswith("row 3, field 'speaker': unknown speaker 'en-child'")
    assert "en-female (英文女)" in text and "ko-female (韩语女)" in text


def test_an_alias_of_a_speaker_the_settings_do_not_allow_is_refused() -> None:
    with pytest.raises(InvalidJob):
        validate_spec({"text": "Hi.", "speaker": "en-female"}, speakers=("中文女",), max_chars=500)


def test_language_mismatch_is_named_only_when_both_are_known_and_differ() -> None:
    assert language_mismatch("英文女", "en") is None
    assert language_mismatch("英文女", None) is None
    assert language_mismatch("custom-voice", "zh") is None
    warning = language_mismatch("英文女", "zh")
    assert warning is not None and "en-female" in warning and "lang=zh" in warning


def message_with(**changes: object) -> dict[str, object]:
    spec = validate_spec(
        {"text": "Hi.", "speaker": "zh-female"}, speakers=COSYVOICE_SFT_SPEAKERS, max_chars=500
    )
    message = build_message(
        job_id="j-1", batch_id="night-2026", spec=spec, enqueued_at=1.0, row_id="r7"
    )
    return {**message, **changes}


def test_task_label_names_batch_row_speaker_and_the_start_of_the_text() -> None:
    text = "Attention please: the 18:42 service to Leeds is delayed by twenty minutes " * 3
    label = task_label(message_with(text=text, speaker="英文女"))
    assert label.startswith("batch=night-2026 row=r7 speaker=en-female text='Attention please")
    quoted = label.split("text=", 1)[1]
    assert len(quoted) <= 40 + 2  # the first 40 characters (the last one an ellipsis), quoted
    assert quoted.endswith("…'")


def test_task_label_is_one_short_line_whatever_the_message_holds() -> None:
    hostile = message_with(
        text="line one\nline two\r\x1b[31mred\x00" + "x" * 1_000_000,
        row_id="../../etc\npasswd",
        batch_id="b" * 500,
        speaker="\x07" * 100,
        s3_secret_key="do-not-show",
    )
    label = task_label(hostile)
    assert "\n" not in label and "\r" not in label and "\x1b" not in label and "\x00" not in label
    assert "do-not-show" not in label
    assert "row=" not in label and "batch=" not in label  # not valid ids: left out
    assert len(label) < 200
    assert task_label(["not", "a", "mapping"]) == "<list, not a job message>"


def test_engine_info_lists_the_speakers_a_job_may_ask_with_their_aliases() -> None:
    settings = make_settings(speakers=("英文女", "中文男", "custom"))
    info = engine_info(load_engine(settings), settings)
    # The fake engine offers the seven ids; the settings allow two of them (and one it lacks).
    assert info == {
        "engine": "fake",
        "model": None,
        "model_id": "fake-tone-1",
        "speakers": ["中文男", "英文女"],
        "aliases": {"zh-male": "中文男", "en-female": "英文女"},
    }


def test_speakers_from_an_engine_named_on_the_command_line_needs_no_worker() -> None:
    # No service at all: the engine is loaded in a child process of the CLI.
    settings = make_settings(broker_url="redis://127.0.0.1:1/0")
    proc = run_cli(settings, "speakers", "--engine", "espeak", "--json")
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    (source,) = answer["sources"].values()
    assert source["engine"] == "espeak" and source["model_id"].startswith("espeak-ng-")
    assert [row["alias"] for row in answer["speakers"]] == list(EXPECTED_ALIASES)
    assert {tuple(row["workers"]) for row in answer["speakers"]} == {("engine:espeak",)}


def test_speakers_from_a_missing_model_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_cli(
        make_settings(),
        "speakers",
        "--engine",
        "cosyvoice",
        "--model-dir",
        str(tmp_path / "absent"),
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("tts-batch: error: cannot load engine 'cosyvoice': ConfigError:")
    assert "absent" in line
