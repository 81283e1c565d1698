"""A durable outbox in Redis: every delivery is a job that survives restarts until it is delivered or
dead-lettered; retries back off exponentially with jitter and honour ``Retry-After``.

Invariants: enqueueing, claiming a job before its send and settling it are one Lua call each, so a job is
always either scheduled, delivered or dead-lettered; all are idempotent, so a command retried after a Redis
restart (the worker's client retries for ever) changes nothing twice. A worker killed after a send but
before settling sends again after its restart with the same job id (receivers dedupe on ``webhook-id`` /
``Message-ID``).

Fencing (high availability, ``alerts.lease``): with ``token`` set (the active worker's lease token),
enqueue, claim, the notification log and every settle but "delivered" first check that the lease still
holds that token and refuse with ``NotLeaderError`` otherwise; "delivered" is recorded from anyone (it
happened). Without a token (the CLI, tests) nothing is fenced. On a Redis Cluster every key below carries
one hash tag (``stores.redis_client.one_slot``: ``alerts:{alerts}:job:<id>``…), so each script touches one
slot.

Keys (prefix ``alerts:``): ``job:<id>`` (the job JSON), ``due:<receiver>`` (sorted set of job ids by next
attempt time, one per receiver so a slow receiver never delays another), ``done`` (delivered job ids with
time, for dedup), ``dlq`` (hash id → job with its last error), ``log:<incident>`` (delivery log: receiver →
status, attempts, last error), ``disabled`` (receivers whose endpoint answered 410), ``nlog`` (the
notification log of the dispatcher), ``leader`` (the lease, ``alerts.lease``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from alerts.delivery import Attempt, backoff_s
from alerts.dispatch import LogEntry
from alerts.lease import FENCE_LUA, NotLeaderError
from stores.redis_client import one_slot

SLOT_TAG = "alerts"


def alerts_keyspace(prefix: str, client: object) -> str:
    """The prefix of every alerts key for this client (hash-tagged on a Redis Cluster)."""
    return one_slot(prefix, client, SLOT_TAG)


@dataclass(slots=True)
class Job:
    id: str
    receiver: str
    kind: str  # webhook | email
    payload: dict[str, Any]
    incidents: list[str] = field(default_factory=list)
    attempts: int = 0
    last_error: str | None = None

    def dumps(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "receiver": self.receiver, "kind": self.kind, "payload": self.payload,
             "incidents": self.incidents, "attempts": self.attempts, "last_error": self.last_error}
        )  # fmt: skip

    @classmethod
    def loads(cls, raw: bytes) -> Job:
        return cls(**orjson.loads(raw))


class RedisNotificationLog:
    """The dispatcher's notification log, durable in Redis: hash ``nlog``, field ``<group>#<receiver>``,
    value ``{"digest", "at", "told": {incident: [status, at]}}`` (older ``digest@at`` values are read too)."""

    def __init__(self, client: redis.Redis, prefix: str = "alerts:") -> None:
        self.client = client
        p = alerts_keyspace(prefix, client)
        self.key = f"{p}nlog"
        self.lease_key = f"{p}leader"
        self.token = ""  # the lease token while active (fenced writes); "" = unfenced
        self._record = client.register_script(RECORD_LUA)

    def last(self, group_key: str, receiver: str) -> LogEntry | None:
        raw: Any = self.client.hget(self.key, f"{group_key}#{receiver}")
        if raw is None:
            return None
        if not raw.startswith(b"{"):
            digest, at = raw.decode().rsplit("@", 1)
            return LogEntry(digest, int(at))
        doc = orjson.loads(raw)
        told = {k: (v[0], int(v[1])) for k, v in doc.get("told", {}).items()}
        return LogEntry(doc["digest"], int(doc["at"]), told)

    def record(self, group_key: str, receiver: str, entry: LogEntry) -> None:
        doc = {"digest": entry.digest, "at": entry.at, "told": {k: list(v) for k, v in entry.told.items()}}
        keys = [self.lease_key, self.key]
        if self._record(keys=keys, args=[self.token, f"{group_key}#{receiver}", orjson.dumps(doc)]) == -1:
            raise NotLeaderError(self.token)


# Every script starts with FENCE_LUA: KEYS[1] = the lease, ARGV[1] = the token ('' = unfenced).
RECORD_LUA = (
    FENCE_LUA
    + """
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
)
ENQUEUE_LUA = (
    FENCE_LUA
    + """
-- KEYS: lease, done, dlq, job, due; ARGV: token, id, job JSON, due time
if redis.call('ZSCORE', KEYS[2], ARGV[2]) or redis.call('HEXISTS', KEYS[3], ARGV[2]) == 1 then return 0 end
if not redis.call('SET', KEYS[4], ARGV[3], 'NX') then return 0 end
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[2])
return 1
"""
)
CLAIM_LUA = (
    FENCE_LUA
    + """
-- KEYS: lease, due; ARGV: token, id. 1 while the job is still scheduled (not settled meanwhile)
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 1 end
return 0
"""
)
SETTLE_LUA = """
-- KEYS: lease, done, due, job, dlq, disabled
-- ARGV: token, outcome, id, now, job JSON, next due, disable, receiver
if ARGV[2] ~= 'delivered' and ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[2] == 'delivered' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[4])
  return 1
end
if redis.call('ZSCORE', KEYS[2], ARGV[3]) or redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
if ARGV[2] == 'retrying' then
  redis.call('SET', KEYS[4], ARGV[5])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3])
else
  redis.call('HSET', KEYS[5], ARGV[3], ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('DEL', KEYS[4])
  if ARGV[7] == '1' then redis.call('SADD', KEYS[6], ARGV[8]) end
end
return 1
"""


class Outbox:
    def __init__(self, client: redis.Redis, prefix: str = "alerts:") -> None:
        self.client = client
        self.p = alerts_keyspace(prefix, client)
        self.token = ""  # the lease token while active (fenced writes); "" = unfenced
        self._enqueue = client.register_script(ENQUEUE_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    @property
    def lease_key(self) -> str:
        return f"{self.p}leader"

    def enqueue(self, job: Job, now_s: float | None = None) -> bool:
        """Add a job unless it is queued, delivered or dead-lettered already (idempotent by job id). One Lua
        call: a crash or a lost reply never leaves a job stored but not scheduled."""
        p = self.p
        keys = [self.lease_key, f"{p}done", f"{p}dlq", f"{p}job:{job.id}", f"{p}due:{job.receiver}"]
        due = now_s if now_s is not None else time.time()
        done = self._enqueue(keys=keys, args=[self.token, job.id, job.dumps(), due])
        if done == -1:
            raise NotLeaderError(self.token)
        if not done:
            return False
        self._log(job, "queued")
        return True

    def due(self, receiver: str, now_s: float, limit: int = 50) -> list[Job]:
        ids: Any = self.client.zrangebyscore(f"{self.p}due:{receiver}", "-inf", now_s, start=0, num=limit)
        jobs = []
        for jid in ids:
            raw: Any = self.client.get(f"{self.p}job:{jid.decode()}")
            if raw is None:
                self.client.zrem(f"{self.p}due:{receiver}", jid)
                continue
            jobs.append(Job.loads(raw))
        return jobs

    def claim(self, job: Job) -> bool:
        """Right before sending: True while the job is still scheduled; ``NotLeaderError`` once the lease is
        lost (so a worker that is no longer active sends nothing)."""
        found = self._claim(keys=[self.lease_key, f"{self.p}due:{job.receiver}"], args=[self.token, job.id])
        if found == -1:
            raise NotLeaderError(self.token)
        return bool(found)

    def settle(self, job: Job, attempt: Attempt, now_s: float, *, max_attempts: int, first_s: float,
               cap_s: float) -> str:  # fmt: skip
        """Record an attempt: delivered, rescheduled, or dead-lettered (one Lua call). Returns which."""
        job.attempts += 1
        job.last_error = attempt.error
        next_due = now_s
        if attempt.ok:
            outcome = "delivered"
        elif attempt.retry and job.attempts < max_attempts:
            wait = backoff_s(job.attempts, first_s, cap_s)
            if attempt.retry_after_s is not None:
                wait = max(wait, attempt.retry_after_s)
            next_due = now_s + wait
            outcome = "retrying"
        else:
            outcome = "dead-lettered"
        p = self.p
        keys = [self.lease_key, f"{p}done", f"{p}due:{job.receiver}", f"{p}job:{job.id}", f"{p}dlq",
                f"{p}disabled"]  # fmt: skip
        disable = "1" if attempt.disable else "0"
        args: list[str | bytes | float] = [self.token, outcome, job.id, now_s, job.dumps(), next_due, disable,
                                           job.receiver]  # fmt: skip
        if self._settle(keys=keys, args=args) == -1:
            raise NotLeaderError(self.token)
        self._log(job, outcome, attempt.status)
        return outcome

    def _log(self, job: Job, status: str, http_status: int | None = None) -> None:
        entry = orjson.dumps(
            {
                "status": status,
                "attempts": job.attempts,
                "last_error": job.last_error,
                "http_status": http_status,
                "at": int(time.time() * 1000),
                "job": job.id,
            }
        )
        for incident in job.incidents:
            self.client.hset(f"{self.p}log:{incident}", job.receiver, entry)

    def delivery_log(self, incident: str) -> dict[str, dict[str, Any]]:
        raw: Any = self.client.hgetall(f"{self.p}log:{incident}")
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    def disabled(self, receiver: str) -> bool:
        return bool(self.client.sismember(f"{self.p}disabled", receiver))

    def dlq(self) -> list[Job]:
        raw: Any = self.client.hvals(f"{self.p}dlq")
        return [Job.loads(v) for v in raw]

    def replay(self, ids: list[str] | None = None, now_s: float | None = None) -> int:
        """Move dead letters back to their queues (attempts reset). Returns how many."""
        n = 0
        for job in self.dlq():
            if ids is not None and job.id not in ids:
                continue
            self.client.hdel(f"{self.p}dlq", job.id)
            self.client.srem(f"{self.p}disabled", job.receiver)
            job.attempts, job.last_error = 0, None
            n += self.enqueue(job, now_s)
        return n


def work(outbox: Outbox, receiver: str, send: Callable[[Job], Attempt], *, max_attempts: int, first_s: float,
         cap_s: float, now_s: float | None = None) -> list[str]:  # fmt: skip
    """Attempt every due job of one receiver once. Returns the outcomes."""
    now = time.time() if now_s is None else now_s
    if outbox.disabled(receiver):
        return []
    outcomes = []
    for job in outbox.due(receiver, now):
        if outbox.claim(job):  # still ours to send (raises NotLeaderError once the lease is lost)
            outcomes.append(
                outbox.settle(job, send(job), now, max_attempts=max_attempts, first_s=first_s, cap_s=cap_s)
            )
    return outcomes
