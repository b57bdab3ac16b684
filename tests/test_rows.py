"""Reading CSV and JSONL job files."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InvalidBatch, InvalidJob
from producer.rows import read_rows


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_csv_with_bom_quotes_and_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.csv",
        '\ufeffid,text,speaker,extra\nr1,"Hello, world",英文女,x\n\nr2,你好,中文女,y\n'.encode(),
    )
    rows = list(read_rows(path))
    assert [line for line, _ in rows] == [2, 4]
    first = rows[0][1]
    assert isinstance(first, dict)
    assert first["text"] == "Hello, world" and first["id"] == "r1"


def test_jsonl_rows_and_bad_lines_are_reported_per_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.jsonl",
        b'{"id":"r1","text":"hi","speaker":"x"}\nnot json\n[1]\n\xff\xfe\n',
    )
    rows = list(read_rows(path))
    assert isinstance(rows[0][1], dict)
    for line, value in rows[1:]:
        assert isinstance(value, InvalidJob) and value.row == line
    assert [line for line, _ in rows] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.csv", b"", "empty"),
        ("blank.jsonl", b"\n\n", "no rows"),
        ("semi.csv", "id;text;speaker\nr1;hi;英文女\n".encode(), "not comma-separated"),
        ("nohead.csv", b"a,b\n1,2\n", "lacks id, text, speaker"),
        ("latin1.csv", "id,text,speaker\nr1,caf\xe9,x\n".encode("latin-1"), "UTF-8"),
    ],
)
def test_files_refused_whole(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidBatch, match=message):
        list(read_rows(write(tmp_path, name, data)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidBatch, match="no such file"):
        list(read_rows(tmp_path / "nope.csv"))


def test_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", b"id,text,speaker\nr1,hi\n")
    [(line, value)] = list(read_rows(path))
    assert line == 2 and isinstance(value, InvalidJob)
