"""Arrows point down only: the worker imports nothing from producer/ or devstack/, core imports
none of the sides, and the production worker never loads the random-model builder. Checked by
reading every module's imports (including those inside functions), and in fresh interpreters."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(package: str) -> dict[str, set[str]]:
    """Every module each file of `package` imports, by file."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for file, names in imported(package).items():
        hits = sorted(n for n in names if n.split(".")[0] in forbidden)
        if hits:
            bad[file] = hits
    return bad


def test_worker_imports_nothing_from_producer_or_devstack() -> None:
    assert offenders("worker", ("producer", "devstack", "monitoring")) == {}


def test_core_imports_no_side() -> None:
    assert offenders("core", ("producer", "worker", "devstack", "monitoring", "celery")) == {}


def test_monitoring_and_devstack_import_no_worker() -> None:
    assert offenders("monitoring", ("producer", "worker", "devstack")) == {}
    assert offenders("devstack", ("producer", "worker")) == {}


def test_celeryconfig_is_worker_side() -> None:
    names = {
        n.module or ""
        for n in ast.walk(ast.parse((ROOT / "celeryconfig.py").read_text(encoding="utf-8")))
        if isinstance(n, ast.ImportFrom)
    }
    assert all(name.split(".")[0] == "core" for name in names if name != "__future__"), names


def test_a_loaded_worker_has_no_producer_devstack_or_random_model() -> None:
    probe = (
        "import worker.tasks, worker.synth, worker.engines.espeak, worker.engines.fake\n"
        "import worker.engines.cosyvoice.engine\n"
        "import sys, json; print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        cwd=ROOT,
    ).stdout
    modules = set(json.loads(out.strip().splitlines()[-1]))
    bad = {
        m
        for m in modules
        if m.split(".")[0] in ("producer", "devstack")
        or m == "worker.engines.cosyvoice.random_model"
    }
    assert not bad
