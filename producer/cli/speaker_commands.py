"""Voice commands: speakers (which voices the running workers, or an engine, offer)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import ConfigError, TransientError
from core.settings import Settings
from core.speakers import SPEAKERS, describe
from producer.cli.errors import EXIT_FAILED, EXIT_OK

# The remote-control command every worker node registers (worker/parent/control.py).
ENGINE_COMMAND = "tts_engine"
ENGINES = ("espeak", "fake", "cosyvoice")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "speakers",
        help="list the voices the running workers offer (or an engine's, with --engine)",
        description=(
            "Ask every running worker node which engine it loaded and which speakers it offers; "
            "or, with --engine, load that engine here (no worker needed). A speaker can be "
            "named by its alias (en-female) or its id (英文女) in rows and in the Python API."
        ),
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--engine", choices=ENGINES, help="load this engine locally instead of asking workers"
    )
    p.add_argument("--model-dir", help="with --engine cosyvoice: the model directory")
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="seconds to wait for the workers' answers (default 2)",
    )
    p.set_defaults(run=_cmd_speakers)


class NoWorkerAnswered(TransientError):
    """No worker node answered `tts_engine` in time (exit 1: one may start)."""


def _cmd_speakers(args: argparse.Namespace, settings: Settings) -> int:
    if args.model_dir and args.engine != "cosyvoice":
        raise ConfigError("--model-dir goes with --engine cosyvoice")
    if args.engine:
        sources = {f"engine:{args.engine}": _engine_info(settings, args.engine, args.model_dir)}
    else:
        sources = _ask_workers(settings, timeout=args.timeout)
    broken = {name: info["error"] for name, info in sources.items() if "error" in info}
    table = speaker_table(sources)
    if args.json:
        print(json.dumps({"sources": sources, "speakers": table}, ensure_ascii=False))
    else:
        _print_table(table)
    for name, error in broken.items():
        print(f"tts-batch: {name}: {error}", file=sys.stderr)
    return EXIT_FAILED if broken else EXIT_OK


def _ask_workers(settings: Settings, *, timeout: float) -> dict[str, dict[str, Any]]:
    from core.redis_conn import connect
    from producer.sender import client_app

    # A ping first: with Redis down, a broadcast would retry the connection for a long time;
    # this fails at once with the broker's one-line error (exit 1).
    connect(settings).ping()
    app = client_app(settings)
    try:
        replies = app.control.broadcast(ENGINE_COMMAND, reply=True, timeout=timeout) or []
    finally:
        app.close()
    sources: dict[str, dict[str, Any]] = {}
    for reply in replies:
        for node, info in reply.items():
            sources[node] = info if isinstance(info, dict) else {"error": f"answered {info!r}"}
    if not sources:
        raise NoWorkerAnswered(
            f"no worker answered within {timeout:g} s (is one running? `tts-batch up`; "
            "or name an engine: `tts-batch speakers --engine espeak`)"
        )
    return dict(sorted(sources.items()))


def _engine_info(settings: Settings, engine: str, model_dir: str | None) -> dict[str, Any]:
    # In a child process: the producer side imports no engine (tests/test_light_imports.py).
    command = [sys.executable, "-m", "worker.engine_info", "--engine", engine]
    if model_dir:
        command += ["--model-dir", model_dir]
    proc = subprocess.run(
        command,
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        errors = proc.stderr.strip().splitlines()
        raise ConfigError(errors[-1] if errors else f"cannot load engine {engine!r}")
    info: dict[str, Any] = json.loads(lines[-1])
    return info


def speaker_table(sources: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per speaker any source offers: alias, id, lang, gender and the sources
    (worker nodes, or `engine:NAME`) that offer it; table order, then unknown ids by name."""
    offered_by: dict[str, list[str]] = {}
    for name, info in sources.items():
        for speaker_id in info.get("speakers", []):
            offered_by.setdefault(str(speaker_id), []).append(name)
    rows = []
    for speaker_id, names in offered_by.items():
        known = describe(speaker_id)
        rows.append(
            {
                "alias": known.alias if known else None,
                "id": speaker_id,
                "lang": known.lang if known else None,
                "gender": known.gender if known else None,
                "workers": names,
            }
        )
    order = {s.id: i for i, s in enumerate(SPEAKERS)}
    return sorted(rows, key=lambda r: (order.get(r["id"], len(order)), r["id"]))


def _print_table(rows: Sequence[Mapping[str, Any]]) -> None:
    header = ("alias", "id", "lang", "gender", "workers")
    cells = [header] + [
        (
            r["alias"] or "-",
            r["id"],
            r["lang"] or "-",
            r["gender"] or "-",
            ", ".join(r["workers"]),
        )
        for r in rows
    ]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        padded = [cell + " " * (widths[i] - _width(cell)) for i, cell in enumerate(row[:-1])]
        print("  ".join([*padded, row[-1]]))


def _width(text: str) -> int:
    # Chinese ids take two terminal columns per character.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
