"""A short Redis lease per content key, so that two jobs with the same key in flight at once
synthesize once: the holder renews it while it works; a second job waits for the object or
for the lease to lapse (its holder died), then looks again."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

PREFIX = "tts:lease:"

# Delete or extend the lease only while we still own it.
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)


class ContentLease:
    """Leases on content keys, `ttl` seconds long, renewed every ttl/3 by a thread."""

    def __init__(self, client: redis.Redis, *, ttl: float = 30.0, poll: float = 0.25) -> None:
        self._r = client
        self._ttl_ms = int(ttl * 1000)
        self._poll = poll

    @contextmanager
    def exclusive(self, key: str, *, done: Callable[[], bool]) -> Iterator[bool]:
        """Yield False at once if `done()` turns true while waiting (someone else made the
        object); yield True while holding the lease otherwise."""
        name = PREFIX + key
        token = uuid.uuid4().hex
        while not self._r.set(name, token, nx=True, px=self._ttl_ms):
            if done():
                yield False
                return
            time.sleep(self._poll)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(name, token, stop), name="tts-lease", daemon=True
        )
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join(timeout=5)
            # If Redis is away the lease simply lapses on its own.
            with contextlib.suppress(redis.RedisError):
                self._r.eval(_RELEASE, 1, name, token)

    def _renew(self, name: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(self._ttl_ms / 3000):
            try:
                self._r.eval(_RENEW, 1, name, token, self._ttl_ms)
            except redis.RedisError:
                continue
