"""Keeps a worker node alive when the Redis queue holds an item that is not a Celery message.

kombu's Redis transport pops an item and parses it as a kombu envelope inside the worker's
event loop; an item that is not JSON, or not an envelope, raises there and stops the whole
node (the item itself is already consumed). Anyone who can write to Redis can do that, so the
worker drops such an item, logs it and counts it as tts_errors_total{reason="bad_message"}.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis

from worker.parent.consumer import count_bad_message

log = logging.getLogger(__name__)

_GUARD = "_tts_batch_guarded"


def install() -> None:
    """Wrap kombu's Redis BRPOP reader once per process (idempotent)."""
    channel: Any = kombu_redis.Channel
    original = channel._brpop_read
    if getattr(original, _GUARD, False):
        return

    def guarded_brpop_read(self: Any, **options: Any) -> Any:
        try:
            return original(self, **options)
        # Before the connection errors: kombu counts KeyError among them, and would drop the
        # broker connection (and the acks of jobs in flight) over a bad item.
        except (ValueError, TypeError, KeyError) as exc:
            # The BRPOP reply was consumed and kombu's own clean-up ran (its `finally`):
            # dropping the item leaves the channel as a normal delivery would.
            log.error("dropped a queue item that is not a Celery message: %r", exc)
            count_bad_message()
            return True

    setattr(guarded_brpop_read, _GUARD, True)
    channel._brpop_read = guarded_brpop_read
