"""Celery settings, mapped from the project's Settings (read from the environment when Celery
first loads its configuration, not before)."""

from __future__ import annotations

from core.delivery import celery_options
from core.delivery import worker_pool as _worker_pool
from core.redis_conn import celery_tls_options
from core.settings import Settings

_settings = Settings.from_env()
# What the producer's client app uses too (core.delivery): broker, TLS, JSON only, queue.
_shared = celery_options(_settings)

broker_url = _shared["broker_url"]
broker_use_ssl = _shared["broker_use_ssl"]
task_serializer = _shared["task_serializer"]
accept_content = _shared["accept_content"]
task_default_queue = _shared["task_default_queue"]
broker_connection_retry_on_startup = _shared["broker_connection_retry_on_startup"]
result_backend = _settings.results_url
redis_backend_use_ssl = celery_tls_options(_settings, result_backend)
result_serializer = "json"
result_accept_content = ["json"]
# One job per process (prefork, TTS_CONCURRENCY processes), or batched mode: one process whose
# B task threads each hand a job to the engine, which decodes them together
# (core.delivery.worker_pool). The command line's --pool/--concurrency win over these; the
# local stack and `tts-batch worker` pass the same values.
_pool = _worker_pool(_settings)
worker_pool = _pool.name
worker_concurrency = _pool.concurrency
# Late ack + prefetch multiplier 1: a job is removed from the queue only after it ran, and a
# worker holds at most the jobs in hand (prefetch = 1 x concurrency: 1 per prefork process, B
# per batched process); a lost pool process's job is redelivered at once (prefork), a lost
# node's after the visibility timeout.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A pool process is replaced after this many jobs (0 = never); its counts stay in the node's
# metric files (worker/node_metrics.py).
worker_max_tasks_per_child = _settings.max_tasks_per_child or None
# Above the longest allowed job (core.delivery.visibility_timeout_seconds), or a slow job would
# be handed to a second worker while the first still runs it.
_visibility = _settings.visibility_timeout_seconds
# kombu's Redis transport re-queues a lost worker's unacked jobs only from a live consumer's
# periodic sweep, by default every 10 s but scanning on every 10th call only (~100 s): sweep
# every few seconds instead, so that such a job comes back within the visibility timeout plus
# one interval. A sweep is one ZRANGE on the unacked index.
broker_transport_options = {
    **_shared["broker_transport_options"],
    "unacked_restore_interval": min(10, max(1, _visibility // 4)),
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_seconds}
result_expires = 24 * 3600
result_extended = True
task_track_started = True
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
# The engine is loaded once in the parent before the pool forks (worker/engine_host.py), so
# pool processes start in well under Celery's 4 s worker_proc_alive_timeout; the pool must fork.
# (Batched mode forks nothing: the parent's task threads use the engine it loaded.)
worker_pool_start_method = "fork"
worker_consumer = "worker.parent.consumer:CountingConsumer"
