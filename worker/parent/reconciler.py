"""The reconciler: a job that started, has no outcome, and whose message exists nowhere any
more would stay pending for good. Each worker node looks for such jobs every
`TTS_RECONCILE_SECONDS` and records them as failed `worker_lost` (listed by `tts-batch
failed`, run again by `tts-batch retry`, counted once).

Whatever ended the job's process (a hard time-limit kill whose record failed, SIGKILL, the
OOM killer), the job is in one of three places until its outcome is recorded:
- its message is in the queue (never started, or returned there after a loss),
- its message is in the broker's unacked set (held by a worker, live or dead: a dead one's
  messages come back after the visibility timeout, or at once with `tts-batch recover`),
- or nowhere: then nothing will ever run it again, and the reconciler records its end.

A job counts as started when its delivery marked it in flight (`BatchState.start_delivery`,
which also indexes its batch); its record removes the mark. A job is recorded only when two
looks, most of an interval apart, found it missing with the same delivery: a message moves
between the queue and the unacked set (or is re-published by a retry) within milliseconds, never for
a whole interval. One node looks at a time (a Redis lock that lapses).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable

import redis

from core.batch_state import IN_FLIGHT_BATCHES, InFlight
from core.delivery import UNACKED_KEY, queue_keys
from worker.parent.outcomes import ParentRecorder

log = logging.getLogger(__name__)

LOCK_KEY = "tts:reconciler:lock"
# Jobs found missing by the last look: "batch\tjob" -> the delivery's start time.
SUSPECTS_KEY = "tts:reconciler:suspects"
_SCAN_CHUNK = 1000

# KEYS: the batch's inflight hash, the index set. ARGV: batch id. Drops an emptied batch from
# the index, atomically with the check, so a delivery marking it in flight is never dropped.
_PRUNE = """
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def messages_present(client: redis.Redis, job_ids: Iterable[str]) -> set[str]:
    """Which of `job_ids` still have a message in the unacked set or the queue.

    A task's id is its job id, and it appears verbatim in the message's headers (the body is
    base64), so a substring test on the raw message finds it without decoding. The unacked set
    is small (the jobs in hand); the queue is read in chunks, and only while some id is still
    unaccounted for."""
    wanted = {job_id: job_id.encode() for job_id in job_ids}
    found: set[str] = set()

    def look(raws: Iterable[bytes | str]) -> None:
        for item in raws:
            raw = item.encode() if isinstance(item, str) else item
            for job_id, needle in list(wanted.items()):
                if needle in raw:
                    found.add(job_id)
                    del wanted[job_id]

    look(client.hvals(UNACKED_KEY))
    for key in queue_keys():
        start = 0
        while wanted:
            chunk = client.lrange(key, start, start + _SCAN_CHUNK - 1)
            if not chunk:
                break
            look(chunk)
            start += _SCAN_CHUNK
    return found


class Reconciler:
    """Looks every `interval` seconds (in a daemon thread) for jobs in flight whose message
    is gone; records each as failed once two looks agree."""

    def __init__(
        self,
        recorder: Callable[[], ParentRecorder],
        *,
        interval: float,
    ) -> None:
        self._recorder = recorder
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tts-reconciler", daemon=True)
        self._token = uuid.uuid4().hex

    def start(self) -> Reconciler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                recorded = self.run_once()
                if recorded:
                    log.warning("reconciler: recorded %d lost jobs: %s", len(recorded), recorded)
            except Exception:  # keep looking: Redis may be back next time
                log.exception("reconciler: a look failed")

    def run_once(self) -> list[str]:
        """One look; returns the job ids recorded as lost by it."""
        rec = self._recorder()
        client = rec.redis
        # Left to lapse, not released: looks from all nodes together stay most of an interval
        # apart, which is what makes two looks that agree mean something.
        if not client.set(LOCK_KEY, self._token, nx=True, ex=max(int(self.interval * 0.9), 1)):
            return []
        return self._look(rec)

    def _look(self, rec: ParentRecorder) -> list[str]:
        client = rec.redis
        in_flight: dict[tuple[str, str], InFlight] = {}
        for raw in client.smembers(IN_FLIGHT_BATCHES):
            batch_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            state = rec.batch(batch_id)
            entries = state.in_flight()
            if not entries:
                client.eval(_PRUNE, 2, state.key("inflight"), IN_FLIGHT_BATCHES, batch_id)
            for job_id, entry in entries.items():
                in_flight[(batch_id, job_id)] = entry
        present = messages_present(client, {job for _, job in in_flight}) if in_flight else set()
        missing = {k: e for k, e in in_flight.items() if k[1] not in present}
        previous = {
            _text(field): _text(value) for field, value in client.hgetall(SUSPECTS_KEY).items()
        }
        recorded = []
        for (batch_id, job_id), entry in missing.items():
            if previous.get(f"{batch_id}\t{job_id}") != repr(entry.started_at):
                continue
            message = entry.message or {"job_id": job_id, "batch_id": batch_id}
            rec.fail(
                message,
                reason="worker_lost",
                error=(
                    "started, then its message vanished without an outcome (no queue, no "
                    "unacked entry): the process running it ended without recording it"
                ),
            )
            recorded.append(job_id)
        pipe = client.pipeline()
        pipe.delete(SUSPECTS_KEY)
        for (batch_id, job_id), entry in missing.items():
            if job_id not in recorded:
                pipe.hset(SUSPECTS_KEY, f"{batch_id}\t{job_id}", repr(entry.started_at))
        pipe.expire(SUSPECTS_KEY, max(int(self.interval * 10), 60))
        pipe.execute()
        return recorded


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_running: dict[str, Reconciler] = {}


def start_reconciler(interval: float, recorder: Callable[[], ParentRecorder]) -> None:
    """Start this node's reconciler (once; `interval` 0 = never)."""
    if interval > 0 and "node" not in _running:
        _running["node"] = Reconciler(recorder, interval=interval).start()


def stop_reconciler() -> None:
    current = _running.pop("node", None)
    if current is not None:
        current.stop()
