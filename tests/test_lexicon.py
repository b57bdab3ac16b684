"""Lexicons (core.lexicon): file formats, validation naming row and field, matching rules per
language, and how they combine with the number rules (worker.text.prepare)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import InvalidBatch, InvalidJob
from core.lexicon import Lexicon, Segment, load_lexicon, parse_lexicon
from worker.text.prepare import engine_text, text_rules


def lex(csv_text: str) -> Lexicon:
    return parse_lexicon(csv_text, fmt="csv")


def say(lexicon: Lexicon, text: str, lang: str) -> str:
    return "".join(s.text for s in lexicon.apply([Segment(text)], lang))


def test_csv_tsv_and_json_of_the_same_entries_have_one_digest(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("lang,match,say\nen,SNCF,S N C F\nzh,北京南,北京南站\n")
    (tmp_path / "a.tsv").write_text("match\tsay\tlang\nSNCF\tS N C F\ten\n北京南\t北京南站\tzh\n")
    (tmp_path / "a.json").write_text(
        json.dumps({"en": {"SNCF": "S N C F"}, "zh": {"北京南": "北京南站"}}, ensure_ascii=False)
    )
    digests = {load_lexicon(tmp_path / n).digest() for n in ("a.csv", "a.tsv", "a.json")}
    assert len(digests) == 1
    changed = lex("lang,match,say\nen,SNCF,railways\nzh,北京南,北京南站\n")
    assert changed.digest() not in digests


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("lang,match,say\nen,Paris,Pa-ree\nfr,Lyon,Lee-on\n", "row 3, field 'lang'"),
        ("lang,match,say\nen,Paris,\n", "row 2, field 'say'"),
        (
            "lang,match,say,kind\nen,Paris,x,word\nen,Gate (\\d+,gate \\1,regex\n",
            "row 3, field 'match'",
        ),
        ("lang,match,say,kind\nen,Gate (\\d+),gate \\2,regex\n", "row 2, field 'say'"),
        ("lang,match,say,kind\nen,x*,y,regex\n", "row 2, field 'match'"),
        ("lang,match,say,kind\nen,x,y,phrase\n", "row 2, field 'kind'"),
        ("lang,word,spoken\nen,x,y\n", "row 1"),
    ],
)
def test_bad_entries_are_refused_naming_row_and_field(
    tmp_path: Path, content: str, where: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidBatch) as caught:
        load_lexicon(path)
    message = str(caught.value)
    assert message.startswith("lexicon bad.csv: ") and where in message
    assert "\n" not in message


def test_bad_json_entries_name_their_number() -> None:
    with pytest.raises(InvalidJob, match=r"row 2, field 'say'"):
        parse_lexicon(
            '[{"lang":"en","match":"a","say":"b"},{"lang":"en","match":"c","say":3}]', fmt="json"
        )
    with pytest.raises(InvalidJob, match="not JSON"):
        parse_lexicon("{", fmt="json")


def test_unknown_extension_and_missing_file_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidBatch, match="unknown format"):
        load_lexicon(tmp_path / "lexicon.xml")
    with pytest.raises(InvalidBatch, match="cannot read"):
        load_lexicon(tmp_path / "missing.csv")


def test_en_matches_whole_words_case_insensitively() -> None:
    lexicon = lex("lang,match,say\nen,Reading,Redding\nen,St Pancras,Saint Pancras\n")
    assert say(lexicon, "READING and Reading's; St  Pancras", "en") == (
        "Redding and Redding's; Saint Pancras"
    )
    # Not inside a longer word, and not for another language.
    assert say(lexicon, "Proofreading", "en") == "Proofreading"
    assert say(lexicon, "Reading", "ja") == "Reading"


def test_ko_uses_spaces_as_word_boundaries_like_en() -> None:
    lexicon = lex("lang,match,say\nko,KTX,케이티엑스\nko,서울,서울역\n")
    assert say(lexicon, "ktx 서울 출발", "ko") == "케이티엑스 서울역 출발"
    # 서울 inside the longer word 서울역에서 is another word in Korean spacing.
    assert say(lexicon, "서울역에서", "ko") == "서울역에서"


def test_zh_matches_without_spaces_longest_entry_first() -> None:
    lexicon = lex("lang,match,say\nzh,北京,北京市\nzh,北京南,北京南站\nzh,G1,G幺\n")
    assert say(lexicon, "开往北京南的列车", "zh") == "开往北京南站的列车"
    assert say(lexicon, "从北京出发", "zh") == "从北京市出发"
    # A Latin/digit run inside Chinese text is still a word: G1 is not inside G12.
    assert say(lexicon, "G1次和G12次", "zh") == "G幺次和G12次"


def test_yue_matches_without_spaces() -> None:
    lexicon = lex("lang,match,say\nyue,港鐵,地鐵\nyue,MTR,港鐵\n")
    # One pass: the output of an entry is not matched again.
    assert say(lexicon, "請乘搭MTR或港鐵", "yue") == "請乘搭港鐵或地鐵"


def test_ja_matches_without_spaces_longest_first() -> None:
    lexicon = lex("lang,match,say\nja,新大阪,しんおおさか\nja,大阪,おおさか\n")
    assert say(lexicon, "新大阪から大阪へ", "ja") == "しんおおさかからおおさかへ"


def test_regex_entries_apply_first_in_file_order_with_groups() -> None:
    lexicon = lex(
        "lang,match,say,kind\n"
        "en,Gate (\\d+)([A-Z]),gate \\1 \\2,regex\n"
        "en,gate,door,word\n"
        "*,(?i)wi-?fi,why fye,regex\n"
    )
    assert say(lexicon, "Gate 12B has WiFi", "en") == "gate 12 B has why fye"
    assert say(lexicon, "wi-fi 无线", "zh") == "why fye 无线"


def test_the_lexicon_overrides_the_number_rules() -> None:
    lexicon = lex("lang,match,say\nen,CA1234,Air China twelve thirty-four\nzh,G1,G幺\n")
    assert engine_text("Flight CA1234 and CA1235", lang="en", lexicons=[lexicon]) == (
        "Flight Air China twelve thirty-four and C A one two three five"
    )
    assert engine_text("G1次18:45开", lang="zh", lexicons=[lexicon], engine="cosyvoice") == (
        "G幺次十八点四十五分开"
    )


def test_batch_lexicon_wins_over_the_global_one_and_both_are_in_the_key() -> None:
    batch = lex("lang,match,say\nen,Paris,Pa-ree\n")
    everyone = lex("lang,match,say\nen,Paris,Paris France\nen,Lyon,Lee-on\n")
    assert engine_text("Paris, Lyon", lang="en", lexicons=[batch, everyone]) == "Pa-ree, Lee-on"
    keys = {text_rules([]), text_rules([everyone]), text_rules([batch, everyone])}
    assert len(keys) == 3
    assert text_rules([batch, everyone]) == text_rules(
        [lex("lang,match,say\nen,Paris,Pa-ree\n"), everyone]
    )


def test_the_message_carries_the_lexicon_digest_and_the_worker_checks_it() -> None:
    from core.contract import build_message, parse_message, validate_spec

    speakers = ("英文女",)
    spec = validate_spec(
        {"text": "To Paris", "speaker": "英文女"}, speakers=speakers, max_chars=500
    )
    digest = lex("lang,match,say\nen,Paris,Pa-ree\n").digest()
    with_lexicon = replace(spec, lexicon=digest)
    # A different lexicon is a different request: its own job, not a share of another's.
    assert with_lexicon.fingerprint() != spec.fingerprint()
    message = build_message(job_id="j", batch_id="b", spec=with_lexicon, enqueued_at=1.0)
    assert parse_message(message, speakers=speakers, max_chars=500).spec.lexicon == digest
    assert "lexicon" not in build_message(job_id="j", batch_id="b", spec=spec, enqueued_at=1.0)
    with pytest.raises(InvalidJob, match="field 'lexicon'"):
        parse_message({**message, "lexicon": "../etc"}, speakers=speakers, max_chars=500)
