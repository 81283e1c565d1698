"""The read side of the vehicle store on Redis (async; the API's one client).

A list never walks the keyspace: it pages through ONE driver index in id order — the smallest of the
candidate indexes (the allowed classes, an equality filter, the cars with active incidents) — checks the
other filters on index entries of that chunk (``HMGET ix:meta``, ``ZMSCORE``, ``GEOPOS``, one round
trip per chunk) and fetches only the documents of the page. A request looks at no more than ``max_scan``
index entries: when the filters are very selective a page can come back short (even empty) with a next
cursor, as a filtered DynamoDB scan does. Cost grows with the page and the chunk, never with the fleet.

On a Redis Cluster (``stores.vehicles.layout``) every index read stays in the one ``{ix}`` slot; the
documents of a page are fetched per slot in one pipelined round trip (``mget_nonatomic``), and a vehicle
with its incidents is two calls at once (its document, and the incident script on the index slot).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis

from enrich.pipeline.state import public_bytes, public_document
from stores.redis_client import is_cluster
from stores.vehicles.layout import Keys
from stores.vehicles.model import (
    TAG_COLUMNS,
    BBox,
    Change,
    IncidentMeta,
    IncidentQuery,
    Meta,
    Page,
    Tags,
    VehicleQuery,
    class_id,
    summary_of,
    tags_of,
    unpack_states,
)

VEHICLE_LUA = r"""
local doc = redis.call('GET', KEYS[1])
if not doc then return {} end
local out = {doc}
local ids = redis.call('SMEMBERS', KEYS[2])
table.sort(ids)
for _, id in ipairs(ids) do
  local rec = redis.call('GET', ARGV[1] .. id)
  if rec then out[#out + 1] = rec end
end
return out
"""
INCIDENTS_LUA = r"""
local out = {}
local ids = redis.call('SMEMBERS', KEYS[1])
table.sort(ids)
for _, id in ipairs(ids) do
  local rec = redis.call('GET', ARGV[1] .. id)
  if rec then out[#out + 1] = rec end
end
return out
"""  # VEHICLE_LUA without the document: the cluster path, where the document lives in another slot
GEO_EPSILON = 1e-4
MAX_MERGE = 16  # more allowed classes than this: drive from ix:all and check the class per entry


def allowed_classes(
    classes: Mapping[str, Tags],
    allowed: Collection[str] | None,
    equal: Mapping[str, str],
    tag_columns: Collection[str],
) -> tuple[dict[str, Tags], bool]:
    """The classes a list may return (allowed, and matching the equality filters on tag columns), and
    whether that is every class (then no per-entry class check is needed)."""
    tag_filters = {f: v for f, v in equal.items() if f in tag_columns}
    ok = {
        cid: tags
        for cid, tags in classes.items()
        if (allowed is None or cid in allowed) and all(tags.get(f, "") == v for f, v in tag_filters.items())
    }
    return ok, allowed is None and not tag_filters


class RedisVehicleReader:
    """``VehicleReader`` on Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "state:",
        *,
        tag_columns: Collection[str] = TAG_COLUMNS,
        classes_ttl_s: float = 30.0,
    ) -> None:
        self.client: Any = (
            client  # redis-py's async typing is loose (bytes | str | Awaitable); see decode=False
        )
        self.keys = Keys.of(prefix, is_cluster(client))
        self.tag_columns = tuple(tag_columns)
        self.classes_ttl_s = classes_ttl_s
        self._vehicle = client.register_script(VEHICLE_LUA)
        self._incidents = client.register_script(INCIDENTS_LUA)
        self._classes: dict[str, Tags] = {}
        self._classes_at = -1e9

    # -- vehicles --------------------------------------------------------------------------------------
    async def vehicle(self, car_id: int) -> tuple[bytes, list[bytes]] | None:
        """The state document of a car and the records of its firing incidents (one call; on a cluster two
        at once)."""
        if self.keys.sharded:
            doc, records = await asyncio.gather(
                self.client.get(self.keys.car(car_id)),
                self._incidents(keys=[self.keys.car_incidents(car_id)], args=[self.keys.incident("")]),
            )
            return None if doc is None else (public_bytes(doc), list(records))
        out = await self._vehicle(keys=[self.keys.car(car_id), self.keys.car_incidents(car_id)],
                                  args=[self.keys.incident("")])  # fmt: skip
        if not out:
            return None
        return public_bytes(out[0]), list(out[1:])

    async def docs(self, car_ids: list[int]) -> dict[int, bytes]:
        """State documents of these cars (one MGET); missing ones are left out."""
        if not car_ids:
            return {}
        raws = await self._mget_docs(car_ids)
        return {c: public_bytes(r) for c, r in zip(car_ids, raws, strict=True) if r is not None}

    async def _mget_docs(self, car_ids: list[int]) -> list[bytes | None]:
        keys = [self.keys.car(c) for c in car_ids]
        if self.keys.sharded:  # split per slot, one pipelined round trip
            return list(await self.client.mget_nonatomic(keys))
        return list(await self.client.mget(keys))

    async def classes(self) -> dict[str, Tags]:
        """Every tag class seen (id → tags). Classes are only ever added, so the cache is refreshed when
        the registry's size changed (one HLEN), or after ``classes_ttl_s``: a new class is seen at once."""
        now = time.monotonic()
        if now - self._classes_at > self.classes_ttl_s or await self.client.hlen(self.keys.classes) != len(
            self._classes
        ):
            raw: Any = await self.client.hgetall(self.keys.classes)
            self._classes = {k.decode(): orjson.loads(v) for k, v in raw.items()}
            self._classes_at = now
        return self._classes

    async def list_vehicles(
        self,
        q: VehicleQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
        summary: bool = False,
    ) -> Page:
        """A page of state documents in car-id order (``summary``: ``model.summary_of`` of each instead)."""
        k = self.keys
        ok, every = allowed_classes(await self.classes(), allowed, q.equal, self.tag_columns)
        if not ok:
            return Page([], None)
        other = {f: v for f, v in q.equal.items() if f not in self.tag_columns}
        candidates: list[tuple[list[str], str]] = []  # (driver keys, what it covers)
        if every:
            candidates.append(([k.all], "class"))
        elif len(ok) <= MAX_MERGE:
            candidates.append(([k.cls(c) for c in ok], "class"))
        else:
            candidates.append(([k.all], ""))
        candidates += [([k.field(f, v)], f"f:{f}") for f, v in other.items()]
        if q.has_active_incident:
            candidates.append(([k.active], "active"))
        pipe = self.client.pipeline(transaction=False)
        for keys, _ in candidates:
            for key in keys:
                pipe.zcard(key)
        sizes = iter(await pipe.execute())
        sized = [(sum(next(sizes) for _ in keys), keys, what) for keys, what in candidates]
        _size, driver, covers = min(sized, key=lambda t: t[0])
        check_class = covers != "class" and not every
        check_fields = {f: v for f, v in other.items() if covers != f"f:{f}"}
        check_active = q.has_active_incident if covers != "active" else None
        cursor = int(after) if after is not None else None
        chunk = min(max(limit * 2, 64), 1000)
        found: list[int] = []
        scanned = 0
        while True:
            ids, exhausted = await self._next_ids(driver, cursor, chunk)
            if not ids:
                return await self._page(q, ok, found, None, scanned, summary)
            keep = await self._check(ids, q, ok if check_class else None, check_fields, check_active)
            for car, good in zip(ids, keep, strict=True):
                scanned += 1
                cursor = car
                if good:
                    found.append(car)
                    if len(found) == limit:
                        more = not (exhausted and car == ids[-1])
                        return await self._page(q, ok, found, str(car) if more else None, scanned, summary)
            if exhausted:
                return await self._page(q, ok, found, None, scanned, summary)
            if scanned >= max_scan:
                return await self._page(q, ok, found, str(cursor), scanned, summary)

    async def _next_ids(self, driver: list[str], cursor: int | None, chunk: int) -> tuple[list[int], bool]:
        """The next ``chunk`` car ids after ``cursor`` in the union of the driver zsets, and whether the
        driver has nothing after them."""
        low = f"({cursor}" if cursor is not None else "-inf"
        pipe = self.client.pipeline(transaction=False)
        for key in driver:
            pipe.zrangebyscore(key, low, "+inf", start=0, num=chunk)
        results = await pipe.execute()
        merged = sorted({int(m) for r in results for m in r})
        exhausted = all(len(r) < chunk for r in results) and len(merged) <= chunk
        return merged[:chunk], exhausted

    async def _check(
        self,
        ids: list[int],
        q: VehicleQuery,
        classes: Mapping[str, Tags] | None,
        fields: Mapping[str, str],
        active: bool | None,
    ) -> list[bool]:
        k = self.keys
        members = [str(c) for c in ids]
        pipe = self.client.pipeline(transaction=False)
        want_meta = classes is not None or bool(fields)
        if want_meta:
            pipe.hmget(k.meta, members)
        if active is not None:
            pipe.zmscore(k.active, members)
        last = q.last_seen_after is not None or q.last_seen_before is not None
        if last:
            pipe.zmscore(k.seen, members)
        if q.bbox is not None:
            pipe.geopos(k.geo, *members)
        if not (want_meta or active is not None or last or q.bbox is not None):
            return [True] * len(ids)
        results = iter(await pipe.execute())
        keep = [True] * len(ids)
        if want_meta:
            for i, raw in enumerate(next(results)):
                if raw is None:
                    keep[i] = False
                    continue
                meta = Meta.unpack(raw.decode())
                if (classes is not None and meta.cid not in classes) or any(
                    meta.value(f) != v for f, v in fields.items()
                ):
                    keep[i] = False
        if active is not None:
            for i, score in enumerate(next(results)):
                keep[i] = keep[i] and ((score is not None) == active)
        if last:
            for i, score in enumerate(next(results)):
                seen = int(score) if score is not None else 0
                if q.last_seen_after is not None and seen <= q.last_seen_after:
                    keep[i] = False
                if q.last_seen_before is not None and seen >= q.last_seen_before:
                    keep[i] = False
        if q.bbox is not None:
            # GEO positions are 52-bit geohashes (~1e-5 degrees off): compare with a margin here, exactly on
            # the document of the page
            e = GEO_EPSILON
            box = BBox(q.bbox.south - e, q.bbox.west - e, q.bbox.north + e, q.bbox.east + e)
            for i, pos in enumerate(next(results)):
                keep[i] = keep[i] and pos is not None and box.contains(float(pos[1]), float(pos[0]))
        return keep

    async def _page(
        self,
        q: VehicleQuery,
        ok: Mapping[str, Tags],
        ids: list[int],
        nxt: str | None,
        scanned: int,
        summary: bool = False,
    ) -> Page:
        if not ids:
            return Page([], nxt, scanned)
        raws = await self._mget_docs(ids)
        items = []
        for raw in raws:
            if raw is None:
                continue
            doc = orjson.loads(raw)
            # re-check on the document itself: it may have changed since its index entries were read
            if class_id(tags_of(doc.get("car"), self.tag_columns)) not in ok:
                continue
            if not q.matches_doc(doc, active=bool(q.has_active_incident)):
                continue
            if summary:
                items.append(orjson.dumps(summary_of(doc)))
            else:
                items.append(orjson.dumps(public_document(doc)) if "values" in doc else raw)
        return Page(items, nxt, scanned)

    async def series(self, car_id: int) -> list[bytes]:
        """The car's recent samples (``<event time>,<value>,…``, oldest first; see ``model.SeriesConfig``)."""
        raws: list[bytes] = await self.client.lrange(self.keys.series(car_id), 0, -1)
        return raws

    # -- incidents -------------------------------------------------------------------------------------
    async def incident(self, incident_id: str) -> bytes | None:
        raw: bytes | None = await self.client.get(self.keys.incident(incident_id))
        return raw

    async def list_incidents(
        self,
        q: IncidentQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
    ) -> Page:
        """Incidents newest first (by start time, then id); ``after`` is the last member returned."""
        k = self.keys
        ok, every = allowed_classes(await self.classes(), allowed, {}, self.tag_columns)
        if not ok:
            return Page([], None)
        candidates: list[tuple[list[str], str]] = [([k.inc_all], "")]
        if not every and len(ok) <= MAX_MERGE:
            candidates.append(([k.inc_cls(c) for c in ok], "class"))
        if q.car_id is not None:
            candidates.append(([k.inc_car(q.car_id)], "car"))
        if q.rule_id is not None:
            candidates.append(([k.inc_rule(q.rule_id)], "rule"))
        if q.status is not None:
            candidates.append(([k.inc_status(q.status)], "status"))
        pipe = self.client.pipeline(transaction=False)
        for keys, _ in candidates:
            for key in keys:
                pipe.zcard(key)
        sizes = iter(await pipe.execute())
        sized = [(sum(next(sizes) for _ in keys), keys, what) for keys, what in candidates]
        _size, driver, covers = min(sized, key=lambda t: t[0])
        top = f"({after}" if after is not None else (f"({q.until:013d}" if q.until is not None else "+")
        bottom = f"[{q.since:013d}" if q.since is not None else "-"
        chunk = min(max(limit * 2, 64), 1000)
        found: list[str] = []
        scanned = 0
        while True:
            pipe = self.client.pipeline(transaction=False)
            for key in driver:
                pipe.zrevrangebylex(key, top, bottom, start=0, num=chunk)
            results = await pipe.execute()
            members = sorted({m.decode() for r in results for m in r}, reverse=True)[:chunk]
            exhausted = all(len(r) < chunk for r in results) and len(members) < chunk
            if not members:
                return await self._incident_page(found, None, scanned)
            ids = [m.split(":", 1)[1] for m in members]
            raws = await self.client.hmget(k.inc_meta, ids)
            for member, raw in zip(members, raws, strict=True):
                scanned += 1
                top = f"({member}"
                if raw is None:
                    continue
                meta = IncidentMeta.unpack(raw.decode())
                if not meta.matches(q) or (covers != "class" and not every and meta.cid not in ok):
                    continue
                found.append(member)
                if len(found) == limit:
                    more = not (exhausted and member == members[-1])
                    return await self._incident_page(found, member if more else None, scanned)
            if exhausted:
                return await self._incident_page(found, None, scanned)
            if scanned >= max_scan:
                return await self._incident_page(found, top[1:], scanned)

    async def _incident_page(self, members: list[str], nxt: str | None, scanned: int) -> Page:
        if not members:
            return Page([], nxt, scanned)
        raws = await self.client.mget([self.keys.incident(m.split(":", 1)[1]) for m in members])
        return Page([r for r in raws if r is not None], nxt, scanned)

    # -- change stream ---------------------------------------------------------------------------------
    async def changes(self, after: str | None, count: int = 100, block_ms: int | None = None) -> list[Change]:
        """Stream entries after ``after`` (``None``: from the oldest retained), blocking up to ``block_ms``
        when there are none."""
        start = after if after is not None else "0-0"
        resp: Any = await self.client.xread({self.keys.changes: start}, count=count, block=block_ms)
        out: list[Change] = []
        for _stream, entries in resp or []:
            for eid, fields in entries:
                s = fields.get(b"s", b"").decode()
                i = fields.get(b"i")
                out.append(Change(eid.decode(), unpack_states(s), orjson.loads(i) if i else []))
        return out

    async def change_bounds(self) -> tuple[str | None, str | None]:
        """Ids of the oldest and newest retained change entries."""
        first = await self.client.xrange(self.keys.changes, count=1)
        last = await self.client.xrevrange(self.keys.changes, count=1)
        return (first[0][0].decode() if first else None, last[0][0].decode() if last else None)

    async def ping(self) -> bool:
        return bool(await self.client.ping())


def parse_doc_tags(doc: Mapping[str, Any], columns: Collection[str] = TAG_COLUMNS) -> Tags:
    return tags_of(doc.get("car"), tuple(columns))
