"""The model directory check: runs before any heavy import, so no runtime is needed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from worker.engines.cosyvoice.model_dir import REQUIRED_FILES, check_model_dir, model_fingerprint


def _fill(directory: Path, names: tuple[str, ...] = REQUIRED_FILES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"x")
    return directory


def test_complete_directory_passes(tmp_path: Path) -> None:
    assert check_model_dir(str(_fill(tmp_path / "m"))) == tmp_path / "m"


@pytest.mark.parametrize("value", ["", "relative/model", "./m"])
def test_empty_or_relative_path_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="TTS_MODEL_DIR"):
        check_model_dir(value)


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="is not a directory") as info:
        check_model_dir(str(missing))
    assert str(missing) in str(info.value)


def test_missing_files_are_listed_on_one_line(tmp_path: Path) -> None:
    model = _fill(
        tmp_path / "m", tuple(n for n in REQUIRED_FILES if n not in {"llm.pt", "hift.pt"})
    )
    with pytest.raises(ConfigError) as info:
        check_model_dir(str(model))
    message = str(info.value)
    assert "\n" not in message
    assert "lacks 2 of 7 model files: llm.pt, hift.pt" in message


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    model = _fill(tmp_path / "m")
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    (model / "flow.pt").write_bytes(b"changed weights")
    assert model_fingerprint(model) != before
