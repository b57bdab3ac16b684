"""A producer's lease on the sends it claimed: alive while the producer is.

Each submission (or `retry`) sends under a fresh sender id. Its claims in the batch state
(core.batch_state.BatchState.claim_sends) are honoured by other producers only while the
sender's lease is alive; a thread renews it every third of its length while the submission
runs. A producer that dies (SIGKILL, OOM, a lost machine) stops renewing, its lease lapses after
at most `lease_seconds`, and a resubmission takes its unconfirmed claims over and sends them.
"""

from __future__ import annotations

import logging
import threading
import uuid

import redis

from core.batch_state import BatchState

log = logging.getLogger(__name__)


class SendLease:
    """`with SendLease(state, lease_seconds=30) as lease:` claim with `lease.sender`."""

    def __init__(self, state: BatchState, *, lease_seconds: float) -> None:
        self.sender = uuid.uuid4().hex
        self.lease_seconds = lease_seconds
        self._state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="send-lease", daemon=True)

    def __enter__(self) -> SendLease:
        self._state.renew_sender(self.sender, lease_seconds=self.lease_seconds)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        # Every claim is confirmed or released by now: nothing of this sender to honour. If
        # Redis is away, the lease lapses by itself.
        try:
            self._state.end_sender(self.sender)
        except redis.RedisError as exc:
            log.warning("could not end the send lease of %s: %s", self.sender, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                self._state.renew_sender(self.sender, lease_seconds=self.lease_seconds)
            except redis.RedisError as exc:
                # The sends fail on the same outage; the next renewal may get through.
                log.warning("could not renew the send lease of %s: %s", self.sender, exc)
