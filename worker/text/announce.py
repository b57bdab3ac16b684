"""Numbers, times, dates and money as announcements read them (docs/lexicon.md, "Numbers").

Applied by the worker after the lexicon, to the text the lexicon left alone, so a lexicon entry
overrides any rule here. Only unambiguous shapes are rewritten; any other number is left to the
engine's own reading. The rules and where their conventions come from:

- Codes: 1-3 capital Latin letters and 1-5 digits ("G7", "D301", "CA1234"). Letters are spelled
  one by one. en: digits one by one ("C A one two three four"): the ICAO radiotelephony rule of
  sending each digit separately (Annex 10 Vol. II, 5.2.1.4). zh/yue: digits one by one in
  Chinese ("G七", "G一零一"): mainland railway announcements read train numbers digit by digit;
  some lines say 幺 for 1, not done here (add lexicon entries where wanted). ja/ko: the number is
  read whole (JAL 123便 is "ひゃくにじゅうさんびん"; Korean trains and flights by Sino-Korean
  numbers, KTX 101 = 백일), in kana / hangul.
- Clock times HH:MM (24-hour). en: "eighteen forty-five", "nine oh five", "eighteen hundred"
  (British railway style). zh/yue: 十八点四十五分 / 十八點四十五分, 点整 on the hour. ja: kana
  (espeak-ng's Japanese voice reads kana, not kanji; CosyVoice's front end sends kanji with
  digits through its Chinese normalizer): じゅうはちじ よんじゅうごふん. ko: Sino-Korean in hangul,
  십팔 시 사십오 분 (CosyVoice's front end would read Arabic digits in English).
- Dates, ISO only (YYYY-MM-DD): en "December fourth, twenty twenty-six"; zh/yue 二零二六年十二月四日
  (years digit by digit, as Chinese reads them); ja in kana; ko 이천이십육 년 십이 월 사 일.
- Money with a currency sign before the amount, per language ($ £ € in en; ¥ ￥ in zh and ja;
  HK$ in yue; ₩ in ko).

Arabic numerals (`numerals="arabic"`, zh only): for an engine that reads Arabic numbers in
Mandarin but not the characters the word forms need. Debian's espeak-ng 1.51 `cmn` voice has no
dictionary entry for 零, 点, 分 (it spells their pinyin with English letter names) yet reads "1 0 1"
as 一 零 一: codes become "G 1 0 1", ISO dates "2 0 2 6年12月4日", and times and money are left to
it (it reads "18:45" as 十八 四十五).

RULES_VERSION goes into the content key: change it whenever a rule's output changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable

RULES_VERSION = "announce-1"

_CODE = re.compile(r"(?<![A-Za-z0-9])([A-Z]{1,3})(\d{1,5})(?![A-Za-z0-9])")
_TIME = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_DATE = re.compile(r"(?<![\d-])(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?![\d-])")
_AMOUNT = r"(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?(?![\d.,]\d)"

# ---------------------------------------------------------------- English
_EN_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_EN_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_EN_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_EN_ORDINAL = {
    "one": "first", "two": "second", "three": "third", "five": "fifth",
    "eight": "eighth", "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def en_number(n: int) -> str:
    """Cardinal words, 0 to 999,999,999."""
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _EN_TENS[tens] + (f"-{_EN_ONES[ones]}" if ones else "")
    for size, name in ((1_000_000, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            high, rest = divmod(n, size)
            return f"{en_number(high)} {name}" + (f" {en_number(rest)}" if rest else "")
    raise AssertionError(n)


def _en_ordinal(n: int) -> str:
    words = en_number(n)
    head, sep, last = words.rpartition("-") if "-" in words else words.rpartition(" ")
    if last in _EN_ORDINAL:
        last = _EN_ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def _en_year(year: int) -> str:
    if 2000 <= year <= 2009 or year % 1000 == 0:
        return en_number(year)
    high, low = divmod(year, 100)
    if low == 0:
        return f"{en_number(high)} hundred"
    return f"{en_number(high)} {'oh ' + en_number(low) if low < 10 else en_number(low)}"


def _en_time(h: int, m: int) -> str:
    if m == 0:
        return f"{en_number(h)} hundred"
    return f"{en_number(h)} {'oh ' + en_number(m) if m < 10 else en_number(m)}"


def _en_money(units: int, cents: int, names: tuple[str, str, str, str]) -> str:
    one, many, cent, cents_name = names
    parts = []
    if units or not cents:
        parts.append(f"{en_number(units)} {one if units == 1 else many}")
    if cents:
        parts.append(f"{en_number(cents)} {cent if cents == 1 else cents_name}")
    return " and ".join(parts)


# ---------------------------------------------------------------- Chinese (zh, yue)
_ZH_DIGITS = "零一二三四五六七八九"


def zh_number(n: int, *, traditional: bool = False) -> str:
    """Chinese numerals, 0 to 99,999,999: 十八, 一百零五, 三万零二十."""
    if n == 0:
        return "零"
    high, low = divmod(n, 10000)
    if high:
        rest = _zh_under_10000(low)
        joiner = "零" if 0 < low < 1000 else ""
        return zh_number(high) + ("萬" if traditional else "万") + joiner + rest
    words = _zh_under_10000(low)
    # 10-19 are 十, 十一, ... not 一十一.
    return words[1:] if 10 <= n < 20 else words


def _zh_under_10000(n: int) -> str:
    out, zero = "", False
    for size, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // size % 10
        if digit:
            if zero and out:
                out += "零"
            out += _ZH_DIGITS[digit] + unit
            zero = False
        else:
            zero = True
    return out


def _zh_digits(digits: str) -> str:
    return "".join(_ZH_DIGITS[int(d)] for d in digits)


# ---------------------------------------------------------------- Japanese (kana)
_JA_DIGITS = ["", "いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう"]
_JA_HUNDREDS = ["", "ひゃく", "にひゃく", "さんびゃく", "よんひゃく", "ごひゃく", "ろっぴゃく",
                "ななひゃく", "はっぴゃく", "きゅうひゃく"]  # fmt: skip
_JA_THOUSANDS = ["", "せん", "にせん", "さんぜん", "よんせん", "ごせん", "ろくせん", "ななせん",
                 "はっせん", "きゅうせん"]  # fmt: skip
_JA_HOURS = {4: "よ", 7: "しち", 9: "く", 14: "じゅうよ", 17: "じゅうしち", 19: "じゅうく"}
_JA_MINUTE_ONES = ["", "いっぷん", "にふん", "さんぷん", "よんぷん", "ごふん", "ろっぷん",
                   "ななふん", "はっぷん", "きゅうふん"]  # fmt: skip
_JA_MONTHS = ["", "いち", "に", "さん", "し", "ご", "ろく", "しち", "はち", "く", "じゅう",
              "じゅういち", "じゅうに"]  # fmt: skip
_JA_DAYS = {1: "ついたち", 2: "ふつか", 3: "みっか", 4: "よっか", 5: "いつか", 6: "むいか",
            7: "なのか", 8: "ようか", 9: "ここのか", 10: "とおか", 14: "じゅうよっか",
            20: "はつか", 24: "にじゅうよっか"}  # fmt: skip


def ja_number(n: int) -> str:
    """Kana readings, 0 to 99,999,999 (さんびゃく, はっせん: the sound changes included)."""
    if n == 0:
        return "ぜろ"
    high, low = divmod(n, 10000)
    return (ja_number(high) + "まん" if high else "") + _ja_under_10000(low)


def _ja_under_10000(n: int) -> str:
    thousands, rest = divmod(n, 1000)
    hundreds, rest = divmod(rest, 100)
    tens, ones = divmod(rest, 10)
    return (
        _JA_THOUSANDS[thousands]
        + _JA_HUNDREDS[hundreds]
        + ((_JA_DIGITS[tens] if tens > 1 else "") + "じゅう" if tens else "")
        + _JA_DIGITS[ones]
    )


def _ja_time(h: int, m: int) -> str:
    hour = (_JA_HOURS.get(h) or ja_number(h) if h else "れい") + "じ"
    if m == 0:
        return hour
    tens, ones = divmod(m, 10)
    tens_kana = (_JA_DIGITS[tens] if tens > 1 else "") + "じゅう" if tens else ""
    minute = tens_kana[:-1] + "っぷん" if ones == 0 else tens_kana + _JA_MINUTE_ONES[ones]
    return f"{hour} {minute}"


def _ja_counted(n: int, suffix: str) -> str:
    # 4 before ねん/えん is よ (よねん, よえん), not よん.
    words = ja_number(n)
    return (words[:-1] if words.endswith("よん") else words) + suffix


def _ja_day(d: int) -> str:
    if d in _JA_DAYS:
        return _JA_DAYS[d]
    tens, ones = divmod(d, 10)
    return (_JA_DIGITS[tens] if tens > 1 else "") + "じゅう" + _JA_MONTHS[ones] + "にち"


# ---------------------------------------------------------------- Korean (Sino-Korean, hangul)
_KO_DIGITS = ["", "일", "이", "삼", "사", "오", "육", "칠", "팔", "구"]
# 6월 and 10월 drop a consonant: 유월, 시월.
_KO_MONTHS = {6: "유", 10: "시"}


def ko_number(n: int) -> str:
    """Sino-Korean numerals in hangul, 0 to 99,999,999 (십팔, 백일, 이천이십육, 만)."""
    if n == 0:
        return "영"
    high, low = divmod(n, 10000)
    head = ("" if high == 1 else ko_number(high)) + "만" if high else ""
    out = ""
    for size, unit in ((1000, "천"), (100, "백"), (10, "십"), (1, "")):
        digit = low // size % 10
        if digit:
            # 일 is dropped before 십, 백, 천: 십, not 일십.
            out += ("" if digit == 1 and unit else _KO_DIGITS[digit]) + unit
    return head + out


# ---------------------------------------------------------------- the rules per language
def _amount(units: str, cents: str | None) -> tuple[int, int]:
    return int(units.replace(",", "")), int(cents or 0)


def _spell(letters: str) -> str:
    return " ".join(letters)


def _code(lang: str, m: re.Match[str], arabic: bool) -> str:
    letters, digits = m.group(1), m.group(2)
    if arabic:
        return _spell(letters) + " " + " ".join(digits)
    if lang == "en":
        return _spell(letters) + " " + " ".join(_EN_ONES[int(d)] for d in digits)
    if lang in ("zh", "yue"):
        return _spell(letters) + " " + _zh_digits(digits)
    if lang == "ja":
        return _spell(letters) + " " + ja_number(int(digits))
    return _spell(letters) + " " + ko_number(int(digits))


def _time(lang: str, m: re.Match[str], arabic: bool) -> str:
    h, mi = int(m.group(1)), int(m.group(2))
    if arabic:
        return m.group(0)
    if lang == "en":
        return _en_time(h, mi)
    if lang in ("zh", "yue"):
        dot = "點" if lang == "yue" else "点"
        if mi == 0:
            return zh_number(h) + dot + "整"
        return zh_number(h) + dot + ("零" if mi < 10 else "") + zh_number(mi) + "分"
    if lang == "ja":
        return _ja_time(h, mi)
    return f"{ko_number(h)} 시" + (f" {ko_number(mi)} 분" if mi else "")


def _date(lang: str, m: re.Match[str], arabic: bool) -> str:
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if arabic:
        return f"{' '.join(m.group(1))}年{mo}月{d}日"
    if lang == "en":
        return f"{_EN_MONTHS[mo - 1]} {_en_ordinal(d)}, {_en_year(y)}"
    if lang in ("zh", "yue"):
        return f"{_zh_digits(m.group(1))}年{zh_number(mo)}月{zh_number(d)}日"
    if lang == "ja":
        return f"{_ja_counted(y, 'ねん')} {_JA_MONTHS[mo]}がつ {_ja_day(d)}"
    return f"{ko_number(y)} 년 {_KO_MONTHS.get(mo) or ko_number(mo)} 월 {ko_number(d)} 일"


# Currency signs per language: sign -> how the amount is said.
def _en_currency(names: tuple[str, str, str, str]) -> Callable[[int, int], str]:
    return lambda units, cents: _en_money(units, cents, names)


def _zh_currency(unit: str, tenth: str, *, traditional: bool) -> Callable[[int, int], str]:
    def say(units: int, cents: int) -> str:
        tenths, hundredths = divmod(cents, 10)
        out = zh_number(units, traditional=traditional) + unit if units or not cents else ""
        if tenths:
            out += zh_number(tenths) + tenth
        if hundredths:
            out += ("零" if units and not tenths else "") + zh_number(hundredths) + "分"
        return out

    return say


_CURRENCIES: dict[str, dict[str, Callable[[int, int], str]]] = {
    "en": {
        "$": _en_currency(("dollar", "dollars", "cent", "cents")),
        "£": _en_currency(("pound", "pounds", "penny", "pence")),
        "€": _en_currency(("euro", "euros", "cent", "cents")),
    },
    "zh": {s: _zh_currency("元", "角", traditional=False) for s in ("¥", "￥")},
    "yue": {"HK$": _zh_currency("蚊", "毫", traditional=True)},
    "ja": {s: lambda units, cents: _ja_counted(units, "えん") for s in ("¥", "￥")},
    "ko": {"₩": lambda units, cents: f"{ko_number(units)} 원"},
}
_MONEY = {
    lang: re.compile(
        "("
        + "|".join(re.escape(s) for s in sorted(signs, key=len, reverse=True))
        + r")\s?"
        + _AMOUNT
    )
    for lang, signs in _CURRENCIES.items()
}


def _money(lang: str, m: re.Match[str], arabic: bool) -> str:
    units, cents = _amount(m.group(2), m.group(3))
    # Beyond the number words' range (99,999,999), or yen with a subunit: the engine reads it.
    if arabic or units >= 10**8 or (lang == "ja" and cents):
        return m.group(0)
    return _CURRENCIES[lang][m.group(1)](units, cents)


NUMERALS = ("words", "arabic")


def announce(text: str, lang: str | None, *, numerals: str = "words") -> str:
    """`text` with dates, times, money and codes written as `lang`'s announcements say them;
    unchanged for an unknown language. `numerals="arabic"` (zh only) keeps Arabic digits."""
    if lang not in _CURRENCIES:
        return text
    if numerals not in NUMERALS:
        raise ValueError(f"numerals must be one of {NUMERALS}, got {numerals!r}")
    arabic = numerals == "arabic" and lang == "zh"
    text = _DATE.sub(lambda m: _date(lang, m, arabic), text)
    text = _TIME.sub(lambda m: _time(lang, m, arabic), text)
    text = _MONEY[lang].sub(lambda m: _money(lang, m, arabic), text)
    return _CODE.sub(lambda m: _code(lang, m, arabic), text)
