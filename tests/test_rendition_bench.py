"""The rendition benchmark's quick espeak path runs and writes its report: a synthesis and,
per rendition, decoding the master and rendering from it, with the ratio between them. Never
a timing: the figures are the benchmark's business."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.rendition_bench import RENDITIONS, main


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_quick_espeak_run_writes_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "renditions.json"
    assert main(["--quick", "--skip-cosyvoice", "--out", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(report["machine"]["flags"], list) and report["machine"]["cores"] >= 1
    assert list(report["engines"]) == ["espeak"]
    espeak = report["engines"]["espeak"]
    assert len(espeak["texts"]) == 2 and set(espeak["median_ratio"]) == set(RENDITIONS)
    for row in espeak["texts"]:
        assert row["audio_seconds"] > 1 and row["synthesis_ms"] > 0 and row["master_bytes"] > 0
        assert row["synthesis_rtf"] > 0 and row["master_decode_ms"] > 0
        assert set(row["renditions"]) == set(RENDITIONS)
        for cell in row["renditions"].values():
            assert cell["ms"] > 0 and cell["bytes"] > 0 and cell["synthesis_over_rendition"] > 0
    printed = capsys.readouterr().out
    assert "cpu flags: " in printed and "median ratio" in printed
