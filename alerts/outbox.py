"""A durable outbox in Redis: every delivery is a job that survives restarts until it is delivered or
dead-lettered; retries back off exponentially with jitter and honour ``Retry-After``.

Invariants: enqueueing is one Lua call and settling one MULTI/EXEC, so a job is always either scheduled,
delivered or dead-lettered; both are idempotent, so a command retried after a Redis restart (the worker's
client retries for ever) changes nothing twice. A worker killed after a send but before settling sends
again after its restart with the same job id (receivers dedupe on ``webhook-id`` / ``Message-ID``).

Keys (prefix ``alerts:``): ``job:<id>`` (the job JSON), ``due:<receiver>`` (sorted set of job ids by next
attempt time, one per receiver so a slow receiver never delays another), ``done`` (delivered job ids with
time, for dedup), ``dlq`` (hash id → job with its last error), ``log:<incident>`` (delivery log: receiver →
status, attempts, last error), ``disabled`` (receivers whose endpoint answered 410), ``nlog`` (the
notification log of the dispatcher).
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
        self.key = f"{prefix}nlog"

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
        self.client.hset(self.key, f"{group_key}#{receiver}", orjson.dumps(doc))


ENQUEUE_LUA = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX') then return 0 end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
return 1
"""


class Outbox:
    def __init__(self, client: redis.Redis, prefix: str = "alerts:") -> None:
        self.client = client
        self.p = prefix
        self._enqueue = client.register_script(ENQUEUE_LUA)

    def enqueue(self, job: Job, now_s: float | None = None) -> bool:
        """Add a job unless it is queued, delivered or dead-lettered already (idempotent by job id). One Lua
        call: a crash or a lost reply never leaves a job stored but not scheduled."""
        keys = [f"{self.p}done", f"{self.p}dlq", f"{self.p}job:{job.id}", f"{self.p}due:{job.receiver}"]
        due = now_s if now_s is not None else time.time()
        if not self._enqueue(keys=keys, args=[job.id, job.dumps(), due]):
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

    def settle(self, job: Job, attempt: Attempt, now_s: float, *, max_attempts: int, first_s: float,
               cap_s: float) -> str:  # fmt: skip
        """Record an attempt: delivered, rescheduled, or dead-lettered. Returns which."""
        job.attempts += 1
        job.last_error = attempt.error
        pipe = self.client.pipeline()
        if attempt.ok:
            pipe.zadd(f"{self.p}done", {job.id: now_s})
            pipe.zrem(f"{self.p}due:{job.receiver}", job.id)
            pipe.delete(f"{self.p}job:{job.id}")
            outcome = "delivered"
        elif attempt.retry and job.attempts < max_attempts:
            wait = backoff_s(job.attempts, first_s, cap_s)
            if attempt.retry_after_s is not None:
                wait = max(wait, attempt.retry_after_s)
            pipe.set(f"{self.p}job:{job.id}", job.dumps())
            pipe.zadd(f"{self.p}due:{job.receiver}", {job.id: now_s + wait})
            outcome = "retrying"
        else:
            pipe.hset(f"{self.p}dlq", job.id, job.dumps())
            pipe.zrem(f"{self.p}due:{job.receiver}", job.id)
            pipe.delete(f"{self.p}job:{job.id}")
            if attempt.disable:
                pipe.sadd(f"{self.p}disabled", job.receiver)
            outcome = "dead-lettered"
        pipe.execute()
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
    return [
        outbox.settle(job, send(job), now, max_attempts=max_attempts, first_s=first_s, cap_s=cap_s)
        for job in outbox.due(receiver, now)
    ]
