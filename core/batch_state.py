"""A batch's state in Redis: which rows it has, which job serves each row, each job's terminal
result, and counters that make progress a constant-time read.

Keys (all expire `batch_ttl_seconds` after the last write):
  tts:batch:{b}:meta     hash   created_at, total (rows)
  tts:batch:{b}:rows     hash   row id -> job id
  tts:batch:{b}:order    list   row ids in submission order
  tts:batch:{b}:weight   hash   job id -> number of rows it serves (rows with equal content)
  tts:batch:{b}:sent     hash   job id -> "claim:<sender id>" while a producer sends it, then
                                the time its send was confirmed (see `claim_sends`)
  tts:batch:{b}:senders  hash   sender id -> Redis time until which that producer's claims
                                are alive (renewed while it sends)
  tts:batch:{b}:results  hash   job id -> result JSON, written once per job (forgotten only
                                to run the job again: a retried failure, a vanished object)
  tts:batch:{b}:counts   hash   succeeded / cached / failed -> rows
  tts:batch:{b}:attempts hash   job id -> deliveries started
  tts:batch:{b}:starts   hash   job id -> JSON {send id: starts of that message}, since the
                                job was last opened (its messages told apart from redeliveries)
  tts:batch:{b}:inflight hash   job id -> {started_at, message} of a job started but not
                                recorded yet (removed by the record: what the reconciler checks)
  tts:batch:{b}:rejected hash   line -> JSON {line, field, reason, error} of a row refused by
                                `--skip-invalid` (counted as `rejected` in counts, not in total)
  tts:batch:{b}:tries    hash   job id -> attempts of its failures forgotten to run it again
                                (so that attempts add up across retries)
  tts:inflight-batches   set    batches that may have jobs in flight (the reconciler's index)
  tts:batches            zset   batch id -> created_at: the list of batches (`tts-batch
                                batches`); members whose meta expired are pruned as it is read
                                and as batches are created; the set itself expires a TTL after
                                the last write to any batch

A batch is cancelled by `cancelled_at` in its meta: jobs without an outcome and not in flight
are recorded `cancelled` at once, and a worker that receives a job of a cancelled batch records
it `cancelled` instead of running it (`start_delivery`); jobs already running finish.

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
PARTS = (
    "meta",
    "rows",
    "order",
    "weight",
    "sent",
    "senders",
    "results",
    "counts",
    "attempts",
    "starts",
    "inflight",
    "rejected",
    "tries",
)
# Batches that may hold jobs started and not recorded; one set for all batches, kept by
# `start_delivery` and pruned by the reconciler (worker/parent/reconciler.py).
IN_FLIGHT_BATCHES = "tts:inflight-batches"
# Every batch by creation time (see the module docstring); pruned of expired ones.
BATCH_INDEX = "tts:batches"
# Index members older than the TTL checked per prune: bounds a prune's work, not the index (each
# listing and creation prunes again).
_PRUNE_CHUNK = 500
# KEYS: the batch index. ARGV: ttl. The index lives at least `ttl` past the last write to any
# batch (each batch lives its TTL past its own last write): a longer TTL is never shortened, so
# the index outlives every batch it lists and expires once they all have.
_KEEP_INDEX = """
local left = redis.call('TTL', KEYS[1])
if left == -1 or (left >= 0 and left < tonumber(ARGV[1])) then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"""
# A job's outcome when its batch was cancelled before it started (not a failure reason).
CANCELLED = "cancelled"

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

# KEYS: results, counts, weight, inflight. ARGV: job id, result JSON, status.
# Returns 1 when this call recorded the job's outcome, 0 when it had one already. Either way
# the job is no longer in flight.
_RECORD = """
redis.call('HDEL', KEYS[4], ARGV[1])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local w = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '1')
redis.call('HINCRBY', KEYS[2], ARGV[3], w)
return 1
"""

# Forgets a failed job's outcome (and its delivery count, so that a job dead-lettered as
# worker_lost gets its full allowance again) so that it can run again; true when it did.
_RESET_FAILED_FN = """
local function reset_failed(results, counts, weight, attempts, tries, job)
  local done = redis.call('HGET', results, job)
  if not done then return false end
  local record = cjson.decode(done)
  if record['status'] ~= 'failed' then return false end
  local w = tonumber(redis.call('HGET', weight, job) or '1')
  redis.call('HINCRBY', tries, job, tonumber(record['attempts']) or 1)
  redis.call('HDEL', results, job)
  redis.call('HDEL', attempts, job)
  redis.call('HINCRBY', counts, 'failed', -w)
  return true
end
"""

# KEYS: results, counts, weight, sent, attempts, tries. ARGV: job id. Returns 1 when it reset
# the job.
_RESET_FAILED = (
    _RESET_FAILED_FN
    + """
if not reset_failed(KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6], ARGV[1]) then return 0 end
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""
)

# What `claim_sends` found for each job. The first three mean: this caller now holds the claim
# and must send the job (then `confirm_sends`, or `release_sends` if the send failed).
CLAIMED = "claimed"  # never sent before
RETRIED = "retried"  # its recorded failure was forgotten so that it runs again
TAKEN_OVER = "taken_over"  # claimed by a sender that died before confirming: sent again
DONE = "done"  # it has a successful outcome: nothing to send
IN_FLIGHT = "in_flight"  # sent and confirmed, or claimed by a sender still alive
TO_SEND = frozenset({CLAIMED, RETRIED, TAKEN_OVER})

# KEYS: sent, senders, results, counts, weight, attempts, tries.
# ARGV: sender id, lease seconds, ttl, job ids... Returns one of the codes above per job.
# The caller's lease is renewed first, on Redis's clock (one clock for every producer).
_CLAIM = (
    _RESET_FAILED_FN
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me = 'claim:' .. ARGV[1]
redis.call('HSET', KEYS[2], ARGV[1], tostring(now + tonumber(ARGV[2])))
local out = {}
for i = 4, #ARGV do
  local job = ARGV[i]
  local code = 'claimed'
  local done = redis.call('HGET', KEYS[3], job)
  if done then
    if reset_failed(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], job) then
      code = 'retried'
    else
      code = 'done'
    end
  else
    local held = redis.call('HGET', KEYS[1], job)
    if held then
      code = 'in_flight'
      if string.sub(held, 1, 6) == 'claim:' then
        local alive = tonumber(redis.call('HGET', KEYS[2], string.sub(held, 7)) or '0')
        if alive <= now then code = 'taken_over' end
      end
    end
  end
  if code ~= 'done' and code ~= 'in_flight' then redis.call('HSET', KEYS[1], job, me) end
  out[#out + 1] = code
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[7], ARGV[3])
return out
"""
)

# KEYS: sent. ARGV: sender id, job ids... The jobs still claimed by this sender become sent
# (the value: Redis time). Returns how many.
_CONFIRM = """
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local me = 'claim:' .. ARGV[1]
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == me then
    redis.call('HSET', KEYS[1], ARGV[i], now)
    n = n + 1
  end
end
return n
"""

# KEYS: sent. ARGV: sender id, job ids... Drops this sender's claims on the jobs (a send that
# failed), so that the next submission sends them. Returns how many.
_RELEASE = """
local me = 'claim:' .. ARGV[1]
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == me then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: senders. ARGV: sender id, lease seconds. Renews the sender's lease (Redis time).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], tostring(now + tonumber(ARGV[2])))
return 1
"""

# KEYS: senders. Returns {sender id, seconds left} of each sender whose lease is alive.
_LIVE_SENDERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local left = tonumber(all[i + 1]) - now
  if left > 0 then
    out[#out + 1] = all[i]
    out[#out + 1] = tostring(left)
  end
end
return out
"""

# KEYS: starts, attempts, results, inflight, the in-flight index, meta, counts, weight.
# ARGV: job id, send id ('' for a message without one), ttl, in-flight entry JSON, batch id,
# the `cancelled` record JSON (used when the batch is cancelled and the job has no outcome).
# Counts one start of one message and, unless the job has its outcome, marks it in flight
# (with its message: what the reconciler checks and records from) and indexes its batch.
# Starts are kept per send id since the job was last opened:
# no delivery counted (`attempts` has no entry: a new job, or one whose outcome was forgotten
# to run it again) clears them, so a message sent again with its old send id starts afresh.
# A job with an outcome already is not counted as a delivery and its result comes back:
# {starts of this message, deliveries of the job (0 when recorded), result or nil}.
_START = """
local map = {}
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  local raw = redis.call('HGET', KEYS[1], ARGV[1])
  if raw then map = cjson.decode(raw) end
end
local starts = (tonumber(map[ARGV[2]]) or 0) + 1
map[ARGV[2]] = starts
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(map))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local done = redis.call('HGET', KEYS[3], ARGV[1])
if done then return {starts, 0, done} end
if redis.call('HEXISTS', KEYS[6], 'cancelled_at') == 1 then
  -- Cancelled before it started: recorded so, never run.
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[6])
  local w = tonumber(redis.call('HGET', KEYS[8], ARGV[1]) or '1')
  redis.call('HINCRBY', KEYS[7], 'cancelled', w)
  redis.call('HDEL', KEYS[4], ARGV[1])
  return {starts, 0, ARGV[6]}
end
local deliveries = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[3])
return {starts, deliveries}
"""


# KEYS: results, counts, weight, inflight. ARGV: record JSON, job ids...
# Records `cancelled` each job that has no outcome and is not in flight (running jobs finish).
# Returns {jobs, rows} cancelled.
_CANCEL_JOBS = """
local jobs, rows = 0, 0
for i = 2, #ARGV do
  local job = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], job) == 0 and redis.call('HEXISTS', KEYS[4], job) == 0 then
    local record = cjson.decode(ARGV[1])
    record['job_id'] = job
    redis.call('HSET', KEYS[1], job, cjson.encode(record))
    local w = tonumber(redis.call('HGET', KEYS[3], job) or '1')
    redis.call('HINCRBY', KEYS[2], 'cancelled', w)
    jobs = jobs + 1
    rows = rows + w
  end
end
return {jobs, rows}
"""

# KEYS: rejected, counts. ARGV: line, entry JSON. Counts a rejected row once per line.
_ADD_REJECTED = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[2], 'rejected', 1)
return 1
"""


@dataclass(frozen=True)
class Delivery:
    """One start of a job's message, as counted by `start_delivery`."""

    # Starts of this very message (its send id), this one included: more than 1 + its
    # retries means earlier starts were lost with their worker process.
    starts: int
    # Deliveries of the job (every message), this one included; 0 when `recorded`.
    deliveries: int
    # The job's outcome when it had one already: this message is a duplicate, not to be run.
    recorded: dict[str, Any] | None


@dataclass(frozen=True)
class InFlight:
    """A job's last delivery that started and has no recorded outcome yet."""

    started_at: float
    message: Any


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
    """Rows of a batch by state. `succeeded` includes `cached`. `rejected` rows (refused at
    submission by `--skip-invalid`) are not in `total`: they never had a job."""

    total: int
    succeeded: int
    failed: int
    cached: int
    cancelled: int = 0
    rejected: int = 0

    @property
    def pending(self) -> int:
        return max(self.total - self.succeeded - self.failed - self.cancelled, 0)

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
        created = time.time()
        self._r.hsetnx(self._keys["meta"], "created_at", repr(created))
        self._r.hsetnx(self._keys["meta"], "total", 0)
        self._r.zadd(BATCH_INDEX, {self.batch_id: created}, nx=True)
        self._r.eval(_KEEP_INDEX, 1, BATCH_INDEX, self._ttl)
        prune_index(self._r, ttl_seconds=self._ttl)

    def meta(self) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self._r.hgetall(self._keys["meta"]).items()}

    def set_priority(self, priority: str) -> None:
        """Remember the batch's priority (its last submission's): retries are sent at it."""
        self._r.hset(self._keys["meta"], "priority", priority)

    def cancelled(self) -> bool:
        return bool(self._r.hexists(self._keys["meta"], "cancelled_at"))

    def cancel(self, chunk: int = 1000) -> tuple[int, int]:
        """Mark the batch cancelled, then record `cancelled` every job that has no outcome
        and is not in flight; returns (jobs, rows) it cancelled. Jobs in flight finish; a
        worker receiving a job of the batch from now on records it `cancelled` unrun."""
        k = self._keys
        self._r.hsetnx(k["meta"], "cancelled_at", repr(time.time()))
        record = json.dumps(_cancelled_record(self.batch_id, ""))
        jobs = rows = 0
        pending: list[str] = []

        def flush() -> None:
            nonlocal jobs, rows
            keys = (k["results"], k["counts"], k["weight"], k["inflight"])
            done = self._r.eval(_CANCEL_JOBS, 4, *keys, record, *pending)
            jobs, rows = jobs + int(done[0]), rows + int(done[1])
            pending.clear()

        # (HSCAN's NOVALUES needs Redis 7.4: the weights come along and are ignored.)
        for job_id, _ in self._r.hscan_iter(k["weight"], count=chunk):
            pending.append(_text(job_id))
            if len(pending) >= chunk:
                flush()
        if pending:
            flush()
        self.touch()
        return jobs, rows

    def add_rejected(self, entries: Sequence[dict[str, Any]]) -> int:
        """Record rows refused at submission (each a dict with its `line`); returns how many
        were new (a resubmission of the same file records none twice)."""
        pipe = self._r.pipeline(transaction=False)
        for entry in entries:
            line = json.dumps(entry, ensure_ascii=False)
            pipe.eval(
                _ADD_REJECTED, 2, self._keys["rejected"], self._keys["counts"], entry["line"], line
            )
        return sum(int(flag) for flag in pipe.execute())

    def rejected(self) -> list[dict[str, Any]]:
        """Rows refused at submission, by line."""
        entries = [json.loads(raw) for _, raw in self._r.hscan_iter(self._keys["rejected"])]
        return sorted(entries, key=lambda e: int(e.get("line") or 0))

    def past_attempts(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Job id -> attempts of its earlier failures, forgotten when it was retried."""
        if not job_ids:
            return {}
        values = self._r.hmget(self._keys["tries"], list(job_ids))
        return {j: int(v) for j, v in zip(job_ids, values, strict=True) if v is not None}

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

    def claim_sends(
        self, job_ids: Sequence[str], *, sender: str, lease_seconds: float
    ) -> list[str]:
        """Claim the sending of each job for `sender` (atomically per job, so that of two
        producers at once only one sends it): one code per job, CLAIMED, RETRIED or TAKEN_OVER
        (now this sender's to send) or DONE or IN_FLIGHT (nothing to send). A failed job is
        reset to run again; a claim whose sender's lease has lapsed (it died before confirming
        its send) is taken over. Renews the sender's lease for `lease_seconds`."""
        if not job_ids:
            return []
        k = self._keys
        keys = [
            k["sent"],
            k["senders"],
            k["results"],
            k["counts"],
            k["weight"],
            k["attempts"],
            k["tries"],
        ]
        args = [sender, repr(float(lease_seconds)), str(self._ttl), *job_ids]
        codes = self._r.eval(_CLAIM, len(keys), *keys, *args)
        return [_text(code) for code in codes]

    def confirm_sends(self, job_ids: Sequence[str], *, sender: str) -> int:
        """Mark the jobs `sender` claimed and has now sent as sent (the time, Redis's clock)."""
        if not job_ids:
            return 0
        return int(self._r.eval(_CONFIRM, 1, self._keys["sent"], sender, *job_ids))

    def release_sends(self, job_ids: Sequence[str], *, sender: str) -> int:
        """Drop `sender`'s claims on jobs it could not send, so that a resubmission sends them."""
        if not job_ids:
            return 0
        return int(self._r.eval(_RELEASE, 1, self._keys["sent"], sender, *job_ids))

    def renew_sender(self, sender: str, *, lease_seconds: float) -> None:
        """Keep `sender`'s claims alive `lease_seconds` more (a producer still sending)."""
        self._r.eval(_RENEW, 1, self._keys["senders"], sender, repr(float(lease_seconds)))

    def end_sender(self, sender: str) -> None:
        """Forget a sender whose claims are all confirmed or released."""
        self._r.hdel(self._keys["senders"], sender)

    def live_senders(self) -> dict[str, float]:
        """Sender id -> seconds its lease has left, for every sender still alive."""
        flat = [_text(item) for item in self._r.eval(_LIVE_SENDERS, 1, self._keys["senders"])]
        return {flat[i]: float(flat[i + 1]) for i in range(0, len(flat), 2)}

    def reset_failed(self, job_id: str) -> bool:
        keys = (*self._forget_keys(), self._keys["tries"])
        return bool(self._r.eval(_RESET_FAILED, 6, *keys, job_id))

    def forget_succeeded(self, job_id: str, seen: str) -> bool:
        """Forget a succeeded or cached job's result if it is still `seen` (the raw JSON read
        by `iter_raw_rows`), so that the job can be enqueued again; True if it did."""
        return bool(self._r.eval(_FORGET_SUCCEEDED, 5, *self._forget_keys(), job_id, seen))

    def _forget_keys(self) -> tuple[str, ...]:
        """KEYS of the scripts that forget an outcome so that a job runs again."""
        k = self._keys
        return (k["results"], k["counts"], k["weight"], k["sent"], k["attempts"])

    def record(self, job_id: str, result: dict[str, Any]) -> bool:
        """Store a job's terminal result once; True if this call was the first."""
        k = self._keys
        flag = self._r.eval(
            _RECORD,
            4,
            k["results"],
            k["counts"],
            k["weight"],
            k["inflight"],
            job_id,
            json.dumps(result, ensure_ascii=False),
            result["status"],
        )
        self.touch()
        return bool(flag)

    def start_delivery(
        self, job_id: str, *, send_id: str | None, message: dict[str, Any]
    ) -> Delivery:
        """Count one start of a job's message (`send_id`: the send it came from; None for a
        message without one, whose starts then count per job). Unless the job has an outcome
        already, mark it in flight with `message`: until its outcome is recorded, the
        reconciler can tell whether its message still exists, and record a failure
        (retryable, with this message) when it does not."""
        k = self._keys
        # ASCII escapes: a hostile message may hold lone surrogates, which Redis cannot encode.
        entry = json.dumps({"started_at": time.time(), "message": message})
        reply = self._r.eval(
            _START,
            8,
            k["starts"],
            k["attempts"],
            k["results"],
            k["inflight"],
            IN_FLIGHT_BATCHES,
            k["meta"],
            k["counts"],
            k["weight"],
            job_id,
            send_id or "",
            self._ttl,
            entry,
            self.batch_id,
            json.dumps(_cancelled_record(self.batch_id, job_id)),
        )
        recorded = json.loads(reply[2]) if len(reply) > 2 else None
        return Delivery(starts=int(reply[0]), deliveries=int(reply[1]), recorded=recorded)

    def in_flight(self) -> dict[str, InFlight]:
        """Jobs started and not recorded: job id -> when the last delivery started, its message."""
        out = {}
        for job_id, raw in self._r.hscan_iter(self._keys["inflight"]):
            entry = json.loads(raw)
            out[_text(job_id)] = InFlight(float(entry["started_at"]), entry.get("message"))
        return out

    def touch(self) -> None:
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys.values():
            pipe.expire(key, self._ttl)
        pipe.eval(_KEEP_INDEX, 1, BATCH_INDEX, self._ttl)
        pipe.execute()

    def progress(self) -> Progress:
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(self._keys["meta"], "total")
        pipe.hmget(self._keys["counts"], ["succeeded", "cached", "failed", "cancelled", "rejected"])
        total, counts = pipe.execute()
        ok, hit, bad, cancelled, rejected = (int(n or 0) for n in counts)
        return Progress(
            total=int(total or 0),
            succeeded=ok + hit,
            failed=bad,
            cached=hit,
            cancelled=cancelled,
            rejected=rejected,
        )

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


def _cancelled_record(batch_id: str, job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "batch_id": batch_id,
        "status": CANCELLED,
        "cached": False,
        "reason": None,
        "error": "the batch was cancelled before the job started",
    }


def prune_index(client: redis.Redis, *, ttl_seconds: int) -> int:
    """Drop index members whose batch expired; returns how many. Only members created more
    than the TTL ago can have expired (a batch lives a TTL past its last write), so only
    those are checked, the oldest first."""
    cutoff = time.time() - ttl_seconds
    old = [_text(b) for b in client.zrangebyscore(BATCH_INDEX, "-inf", cutoff, 0, _PRUNE_CHUNK)]
    if not old:
        return 0
    pipe = client.pipeline(transaction=False)
    for batch_id in old:
        pipe.exists(f"{PREFIX}{batch_id}:meta")
    gone = [b for b, alive in zip(old, pipe.execute(), strict=True) if not alive]
    if gone:
        client.zrem(BATCH_INDEX, *gone)
    return len(gone)


def list_batches(client: redis.Redis, *, ttl_seconds: int, limit: int) -> list[tuple[str, float]]:
    """(batch id, created_at) of the `limit` newest batches still alive, newest first. A
    member whose meta is gone (expired early, or flushed) is dropped as it is met."""
    prune_index(client, ttl_seconds=ttl_seconds)
    out: list[tuple[str, float]] = []
    start = 0
    while len(out) < limit:
        page: list[tuple[bytes, float]] = list(
            client.zrevrange(BATCH_INDEX, start, start + limit - 1, withscores=True)  # type: ignore[arg-type]
        )
        if not page:
            break
        pipe = client.pipeline(transaction=False)
        for batch_id, _ in page:
            pipe.exists(f"{PREFIX}{_text(batch_id)}:meta")
        gone = []
        for (batch_id, created), alive in zip(page, pipe.execute(), strict=True):
            if alive:
                out.append((_text(batch_id), float(created)))
            else:
                gone.append(batch_id)
        if gone:
            client.zrem(BATCH_INDEX, *gone)
        start += len(page) - len(gone)
    return out[:limit]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
