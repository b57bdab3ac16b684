"""The Celery task: thin glue from a job message to worker.pipeline, plus the process
lifecycle signals (context built after the fork, metrics flushed on exit).

Batched mode runs Celery's threads pool: no fork, so `worker_process_init` and
`worker_process_shutdown` never fire; the node's one process is parent and pool at once, and
no Celery time limit applies, so each job gets a deadline (core.delivery.job_deadline_seconds).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task, concurrency
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from core.batch_state import CANCELLED
from core.contract import TASK_NAME, task_label
from core.delivery import backoff_seconds
from core.errors import (
    EngineFailure,
    InvalidJob,
    JobTimeout,
    PermanentError,
    RetriesExhausted,
    StorageAuthError,
    TransientError,
    WorkerLost,
)
from core.settings import Settings
from worker import engine_host, node_metrics, runtime
from worker.app import app
from worker.parent import (
    broker_guard,
    consumer,
    control,  # noqa: F401  (imported for its effect: registers the `tts_engine` inspect command)
    outcomes,
    preflight,
    reconciler,
)
from worker.pipeline import WorkerContext, parse, record_failure, run_job

log = logging.getLogger(__name__)


@celeryd_after_setup.connect
def _remember_node_name(sender: str, **_: Any) -> None:
    runtime.set_worker_name(sender)
    # Before any metric exists: every process of the node counts in files the parent sums.
    settings = Settings.from_env()
    node_metrics.enable(node_metrics.node_dir(settings.metrics_dir, sender))


@worker_ready.connect
def _start_parent(sender: Any, **_: Any) -> None:
    settings = Settings.from_env()
    if runtime.in_process_pool():
        # This process is the pool too: its context (and metrics) serve both roles.
        engine_host.init_pool_process()
        runtime.context()
    consumer.start_parent(
        worker=runtime.worker_name(),
        pushgateway_url=settings.pushgateway_url,
        push_seconds=settings.metrics_push_seconds,
        engine=engine_host.current(),
        load_seconds=engine_host.load_seconds(),
    )
    reconciler.start_reconciler(settings.reconcile_seconds, outcomes.recorder)


@worker_shutdown.connect
def _stop_parent(**_: Any) -> None:
    reconciler.stop_reconciler()
    consumer.stop_parent()


@worker_init.connect
def _guard_broker(**_: Any) -> None:
    broker_guard.install()


@worker_init.connect
def _check_services(**_: Any) -> None:
    # Before the engine loads: refused credentials or no Redis stop the worker with one line.
    preflight.check(Settings.from_env())


@worker_init.connect
def _load_engine(sender: Any, **_: Any) -> None:
    # In the parent, before the pool forks: a failure stops the whole worker with one line.
    runtime.set_in_process_pool(not _forks(sender.pool_cls))
    engine_host.preload(Settings.from_env())


def _forks(pool_cls: Any) -> bool:
    """True for a pool whose tasks run in forked children (prefork), with Celery's limits."""
    cls = concurrency.get_implementation(pool_cls)
    return isinstance(cls, type) and issubclass(cls, PreforkPool)


@worker_process_init.connect
def _start_process(**_: Any) -> None:
    engine_host.init_pool_process()
    runtime.start_process(engine=engine_host.current(), load_seconds=engine_host.load_seconds())


@worker_process_shutdown.connect
def _stop_process(**_: Any) -> None:
    runtime.stop_process()


class SynthesisTask(Task):  # type: ignore[misc]
    """The task's class: records a job killed at its hard time limit.

    Celery kills the pool process at the hard limit and calls `on_failure` in the parent with
    TimeLimitExceeded (the child never does: it only ever sees the soft limit); the message is
    then acked, so without this record the job would stay pending for good."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded):
            message = args[0] if isinstance(args, list | tuple) and len(args) == 1 else None
            outcomes.record_hard_timeout(message, limit=exc.args[0] if exc.args else "?")


@app.task(
    base=SynthesisTask,
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(PermanentError,),
)
def synthesize(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Synthesize one job message (see core.contract) and return its JSON result.

    Takes any arguments so that a message with the wrong ones fails as bad_message here,
    recorded and counted, instead of as a TypeError before the task body runs."""
    message: Any = args[0] if len(args) == 1 and not kwargs else {"args": args, **kwargs}
    ctx = runtime.context()
    started = time.perf_counter()
    retries = int(self.request.retries or 0)
    try:
        return _run(self, ctx, message, retries=retries, started=time.monotonic())
    finally:
        ctx.metrics.task_duration.observe(time.perf_counter() - started)
        current = runtime.pusher()
        if current is not None:
            current.notify()
        else:
            consumer.push_soon()  # batched mode: the node's pusher is in this process


def _run(
    task: Task, ctx: WorkerContext, message: Any, *, retries: int, started: float
) -> dict[str, Any]:
    attempt = retries + 1
    try:
        job = parse(ctx, message)
    except InvalidJob as exc:
        _fail(ctx, message, reason=exc.reason, error=str(exc), attempts=attempt)
        raise
    delivery = ctx.batch(job.batch_id).start_delivery(
        job.job_id, send_id=job.send_id, message=message
    )
    # Starts of this same message (its send id) that neither finished nor scheduled a retry:
    # the process running them was lost. Another message of the job is no loss.
    lost = delivery.starts - 1 - retries
    if lost > 0:
        ctx.metrics.error("worker_lost")
    if delivery.recorded is not None:
        return _drop_duplicate(ctx, delivery.recorded, lost=lost)
    if lost > ctx.settings.max_redeliveries:
        error = f"the job was lost with its worker process {lost} times"
        record_failure(
            ctx, message, reason="worker_lost", error=error, attempts=delivery.deliveries
        )
        raise WorkerLost(error)
    if retries == 0 and job.enqueued_at:
        ctx.metrics.queue_wait.observe(max(time.time() - job.enqueued_at, 0.0))
    try:
        return run_job(ctx, job, attempt=attempt, deadline=ctx.deadline(job, started=started))
    except (InvalidJob, EngineFailure, JobTimeout, StorageAuthError) as exc:
        # JobTimeout: batched mode, the engine dropped the job at its deadline. StorageAuthError:
        # S3 refused the keys, a configuration error that no retry fixes.
        _fail(ctx, message, reason=exc.reason, error=str(exc), attempts=attempt)
        raise
    except SoftTimeLimitExceeded:
        error = f"the job ran past its time limit ({task.request.timelimit})"
        _fail(ctx, message, reason="timeout", error=error, attempts=attempt)
        raise JobTimeout(error) from None
    except TransientError as exc:
        return _retry_or_dead_letter(task, ctx, message, exc, retries=retries)


def _drop_duplicate(ctx: WorkerContext, recorded: dict[str, Any], *, lost: int) -> dict[str, Any]:
    """A message of a job whose outcome is recorded already: nothing is run again. A second
    message (two sends of one job) counts as duplicate_message; a redelivery of the message
    that recorded it (its process lost before the ack) was counted as worker_lost."""
    if recorded.get("status") == CANCELLED:
        # Its batch was cancelled before it started (recorded so now or by `tts-batch cancel`).
        log.info("job %s: its batch is cancelled, not run", recorded.get("job_id"))
    else:
        if lost <= 0:
            ctx.metrics.error("duplicate_message")
        log.info("job %s has its outcome already: message dropped", recorded.get("job_id"))
    # The stored message (failures keep it, for `retry`) holds the text: not for the result.
    return {key: value for key, value in recorded.items() if key != "message"}


def _retry_or_dead_letter(
    task: Task, ctx: WorkerContext, message: Any, exc: TransientError, *, retries: int
) -> dict[str, Any]:
    reason = "storage_error"
    ctx.metrics.error(reason)
    if retries >= ctx.settings.max_retries:
        record_failure(
            ctx,
            message,
            reason=reason,
            error=f"gave up after {retries + 1} attempts: {exc}",
            attempts=retries + 1,
        )
        raise RetriesExhausted(str(exc), reason=reason) from exc
    ctx.metrics.retry(reason)
    countdown = backoff_seconds(retries, base=ctx.settings.retry_base_seconds)
    log.warning("job %s: %s; retry %d in %.1f s", task.request.id, exc, retries + 1, countdown)
    # The retry is a new message: give it the same short label as the producer's send, or
    # Celery would put the whole message (the text) in its argsrepr.
    raise task.retry(
        exc=exc,
        countdown=countdown,
        max_retries=ctx.settings.max_retries,
        argsrepr=task_label(message),
        kwargsrepr="{}",
    )


def _fail(ctx: WorkerContext, message: Any, *, reason: str, error: str, attempts: int) -> None:
    ctx.metrics.error(reason)
    record_failure(ctx, message, reason=reason, error=error, attempts=attempts)
    log.info("job failed (%s): %s", reason, error)
