"""The producer side loads no torch, no numpy and no engine: checked in fresh interpreters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = (
    "torch",
    "numpy",
    "soundfile",
    "worker.synth",
    "worker.engines.cosyvoice.engine",
    "cosyvoice",
)


def loaded_modules(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_producer_is_light() -> None:
    modules = loaded_modules("import producer, producer.api, producer.cli")
    assert not modules & set(HEAVY)


def test_cli_submit_path_is_light(tmp_path: Path) -> None:
    # Parse and validate a file through the CLI's code path, with nothing to connect to.
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text,speaker\nr1,,英文女\n", encoding="utf-8")
    code = (
        "from producer import cli\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stderr(io.StringIO()):\n"
        f"    assert cli.main(['submit', {str(rows)!r}]) == 2\n"
    )
    modules = loaded_modules(code)
    assert "producer.api" in modules
    assert not modules & set(HEAVY)
