"""The in-memory twin of the vehicle store: both sides, same results as Redis (same ordering, cursors and
incident rules), for unit tests and for running the API without Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import orjson

from enrich.pipeline.state import public_bytes
from stores.vehicles.model import (
    DEFAULT_SERIES,
    TAG_COLUMNS,
    Change,
    IncidentMeta,
    IncidentQuery,
    Page,
    SeriesConfig,
    Tags,
    VehicleQuery,
    VehicleStateWrite,
    class_id,
    incident_member,
    incident_record,
    incident_summary,
    series_sample,
    summary_of,
    tags_of,
)
from stores.vehicles.redis_reader import allowed_classes


class MemoryVehicleStore:
    def __init__(
        self,
        *,
        tag_columns: Sequence[str] = TAG_COLUMNS,
        stream_maxlen: int = 5000,
        series: SeriesConfig = DEFAULT_SERIES,
    ) -> None:
        self.tag_columns = tuple(tag_columns)
        self.series_config = series
        self.samples: dict[int, list[bytes]] = {}
        self._series_at: dict[int, int] = {}
        self.stream_maxlen = stream_maxlen
        self.bodies: dict[int, bytes] = {}
        self.parsed: dict[int, dict[str, Any]] = {}
        self._classes: dict[str, Tags] = {}
        self.incidents: dict[str, bytes] = {}
        self.inc_meta: dict[str, IncidentMeta] = {}
        self.active: dict[int, set[str]] = {}
        self.stream: list[Change] = []
        self._last_ms = 0
        self._seq = 0

    # -- writer ----------------------------------------------------------------------------------------
    def write_batch(
        self, states: Mapping[int, VehicleStateWrite], outliers: Sequence[bytes | Mapping[str, Any]] = ()
    ) -> None:
        if not states and not outliers:
            return
        summary: list[tuple[int, int, str]] = []
        for car, w in states.items():
            doc = orjson.loads(w.body)  # the twin keeps whole documents (w.doc may be partial)
            self.bodies[car], self.parsed[car] = public_bytes(w.body), doc  # served as vehicle-state.v1
            tags = tags_of(doc.get("car"), self.tag_columns)
            cid = class_id(tags)
            self._classes.setdefault(cid, tags)
            summary.append((car, int(doc.get("version") or 0), cid))
            cfg, last = self.series_config, int(doc.get("last_seen") or 0)
            if cfg.points > 0 and last >= self._series_at.get(car, -cfg.step_ms) + cfg.step_ms:
                kept = self.samples.setdefault(car, [])
                kept.append(series_sample(doc, cfg.signals).encode())
                del kept[: -cfg.points]
                self._series_at[car] = last
        summaries = []
        for item in outliers:
            event = orjson.loads(item) if isinstance(item, bytes | bytearray) else dict(item)
            record = incident_record(event, self.tag_columns)
            cid = class_id(record["tags"])
            self._classes.setdefault(cid, record["tags"])
            iid, car, status = str(record["incident_id"]), int(record["car_id"]), str(record["status"])
            old = self.inc_meta.get(iid)
            if old is not None and old.status == "resolved" and status == "firing":
                continue
            member = incident_member(int(record["starts_at"]), iid)
            self.incidents[iid] = orjson.dumps(record)
            self.inc_meta[iid] = IncidentMeta(cid, status, str(record["rule_id"]), car, member)
            act = self.active.setdefault(car, set())
            if status == "firing":
                act.add(iid)
            else:
                act.discard(iid)
            summaries.append(incident_summary(record, cid))
        now = int(time.time() * 1000)
        if now <= self._last_ms:
            self._seq += 1
        else:
            self._last_ms, self._seq = now, 0
        self.stream.append(Change(f"{self._last_ms}-{self._seq}", summary, summaries))
        del self.stream[: -self.stream_maxlen]

    # -- reader ----------------------------------------------------------------------------------------
    async def vehicle(self, car_id: int) -> tuple[bytes, list[bytes]] | None:
        doc = self.bodies.get(car_id)
        if doc is None:
            return None
        return doc, [self.incidents[i] for i in sorted(self.active.get(car_id, ()))]

    async def docs(self, car_ids: list[int]) -> dict[int, bytes]:
        return {c: self.bodies[c] for c in car_ids if c in self.bodies}

    async def classes(self) -> dict[str, Tags]:
        return dict(self._classes)

    def _has_active(self, car: int) -> bool:
        return bool(self.active.get(car))

    async def list_vehicles(
        self,
        q: VehicleQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
        summary: bool = False,
    ) -> Page:
        ok, _every = allowed_classes(self._classes, allowed, q.equal, self.tag_columns)
        cursor = int(after) if after is not None else None
        ids = sorted(c for c in self.bodies if cursor is None or c > cursor)
        found: list[bytes] = []
        for n, car in enumerate(ids, 1):
            doc = self.parsed[car]
            if class_id(tags_of(doc.get("car"), self.tag_columns)) in ok and q.matches_doc(
                doc, self._has_active(car)
            ):
                found.append(orjson.dumps(summary_of(doc)) if summary else self.bodies[car])
                if len(found) == limit:
                    return Page(found, str(car) if car != ids[-1] else None, n)
            if n >= max_scan and car != ids[-1]:
                return Page(found, str(car), n)
        return Page(found, None, len(ids))

    async def series(self, car_id: int) -> list[bytes]:
        return list(self.samples.get(car_id, ()))

    async def incident(self, incident_id: str) -> bytes | None:
        return self.incidents.get(incident_id)

    async def list_incidents(
        self,
        q: IncidentQuery,
        allowed: Collection[str] | None,
        after: str | None,
        limit: int,
        max_scan: int = 5000,
    ) -> Page:
        ok, _every = allowed_classes(self._classes, allowed, {}, self.tag_columns)
        metas = sorted(self.inc_meta.values(), key=lambda m: m.member, reverse=True)
        low = f"{q.since:013d}" if q.since is not None else ""
        high = f"{q.until:013d}" if q.until is not None else None
        metas = [
            m
            for m in metas
            if (after is None or m.member < after) and m.member >= low and (high is None or m.member < high)
        ]
        found: list[bytes] = []
        for n, m in enumerate(metas, 1):
            if m.cid in ok and m.matches(q):
                found.append(self.incidents[m.member.split(":", 1)[1]])
                if len(found) == limit:
                    return Page(found, m.member if m is not metas[-1] else None, n)
            if n >= max_scan and m is not metas[-1]:
                return Page(found, m.member, n)
        return Page(found, None, len(metas))

    async def changes(self, after: str | None, count: int = 100, block_ms: int | None = None) -> list[Change]:
        from stores.vehicles.model import stream_id_after

        deadline = time.monotonic() + (block_ms or 0) / 1000
        while True:
            out = [c for c in self.stream if after is None or stream_id_after(c.id, after)][:count]
            if out or block_ms is None or time.monotonic() >= deadline:
                return out
            await asyncio.sleep(0.01)

    async def change_bounds(self) -> tuple[str | None, str | None]:
        if not self.stream:
            return None, None
        return self.stream[0].id, self.stream[-1].id

    async def ping(self) -> bool:
        return True
