"""A batch's state in Redis: which rows it has, which job serves each row, each job's terminal
result, and counters that make progress a constant-time read.

Keys (all expire `batch_ttl_seconds` after the last write):
  tts:batch:{b}:meta     hash   created_at, total (rows)
  tts:batch:{b}:rows     hash   row id -> job id
  tts:batch:{b}:order    list   row ids in submission order
  tts:batch:{b}:weight   hash   job id -> number of rows it serves (rows with equal content)
  tts:batch:{b}:sent     hash   job id -> time it was enqueued
  tts:batch:{b}:results  hash   job id -> result JSON, written once per job (forgotten only
                                to run the job again: a retried failure, a vanished object)
  tts:batch:{b}:counts   hash   succeeded / cached / failed -> rows
  tts:batch:{b}:attempts hash   job id -> deliveries started

Every multi-key change is one Lua script, so a job that runs twice is counted once and a row
added while its job finishes is counted exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis

PREFIX = "tts:batch:"
PARTS = ("meta", "rows", "order", "weight", "sent", "results", "counts", "attempts")

# KEYS: rows, order, weight, results, counts, meta. ARGV: row id, job id, ttl.
# Returns 1 when the row is new to the batch, 0 when it was already there.
_ADD_ROW = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HINCRBY', KEYS[6], 'total', 1)
local done = redis.call('HGET', KEYS[4], ARGV[2])
if done then
  redis.call('HINCRBY', KEYS[5], cjson.decode(done)['status'], 1)
end
return 1
"""

# KEYS: results, counts, weight. ARGV: job id, result JSON, status.
# Returns 1 when this call recorded the job's outcome, 0 when it had one already.
_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local w = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '1')
redis.call('HINCRBY', KEYS[2], ARGV[3], w)
return 1
"""

# KEYS: results, counts, weight, sent, attempts. ARGV: job id.
# Forgets a failed job's outcome (and its delivery count, so that a job dead-lettered as
# worker_lost gets its full allowance again) so that it can run again. Returns 1 when it did.
_RESET_FAILED = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if not done then return 0 end
local status = cjson.decode(done)['status']
if status ~= 'failed' then return 0 end
local w = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '1')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'failed', -w)
return 1
"""


# KEYS: results, counts, weight, sent, attempts. ARGV: job id, the result JSON as read.
# Forgets a succeeded or cached job's outcome (its object has vanished) so that it can run
# again, but only if the stored result is still exactly the one the caller read: a result
# recorded in between (a repair already run, by another verify) is kept. Moves the job's rows
# out of their count, and forgets its sending and deliveries as _RESET_FAILED does.
# Returns 1 when it forgot, 0 when the result had changed or is not a success.
_FORGET_SUCCEEDED = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done ~= ARGV[2] then return 0 end
local status = cjson.decode(done)['status']
if status ~= 'succeeded' and status ~= 'cached' then return 0 end
local w = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '1')
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HINCRBY', KEYS[2], status, -w)
return 1
"""


@dataclass(frozen=True)
class Progress:
    """Rows of a batch by state. `succeeded` includes `cached`."""

    total: int
    succeeded: int
    failed: int
    cached: int

    @property
    def pending(self) -> int:
        return max(self.total - self.succeeded - self.failed, 0)

    @property
    def done(self) -> bool:
        return self.pending == 0


class BatchState:
    """Reads and writes one batch's keys."""

    def __init__(self, client: redis.Redis, batch_id: str, *, ttl_seconds: int) -> None:
        self._r = client
        self.batch_id = batch_id
        self._ttl = ttl_seconds
        self._keys = {part: f"{PREFIX}{batch_id}:{part}" for part in PARTS}

    def key(self, part: str) -> str:
        return self._keys[part]

    def exists(self) -> bool:
        return bool(self._r.exists(self._keys["meta"]))

    def create(self) -> None:
        self._r.hsetnx(self._keys["meta"], "created_at", repr(time.time()))
        self._r.hsetnx(self._keys["meta"], "total", 0)

    def add_rows(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """Map row ids to job ids; returns, per pair, whether the row was new."""
        k = self._keys
        pipe = self._r.pipeline(transaction=False)
        for row_id, job_id in pairs:
            pipe.eval(
                _ADD_ROW,
                6,
                k["rows"],
                k["order"],
                k["weight"],
                k["results"],
                k["counts"],
                k["meta"],
                row_id,
                job_id,
            )
        return [bool(flag) for flag in pipe.execute()]

    def job_states(self, job_ids: Sequence[str]) -> list[tuple[bool, str | None]]:
        """(sent, result status or None) for each job."""
        if not job_ids:
            return []
        pipe = self._r.pipeline(transaction=False)
        pipe.hmget(self._keys["sent"], list(job_ids))
        pipe.hmget(self._keys["results"], list(job_ids))
        sent, results = pipe.execute()
        states = []
        for was_sent, raw in zip(sent, results, strict=True):
            status = json.loads(raw)["status"] if raw is not None else None
            states.append((was_sent is not None, status))
        return states

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            now = repr(time.time())
            self._r.hset(self._keys["sent"], mapping=dict.fromkeys(job_ids, now))

    def reset_failed(self, job_id: str) -> bool:
        k = self._keys
        flag = self._r.eval(
            _RESET_FAILED,
            5,
            k["results"],
            k["counts"],
            k["weight"],
            k["sent"],
            k["attempts"],
            job_id,
        )
        return bool(flag)

    def forget_succeeded(self, job_id: str, seen: str) -> bool:
        """Forget a succeeded or cached job's result if it is still `seen` (the raw JSON read
        by `iter_raw_rows`), so that the job can be enqueued again; True if it did."""
        k = self._keys
        flag = self._r.eval(
            _FORGET_SUCCEEDED,
            5,
            k["results"],
            k["counts"],
            k["weight"],
            k["sent"],
            k["attempts"],
            job_id,
            seen,
        )
        return bool(flag)

    def record(self, job_id: str, result: dict[str, Any]) -> bool:
        """Store a job's terminal result once; True if this call was the first."""
        k = self._keys
        flag = self._r.eval(
            _RECORD,
            3,
            k["results"],
            k["counts"],
            k["weight"],
            job_id,
            json.dumps(result, ensure_ascii=False),
            result["status"],
        )
        self.touch()
        return bool(flag)

    def count_attempt(self, job_id: str) -> int:
        """Count one more delivery of a job; returns the count including this one."""
        count = int(self._r.hincrby(self._keys["attempts"], job_id, 1))
        self._r.expire(self._keys["attempts"], self._ttl)
        return count

    def touch(self) -> None:
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys.values():
            pipe.expire(key, self._ttl)
        pipe.execute()

    def progress(self) -> Progress:
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(self._keys["meta"], "total")
        pipe.hmget(self._keys["counts"], ["succeeded", "cached", "failed"])
        total, (succeeded, cached, failed) = pipe.execute()
        ok, hit, bad = int(succeeded or 0), int(cached or 0), int(failed or 0)
        return Progress(total=int(total or 0), succeeded=ok + hit, failed=bad, cached=hit)

    def result(self, job_id: str) -> dict[str, Any] | None:
        raw = self._r.hget(self._keys["results"], job_id)
        return json.loads(raw) if raw is not None else None

    def iter_rows(self, chunk: int = 1000) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """(row id, job id, result or None) in submission order, read in chunks."""
        for row_id, job_id, raw in self.iter_raw_rows(chunk):
            yield row_id, job_id, json.loads(raw) if raw is not None else None

    def iter_raw_rows(self, chunk: int = 1000) -> Iterator[tuple[str, str, str | None]]:
        """(row id, job id, result JSON as stored or None) in submission order, in chunks."""
        start = 0
        while True:
            end = start + chunk - 1
            row_ids = [_text(r) for r in self._r.lrange(self._keys["order"], start, end)]
            if not row_ids:
                return
            job_ids = [_text(j) for j in self._r.hmget(self._keys["rows"], row_ids)]
            raws = self._r.hmget(self._keys["results"], job_ids)
            for row_id, job_id, raw in zip(row_ids, job_ids, raws, strict=True):
                yield row_id, job_id, _text(raw) if raw is not None else None
            start += chunk

    def failed_jobs(self) -> list[tuple[str, dict[str, Any]]]:
        """(job id, result) of every job whose outcome is a failure."""
        out = []
        for job_id, raw in self._r.hscan_iter(self._keys["results"]):
            result = json.loads(raw)
            if result.get("status") == "failed":
                out.append((job_id.decode(), result))
        return out


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
