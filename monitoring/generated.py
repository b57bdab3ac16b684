"""Files generated from code (the Grafana dashboard, the Compose Prometheus config): one
command-line shape for writing them, or checking that the committed copy is current."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from core.errors import ConfigError

# The source tree's compose/ folder: where the generators write (they run in a clone).
SOURCE_COMPOSE = Path(__file__).resolve().parents[1] / "compose"


def compose_dir() -> Path:
    """The compose/ folder to read (alert rules): `TTS_COMPOSE_DIR` when set (an installed
    package has no source tree beside it), else the source tree's."""
    given = os.environ.get("TTS_COMPOSE_DIR")
    path = Path(given) if given else SOURCE_COMPOSE
    if not (path / "prometheus" / "rules").is_dir():
        raise ConfigError(
            f"TTS_COMPOSE_DIR: no prometheus/rules in {path}; point it at the repository's "
            "compose/ folder"
        )
    return path


def write_or_check(
    argv: list[str] | None, *, default_out: Path, render: Callable[[], str], module: str
) -> None:
    """`python -m MODULE [--out FILE] [--check]`: write the file, or exit 1 if it differs."""
    parser = argparse.ArgumentParser(
        description=f"Write (or with --check, compare) {default_out.name}."
    )
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if args.out.read_text(encoding="utf-8") != text:
            raise SystemExit(f"{args.out} is out of date: run python -m {module}")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
