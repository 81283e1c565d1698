"""Who dispatches: a leader lease in Redis, so any number of alerts workers run and exactly one is active.

The lease is one key, ``<alerts prefix>leader``, whose value is the holder's token (``<worker>#<n>``, ``n``
from ``INCR <prefix>leader:epoch``, so every term has a token of its own) and whose expiry is the lease
time (``ENRICH_ALERTS_LEASE_MS``, 5 s by default):

* acquire: ``SET leader <token> NX PX <ttl>`` — only when nobody holds it;
* renew: every third of the lease, ``PEXPIRE`` only while the value is still our token (Lua);
* release on a clean stop (SIGTERM): ``DEL`` only while it is our token, so the standby takes over at
  once instead of after the lease time.

The token is also the **fencing token**: every write the active worker makes that decides what is sent —
enqueueing an outbox job, recording the notification log, claiming a job before sending it, settling a
retry or a dead letter — runs in a Lua script that first checks the lease still holds this token
(``alerts.outbox``), and refuses with ``NotLeaderError`` otherwise. A worker that lost the lease without
noticing (paused, cut off from Redis longer than the lease) can therefore change nothing; only recording a
delivery that did happen is accepted from anyone. The lease key lives in the slot of the other alerts
keys (``one_slot``), so these scripts work on a Redis Cluster too.

What a failover costs: at most the lease time plus one poll (a third of it) before the standby holds the
lease, then the replay of ``lookback`` that any start does; a send that was in flight when the active
worker died is made again by the new one with the same ``webhook-id`` / ``Message-ID`` (receivers dedupe
on it, as after a restart).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import redis

log = logging.getLogger(__name__)

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
FENCE_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
"""  # the first lines of every fenced script: KEYS[1] is the lease key, ARGV[1] the token ('' = no fence)


class NotLeaderError(Exception):
    """A fenced write was refused: this worker no longer holds the lease."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    def __init__(self, client: redis.Redis, prefix: str, ttl_ms: int, name: str | None = None) -> None:
        self.client = client
        self.key = f"{prefix}leader"
        self.ttl_ms = ttl_ms
        self.name = name or worker_name()
        self.token = ""
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def acquire(self) -> bool:
        """Take the lease when nobody holds it. True when we hold it now (``token`` is set)."""
        if self.client.exists(self.key):
            return False  # held: a standby's poll is one read
        epoch = int(self.client.incr(f"{self.key}:epoch"))
        token = f"{self.name}#{epoch}"
        if self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token = token
            return True
        return False

    def renew(self) -> bool:
        """Extend our lease. False when it is gone or someone else's (then we must stop acting)."""
        return bool(self.token) and bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> None:
        if self.token:
            self._release(keys=[self.key], args=[self.token])
            self.token = ""

    def holder(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else None

    def keep(self, lost: threading.Event, stop: threading.Event) -> None:
        """Renew every third of the lease until ``stop``; set ``lost`` (and return) when renewal fails."""
        while not stop.wait(self.ttl_ms / 3000):
            try:
                if not self.renew():
                    log.warning("alerts worker %s lost the lease; standing by", self.name)
                    lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("renewing the alerts lease: %s", exc)
