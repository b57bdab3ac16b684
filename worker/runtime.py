"""The per-process worker context: built once when a pool process starts, closed when it stops.

Prefork: each pool process builds its own after the fork. Batched mode (threads pool): the
node's one process builds it on first use, under a lock, and its B task threads share it.
Kept apart from Celery so that a test or a benchmark can build the same context directly.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from core.errors import StorageAuthError, StorageError
from core.redis_conn import connect
from core.settings import Settings
from core.storage import AudioStore
from worker import node_metrics
from worker.lease import ContentLease
from worker.pipeline import WorkerContext
from worker.push import BackgroundPusher, process_metrics, start_pusher
from worker.synth import Synthesizer, load_engine
from worker.text.prepare import LexiconSource

log = logging.getLogger(__name__)

_state: dict[str, object] = {"worker_name": socket.gethostname(), "in_process_pool": False}
# Task threads of a batched node ask for the context at once: one of them builds it. (A prefork
# parent never builds a context, so no fork can copy this lock while it is held.)
_build_lock = threading.Lock()


def set_worker_name(name: str) -> None:
    """The Celery node name (set in the parent before the pool forks)."""
    _state["worker_name"] = name


def worker_name() -> str:
    return str(_state["worker_name"])


def set_in_process_pool(value: bool) -> None:
    """Tasks run in the node's own process (threads pool), not in forked children: no Celery
    time limits there, so the pipeline gives each job a deadline."""
    _state["in_process_pool"] = value


def in_process_pool() -> bool:
    return bool(_state["in_process_pool"])


def build_context(
    settings: Settings,
    *,
    engine: Synthesizer | None = None,
    load_seconds: float = 0.0,
    deadlines: bool = False,
) -> tuple[WorkerContext, BackgroundPusher | None]:
    """Engine, storage, Redis, metrics and pusher for this process; a batching engine's steps
    are counted in the metrics."""
    if engine is None:
        started = time.perf_counter()
        engine = load_engine(settings)
        load_seconds = time.perf_counter() - started
    store = AudioStore.from_settings(settings)
    if settings.s3_create_bucket:
        try:
            store.ensure_bucket()
        except (StorageError, StorageAuthError) as exc:
            # Not fatal here: the storage may come back, and each task retries its own storage
            # errors; refused keys fail each job at once (storage_auth). The worker's parent
            # checked the keys before the pool started (worker.parent.preflight).
            log.warning("could not check the bucket at start-up: %s", exc)
    name = worker_name()
    metrics = process_metrics(engine, load_seconds=load_seconds)
    # In a worker node the parent pushes the node's sum (worker/parent/consumer.py); a context
    # built anywhere else (a test, a benchmark) pushes its own process's metrics as a node.
    pusher = None
    if node_metrics.enabled_dir() is None:
        pusher = start_pusher(
            metrics.registry,
            worker=name,
            pushgateway_url=settings.pushgateway_url,
            heartbeat=settings.metrics_push_seconds,
        )
    observe_steps = getattr(engine, "set_step_observer", None)
    if callable(observe_steps):
        observe_steps(metrics.decode_step)
    client = connect(settings, retry=patient_redis_retry())
    ctx = WorkerContext(
        settings=settings,
        engine=engine,
        store=store,
        redis=client,
        metrics=metrics,
        worker_name=name,
        leases=ContentLease(client, ttl=settings.lease_seconds),
        deadlines=deadlines,
        lexicons=LexiconSource.from_path(settings.lexicon, client),
    )
    return ctx, pusher


def patient_redis_retry() -> Retry:
    # redis-py gives up after ~4 s; a job that has made its audio must still record its
    # outcome across a Redis restart or failover, so ride out ~67 s (1, 2, 4, then 5 s apart;
    # measured). Recording is idempotent (written once per job), so a repeated command is safe.
    return Retry(ExponentialBackoff(cap=5.0, base=0.5), 15)


def start_process(
    settings: Settings | None = None,
    *,
    engine: Synthesizer | None = None,
    load_seconds: float = 0.0,
) -> WorkerContext:
    """Build this process's context (idempotent, thread-safe), around `engine` if it was
    loaded already."""
    with _build_lock:
        if _state.get("pid") == os.getpid() and "context" in _state:
            return context()
        ctx, pusher = build_context(
            settings or Settings.from_env(),
            engine=engine,
            load_seconds=load_seconds,
            deadlines=in_process_pool(),
        )
        _state.update(context=ctx, pusher=pusher)
        # Last: a thread that sees this pid finds the context and pusher set.
        _state["pid"] = os.getpid()
    log.info(
        "worker process %s ready: engine %s (%s)", os.getpid(), ctx.engine.name, ctx.engine.model_id
    )
    if ctx.deadlines and not ctx.gate.batches:
        # Batched mode asked of an engine without `max_batch`: safe, but no faster.
        log.warning("engine %s does not batch: its jobs take turns in the engine", ctx.engine.name)
    return ctx


def context() -> WorkerContext:
    """This process's context; built on first use where no process-init signal ran (threads
    or solo pool), around the engine the worker preloaded when there is one."""
    if _state.get("pid") != os.getpid():
        from worker import engine_host

        try:
            engine = engine_host.current()
        except RuntimeError:
            return start_process()
        return start_process(engine=engine, load_seconds=engine_host.load_seconds())
    ctx = _state["context"]
    assert isinstance(ctx, WorkerContext)
    return ctx


def pusher() -> BackgroundPusher | None:
    value = _state.get("pusher") if _state.get("pid") == os.getpid() else None
    return value if isinstance(value, BackgroundPusher) else None


def stop_process() -> None:
    """Final metrics push of a process that pushes its own (outside a worker node)."""
    current = pusher()
    if current is not None:
        current.close()
    _state.pop("pid", None)
    _state.pop("context", None)
    _state.pop("pusher", None)
