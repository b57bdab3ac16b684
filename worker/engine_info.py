"""What a worker's engine offers: engine, model, speakers (canonical ids) and their aliases.

The same dict answers Celery's `tts_engine` inspect command (worker/parent/control.py, read by
`tts-batch speakers` and `tts-batch doctor`) and `python -m worker.engine_info`, which loads an
engine named on the command line with no worker running (`tts-batch speakers --engine`). No
Celery here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from core.settings import Settings
from core.speakers import SPEAKERS, aliases_for
from worker.synth import ENGINES, Synthesizer, load_engine


def engine_info(engine: Synthesizer, settings: Settings) -> dict[str, Any]:
    """The reply of `tts_engine`: {"engine", "model", "model_id", "speakers", "aliases"}.

    `speakers` are the ids a job may ask of this worker: the engine's own that the settings
    allow (the worker validates against both), in the speaker table's order."""
    offered = engine.speakers() & frozenset(settings.speakers)
    table = [s.id for s in SPEAKERS if s.id in offered]
    speakers = table + sorted(offered - set(table))
    return {
        "engine": engine.name,
        # The model directory a cosyvoice worker loaded; the other engines have none.
        "model": (settings.model_dir or None) if engine.name == "cosyvoice" else None,
        "model_id": engine.model_id,
        "speakers": speakers,
        "aliases": aliases_for(speakers),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.engine_info",
        description="Load an engine and print what it offers as one JSON line.",
    )
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--model-dir", default=None, help="cosyvoice: the model directory")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    settings = replace(settings, engine=args.engine, model_dir=args.model_dir or settings.model_dir)
    try:
        # Whatever a runtime prints while it loads goes to stderr: stdout is the JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            engine = load_engine(settings)
    except Exception as exc:  # any load failure: one line for the CLI to show
        from worker.engine_host import one_line

        print(f"cannot load engine {args.engine!r}: {one_line(exc)}", file=sys.stderr)
        return 2
    print(json.dumps(engine_info(engine, settings), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
