"""Returning the in-flight messages of dead workers to the queue, at once.

Each message a worker holds (late ack) sits in the broker's unacked set until the worker acks
it. When the worker dies outright, the message comes back only after the visibility timeout
(4,083 s with the defaults; core.delivery), because the broker cannot tell a dead worker from
a slow one. An operator, or the local stack after a crash, can: a node that does not answer
Celery's ping is dead. This module returns every unacked message that no live worker holds,
using kombu's own restore (the same as its visibility sweep), first in line.

Used by `tts-batch recover NODE...` (refuses while a named node answers) and by `tts-batch up`
when it starts a worker of the local stack that was not running (after a crash). A message that
was in truth still held would run twice; the outcome is still recorded once and its object
written once (docs/reliability.md), so the cost is the work, never a wrong result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from celery import Celery

from core.errors import ConfigError
from core.settings import Settings
from devstack.services import WORKER_PREFIX
from devstack.stack import LocalStack, ServiceStatus
from producer.sender import client_app

# How long live workers get to answer ping and inspect.
REPLY_SECONDS = 2.0


@dataclass
class RecoveryReport:
    """What a recovery saw and did."""

    live_nodes: list[str] = field(default_factory=list)
    held_by_live: int = 0
    too_recent: int = 0
    restored: list[str] = field(default_factory=list)


class NodeAlive(ConfigError):
    """A node named as dead answered Celery's ping."""


def live_nodes(app: Celery, *, timeout: float = REPLY_SECONDS) -> list[str]:
    """Names of the worker nodes that answer Celery's ping."""
    replies = app.control.ping(timeout=timeout) or []
    return sorted(name for reply in replies for name in reply)


def held_task_ids(app: Celery, nodes: list[str], *, timeout: float = REPLY_SECONDS) -> set[str]:
    """Task ids the live `nodes` hold: running, reserved or waiting for a retry's countdown.
    Raises ConfigError when a node that answered ping does not answer these."""
    if not nodes:
        return set()
    inspect = app.control.inspect(destination=nodes, timeout=timeout)
    held: set[str] = set()
    for kind in ("active", "reserved", "scheduled"):
        replies = getattr(inspect, kind)() or {}
        silent = sorted(set(nodes) - set(replies))
        if silent:
            raise ConfigError(
                f"worker {', '.join(silent)} answered ping but not `inspect {kind}`: cannot tell "
                "which messages it holds; try again"
            )
        for tasks in replies.values():
            for task in tasks:
                request = task.get("request", task)
                if request.get("id"):
                    held.add(str(request["id"]))
    return held


def restore_orphans(
    settings: Settings,
    *,
    dead: list[str] | None = None,
    older_than: float | None = None,
) -> RecoveryReport:
    """Return to the queue every unacked message that no live worker holds and that was
    delivered before `older_than` (a time.time(); default now).

    `dead`: nodes the caller says are dead; refused (NodeAlive) if one answers ping."""
    app = client_app(settings)
    report = RecoveryReport()
    cutoff = time.time() if older_than is None else older_than
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        if not client.hlen(channel.unacked_key):
            return report  # nothing in flight: no need to ask the workers
        report.live_nodes = live_nodes(app)
        alive = sorted(set(dead or ()) & set(report.live_nodes))
        if alive:
            raise NodeAlive(
                f"{', '.join(alive)} answered ping: it is alive and holds its own messages "
                "(stop it first, or wait for it to finish)"
            )
        held = held_task_ids(app, report.live_nodes)
        delivered_at = dict(client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
        for tag, raw in client.hgetall(channel.unacked_key).items():
            payload = json.loads(raw)[0]
            task_id = str(payload.get("headers", {}).get("id", ""))
            if task_id in held:
                report.held_by_live += 1
            elif delivered_at.get(tag, 0.0) >= cutoff:
                report.too_recent += 1
            else:
                channel.qos.restore_by_tag(tag, client=client)
                report.restored.append(task_id)
    return report


def start_stack(
    stack: LocalStack, names: list[str], *, concurrency: int
) -> tuple[dict[str, ServiceStatus], RecoveryReport | None]:
    """`tts-batch up`: start the local stack's services, then its workers. When a worker of
    the stack was not running (a crash, or a first start), the jobs that stopped workers held
    go back to the queue before the new workers start: their messages are older than any the
    new workers take, and no worker of this stack is left to hold them. Workers elsewhere that
    answer ping keep theirs."""
    was_running = {n for n, s in stack.status().items() if s.state == "running"}
    services = [n for n in names if not n.startswith(WORKER_PREFIX)]
    statuses = stack.up(services, concurrency=concurrency)
    report = None
    if any(n.startswith(WORKER_PREFIX) and n not in was_running for n in names):
        report = restore_orphans(stack.settings())
    statuses.update(stack.up(names, concurrency=concurrency))
    return statuses, report
