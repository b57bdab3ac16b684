"""What CosyVoice's text front end (worker/engines/cosyvoice/text.py) gets from the number
rules, per language: the normalized chunks the model tokenizes, beside what it makes of the
raw text. Its own normalizers (wetext) read codes as numbers, send kanji through the Chinese
rules and read Arabic digits in Korean text in English."""

from __future__ import annotations

from typing import Any

import pytest

from worker.text.prepare import engine_text

pytestmark = pytest.mark.cosyvoice
pytest_plugins = ("tests.support.cosyvoice_fixtures",)


def front(engine: Any, text: str, lang: str) -> str:
    return " ".join(engine._splitter.split(text, lang=lang))


def ours(engine: Any, text: str, lang: str) -> str:
    return front(engine, engine_text(text, lang=lang, lexicons=[], engine="cosyvoice"), lang)


def test_zh_train_number_digit_by_digit_and_time_in_words(tiny_engine: Any) -> None:
    text = "G101次列车18:45发车，票价¥35.50"
    assert "G一百零一次" in front(tiny_engine, text, "zh")
    given = ours(tiny_engine, text, "zh")
    assert "G一零一次" in given and "百" not in given
    assert "十八点四十五分" in given and "三十五元五角" in given


def test_yue_train_number_digit_by_digit(tiny_engine: Any) -> None:
    text = "G101次18:45開出"
    assert "一百零一" in front(tiny_engine, text, "yue")
    given = ours(tiny_engine, text, "yue")
    assert "一零一" in given and "百" not in given


def test_en_flight_number_digit_by_digit(tiny_engine: Any) -> None:
    text = "Flight CA1234 at 18:45, $12.50"
    assert "thousand" in front(tiny_engine, text, "en")
    given = ours(tiny_engine, text, "en")
    assert "C A one two three four" in given and "thousand" not in given
    assert "eighteen forty-five" in given and "twelve dollars and fifty cents" in given


def test_ja_time_in_kana_not_in_chinese_readings(tiny_engine: Any) -> None:
    text = "JL123便は18:45発"
    # Left to itself the front end reads kanji text with the Chinese rules (十八点, 一百二十三).
    assert "十八点" in front(tiny_engine, text, "ja")
    given = ours(tiny_engine, text, "ja")
    assert "ひゃくにじゅうさん便" in given and "じゅうはちじよんじゅうごふん" in given
    assert "点" not in given


def test_ko_numbers_in_hangul_not_in_english(tiny_engine: Any) -> None:
    text = "KTX101 열차 18:45 출발"
    assert "eighteen" in front(tiny_engine, text, "ko")
    given = ours(tiny_engine, text, "ko")
    assert "백일 열차 십팔 시 사십오 분 출발" in given
    assert not any(word in given for word in ("one", "eighteen", "forty"))
