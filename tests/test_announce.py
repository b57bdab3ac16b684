"""Numbers, times, dates and money as announcements read them (worker.text.announce), and what
espeak-ng then says: its phonemes (`espeak-ng -q -x`), not audio."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from worker.text.announce import announce, en_number, ja_number, ko_number, zh_number
from worker.text.prepare import engine_text

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
# The espeak-ng voices the espeak engine uses per language (worker/engines/espeak.py).
VOICES = {"zh": "cmn", "en": "en-us", "ja": "ja", "yue": "yue", "ko": "ko"}


def phonemes(text: str, lang: str) -> str:
    """espeak-ng's phonemes for `text`, without stress marks, pauses and spaces (so that a
    word's phonemes can be found inside a sentence's)."""
    out = subprocess.run(
        ["espeak-ng", "-q", "-x", "-v", VOICES[lang]],
        input=text.encode("utf-8"),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode("utf-8")
    return re.sub(r"[',\s]|_[|!:]", "", out)


def espeak_input(text: str, lang: str) -> str:
    return engine_text(text, lang=lang, lexicons=[], engine="espeak")


@pytest.mark.parametrize(
    ("lang", "text", "spoken"),
    [
        (
            "en",
            "Flight CA1234 leaves at 18:45",
            "Flight C A one two three four leaves at eighteen forty-five",
        ),
        ("en", "the 09:05 and the 18:00", "the nine oh five and the eighteen hundred"),
        ("en", "on 2026-12-04", "on December fourth, twenty twenty-six"),
        ("en", "£1, $12.50, €0.20", "one pound, twelve dollars and fifty cents, twenty cents"),
        ("en", "platform 9", "platform 9"),
        ("zh", "G7次列车18:45发车", "G 七次列车十八点四十五分发车"),
        ("zh", "D301次 09:05 10:00", "D 三零一次 九点零五分 十点整"),
        ("zh", "2026-12-04 票价¥35.50", "二零二六年十二月四日 票价三十五元五角"),
        ("yue", "G7次列車18:45開出", "G 七次列車十八點四十五分開出"),
        ("yue", "HK$12.50", "十二蚊五毫"),
        ("ja", "JL123便は18:45発", "J L ひゃくにじゅうさん便はじゅうはちじ よんじゅうごふん発"),
        (
            "ja",
            "09:04 14:30 07:10 ¥350",
            "くじ よんぷん じゅうよじ さんじゅっぷん しちじ じゅっぷん さんびゃくごじゅうえん",
        ),
        ("ja", "2024-04-01", "にせんにじゅうよねん しがつ ついたち"),
        ("ko", "KTX101 열차 18:45 출발", "K T X 백일 열차 십팔 시 사십오 분 출발"),
        ("ko", "2026-06-10 ₩5,000 10:00", "이천이십육 년 유 월 십 일 오천 원 십 시"),
    ],
)
def test_rules_per_language(lang: str, text: str, spoken: str) -> None:
    assert announce(text, lang) == spoken


def test_shapes_that_are_not_dates_times_or_codes_are_left_alone() -> None:
    text = "Room 12:345, ratio 1:2:3, 2026-13-40, version 3.18:45, a4, CA 1234"
    assert announce(text, "en") == text.replace("1:2:3", "1:2:3")
    assert announce("G7", None) == "G7"
    assert announce("$123456789012", "en") == "$123456789012"


def test_number_words() -> None:
    assert [en_number(n) for n in (0, 15, 40, 101, 1234, 2_000_000)] == [
        "zero", "fifteen", "forty", "one hundred one", "one thousand two hundred thirty-four",
        "two million",
    ]  # fmt: skip
    assert [zh_number(n) for n in (0, 10, 15, 105, 1010, 30020, 100000)] == [
        "零", "十", "十五", "一百零五", "一千零一十", "三万零二十", "十万",
    ]  # fmt: skip
    assert [ja_number(n) for n in (300, 600, 800, 3000, 8000, 12345)] == [
        "さんびゃく", "ろっぴゃく", "はっぴゃく", "さんぜん", "はっせん",
        "いちまんにせんさんびゃくよんじゅうご",
    ]  # fmt: skip
    assert [ko_number(n) for n in (0, 18, 101, 2026, 10000, 35000)] == [
        "영", "십팔", "백일", "이천이십육", "만", "삼만오천",
    ]  # fmt: skip


@needs_espeak
def test_espeak_en_says_a_flight_number_digit_by_digit() -> None:
    said = phonemes(espeak_input("Flight CA1234", "en"), "en")
    assert phonemes("one two three four", "en") in said
    # Left to itself espeak-ng reads "one thousand two hundred thirty-four".
    assert phonemes("thousand", "en") not in said
    assert phonemes("thousand", "en") in phonemes("Flight CA1234", "en")


@needs_espeak
def test_espeak_zh_says_a_train_number_digit_by_digit() -> None:
    # espeak-ng's cmn dictionary lacks 零, so the espeak engine gets Arabic digits, spaced.
    given = espeak_input("G101次", "zh")
    assert given == "G 1 0 1次"
    said, raw = phonemes(given, "zh"), phonemes("G101次", "zh")
    # ji55 pai21 ji55 (一百一) left to itself; ji55 li35N ji55 (一 零 一) with the rule.
    assert "pai21" in raw and "pai" not in said
    assert "ji55li35Nji55" in said


@needs_espeak
def test_espeak_yue_says_a_train_number_digit_by_digit_and_a_time_in_words() -> None:
    given = espeak_input("G101次 18:45", "yue")
    said = phonemes(given, "yue")
    assert phonemes("一百", "yue") in phonemes("G101次", "yue")
    assert phonemes("一零一", "yue") in said and phonemes("百", "yue") not in said
    assert phonemes("十八點四十五分", "yue") in said


@needs_espeak
def test_espeak_ja_reads_the_kana_of_a_time_where_it_cannot_read_kanji() -> None:
    said = phonemes(espeak_input("18:45", "ja"), "ja")
    assert said == phonemes("じゅうはちじ よんじゅうごふん", "ja")
    assert phonemes("ふん", "ja") in said
    # Kanji (18時45分) would be read as "Chinese letter" in English by this voice.
    assert "(en)" in phonemes("18時45分", "ja") and "(en)" not in said


@needs_espeak
def test_espeak_ko_reads_hours_and_minutes() -> None:
    said = phonemes(espeak_input("18:45", "ko"), "ko")
    # Sino-Korean 십팔 (18) and 사십오 분 (45 minutes).
    assert said == phonemes("십팔 시 사십오 분", "ko")
    assert phonemes("분", "ko") not in phonemes("18:45", "ko")
