"""Where a worker loads its engine: once, in the parent process, before the pool forks.

Why there (CosyVoice loads in 15-30 s):
- Celery gives `worker_process_init` handlers `worker_proc_alive_timeout` (4 s) in each child;
  a load in the parent never meets that timeout, and a child respawned after a crash or after
  `max_tasks_per_child` is ready at once.
- No pool process exists before the engine does, so none can take a task without it.
- A load failure happens once, before any child exists: the worker prints one line and exits
  with EX_CONFIG instead of failing every task or respawning children that fail in a loop.
- The weights are shared copy-on-write by the children (1.7 GB for the full model).
- The upstream text normalizer rebuilds its FST cache files inside site-packages on every load;
  one load means one writer.

What makes the fork safe: the engine loads with one torch thread, so no OpenMP/MKL thread pool
exists in the parent when it forks (a pool started before a fork deadlocks the children's,
pytorch#17199, reproduced on this machine); each child sets its own thread count
(`init_pool_process`, or on first use). The parent must never synthesize, and the pool must
fork (Celery's `worker_pool_start_method` default on Linux), or the children have no engine.

No Celery import here; see docs/cosyvoice.md for the signals the glue connects.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import NoReturn, TextIO

# EX_CONFIG (78): the worker cannot run with this configuration; re-exported for callers.
from core.exit_codes import EX_CONFIG as EX_CONFIG
from core.settings import Settings
from worker.synth import Synthesizer, load_engine

_engine: Synthesizer | None = None
_load_seconds = 0.0


def preload(
    settings: Settings,
    *,
    load: Callable[[Settings], Synthesizer] = load_engine,
    stderr: TextIO | None = None,
) -> Synthesizer:
    """Load the engine in the worker's parent process, before the pool starts.

    On failure, print one line naming the engine and the cause to stderr and raise
    SystemExit(EX_CONFIG): the whole worker stops.
    """
    global _engine, _load_seconds
    started = time.monotonic()
    try:
        engine = load(settings)
    except Exception as exc:  # any load failure is fatal for the worker
        fatal(f"cannot load engine {settings.engine!r}: {one_line(exc)}", stderr=stderr)
    _engine, _load_seconds = engine, time.monotonic() - started
    return engine


def init_pool_process() -> None:
    """In each pool process right after the fork (Celery `worker_process_init`): fast.

    Gives the engine its per-process setup (torch threads) now rather than on the first task.
    """
    engine = current()
    prepare = getattr(engine, "prepare_process", None)
    if callable(prepare):
        prepare()


def current() -> Synthesizer:
    """The engine this process inherited from `preload`."""
    if _engine is None:
        raise RuntimeError(
            "no engine: engine_host.preload() did not run in this worker's parent process "
            "(or the pool does not fork)"
        )
    return _engine


def load_seconds() -> float:
    """How long `preload` took (the metric `load_seconds`)."""
    return _load_seconds


def one_line(exc: BaseException) -> str:
    """The exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def fatal(message: str, *, code: int = EX_CONFIG, stderr: TextIO | None = None) -> NoReturn:
    """Print `tts-batch worker: <message>` as one line and exit with `code` (core.exit_codes)."""
    stream = stderr if stderr is not None else sys.stderr
    print(f"tts-batch worker: {' '.join(message.split())}", file=stream, flush=True)
    raise SystemExit(code)
