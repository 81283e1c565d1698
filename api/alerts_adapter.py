"""Thin async adapter over what the alerts worker keeps in Redis: silences (``alerts.worker.SilenceStore``'s
hash ``<alerts prefix>silences``, same document format, so the worker applies what the API creates) and the
delivery log of an incident (``alerts.outbox``'s ``<alerts prefix>log:<incident>``). The layout stays the
alerts package's; this module only reads and writes it through the API's one async client. Tests check both
directions against the alerts package's own classes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from alerts.matchers import parse_all
from alerts.outbox import alerts_keyspace


@dataclass(frozen=True, slots=True)
class SilenceDoc:
    id: str
    matchers: list[str]
    starts_at: int
    ends_at: int
    created_by: str
    comment: str

    def tags(self, tag_names: Collection[str]) -> dict[str, str]:
        """The tags a silence requests: its equality matchers on tag labels."""
        out: dict[str, str] = {}
        for m in parse_all(self.matchers):
            if m.op == "=" and m.name in tag_names:
                out[m.name] = m.value
        return out

    def active(self, now_ms: int) -> bool:
        return self.starts_at <= now_ms < self.ends_at


class Silences:
    def __init__(self, client: aioredis.Redis, alerts_prefix: str = "alerts:") -> None:
        self.client = client
        self.key = f"{alerts_keyspace(alerts_prefix, client)}silences"

    async def all(self) -> list[SilenceDoc]:
        raw: Any = await self.client.hgetall(self.key)
        out = []
        for sid, value in raw.items():
            d = orjson.loads(value)
            out.append(
                SilenceDoc(
                    sid.decode(),
                    list(d["matchers"]),
                    int(d["starts_at"]),
                    int(d["ends_at"]),
                    d.get("created_by", ""),
                    d.get("comment", ""),
                )
            )
        return sorted(out, key=lambda s: (s.starts_at, s.id))

    async def get(self, sid: str) -> SilenceDoc | None:
        raw = await self.client.hget(self.key, sid)
        if raw is None:
            return None
        d = orjson.loads(raw)
        return SilenceDoc(
            sid,
            list(d["matchers"]),
            int(d["starts_at"]),
            int(d["ends_at"]),
            d.get("created_by", ""),
            d.get("comment", ""),
        )

    async def add(
        self, matchers: list[str], duration_ms: int, *, created_by: str, comment: str
    ) -> SilenceDoc:
        parse_all(matchers)  # raises AlertsError on a bad matcher
        start = int(time.time() * 1000)
        doc = SilenceDoc(uuid.uuid4().hex[:12], matchers, start, start + duration_ms, created_by, comment)
        body = {
            "matchers": matchers,
            "starts_at": doc.starts_at,
            "ends_at": doc.ends_at,
            "created_by": created_by,
            "comment": comment,
        }
        await self.client.hset(self.key, doc.id, orjson.dumps(body))
        return doc

    async def expire(self, sid: str) -> bool:
        raw = await self.client.hget(self.key, sid)
        if raw is None:
            return False
        d = orjson.loads(raw)
        d["ends_at"] = min(int(d["ends_at"]), int(time.time() * 1000))
        await self.client.hset(self.key, sid, orjson.dumps(d))
        return True


async def delivery_log(client: aioredis.Redis, alerts_prefix: str, incident_id: str) -> dict[str, Any]:
    """The delivery log of an incident: receiver → status, attempts, last error, HTTP status, time, job."""
    raw: Any = await client.hgetall(f"{alerts_keyspace(alerts_prefix, client)}log:{incident_id}")
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}
