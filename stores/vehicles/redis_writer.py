"""The write side of the vehicle store on Redis: one call per flow micro-batch, one round trip.

``write_batch(states, outliers)`` sends the state documents, every index entry they move, the incident
records and one change-stream entry in ONE pipelined MULTI/EXEC (readers never see a document without its
index entries). Cost per car per batch, in Redis commands (variadic commands shared by the whole batch):

* always: its document in the batch's one ``MSET``, its ``last_seen`` in the batch's one ``ZADD ix:seen``,
  its ``car,version,class`` in the batch's one ``XADD`` — O(1) arguments, no command of its own; in
  Python, one decode of the document unless the caller passes ``VehicleStateWrite.doc`` (which may be the
  whole document or just ``car``, ``last_seen``, ``location`` and ``version``), and a dict lookup of the
  car row's indexed attributes (class and meta are computed once per distinct combination, not per car);
* only when its location moved: its position in the batch's one ``GEOADD``;
* only when its car row's indexed attributes changed (class, fleet, model, status, environment) — rare:
  ``HSET ix:meta`` plus one ``ZREM``/``ZADD`` pair per changed index (at most 5 pairs);
* per outlier event: its share of one ``EVALSHA`` (the incident script: record, indexes, active set);
* recent signal history (``SeriesConfig``): a dict lookup and a comparison; only when the car's event time
  moved on by ``step_ms`` since its last sample (at most once per 30 s of event time by default): one
  formatted sample, its two arguments in the batch's one ``EVALSHA`` of the series script, and in Redis
  an RPUSH and an LTRIM of its bounded list.

On a Redis Cluster (``stores.vehicles.layout``: documents spread over ``DOC_SHARDS`` hash tags, everything
else in the ``{ix}`` slot) the same commands travel as: one ``MSET`` per document tag present in the batch
plus the index moves in one ``EVALSHA`` of ``BATCH_LUA`` (atomic on the index slot, what the MULTI is on
one instance) and the incident script — one pipelined round trip to every master at once — and then the
change-stream ``XADD``, so a change entry is never seen before its documents: two round trips per batch,
still O(1) commands' share per car.

The writer remembers each car's meta and location from its own writes (a dict per process; cars are
partitioned by bucket, so one writer owns a car). A car it has not written yet costs one extra ``HMGET
ix:meta`` round trip, once, shared by all such cars of the batch (after a restart, or a new car). Every
command is idempotent, so a replayed batch (bytewax is at-least-once) rewrites the same entries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from stores.redis_client import is_cluster
from stores.vehicles.layout import DOC_SHARDS, Keys
from stores.vehicles.model import (
    DEFAULT_SERIES,
    FILTER_FIELDS,
    TAG_COLUMNS,
    Meta,
    SeriesConfig,
    VehicleStateWrite,
    class_id,
    incident_member,
    incident_record,
    incident_summary,
    meta_of,
    pack_states,
    series_sample,
    tags_of,
)

GEO_MAX_LAT = 85.05112878  # Redis GEO (Web Mercator) limit; cars beyond it are not in the geo index

INCIDENT_LUA = r"""
-- ARGV[1] = prefix, then 7 per event: id, car, status, rule, member, class id, record JSON
local p = ARGV[1]
for i = 2, #ARGV, 7 do
  local id, car, status, rule, member, cid, rec =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local old = redis.call('HGET', p .. 'ix:inc:meta', id)
  local old_cid, old_status = nil, nil
  if old then
    local a = string.find(old, '\31', 1, true)
    local b = string.find(old, '\31', a + 1, true)
    old_cid, old_status = string.sub(old, 1, a - 1), string.sub(old, a + 1, b - 1)
  end
  -- a replayed firing event never reopens a resolved incident
  if not (old_status == 'resolved' and status == 'firing') then
    redis.call('SET', p .. 'inc:' .. id, rec)
    local meta = table.concat({cid, status, rule, car, member}, '\31')
    redis.call('HSET', p .. 'ix:inc:meta', id, meta)
    redis.call('ZADD', p .. 'ix:inc:all', 0, member)
    redis.call('ZADD', p .. 'ix:inc:rule:' .. rule, 0, member)
    redis.call('ZADD', p .. 'ix:inc:car:' .. car, 0, member)
    if old_cid and old_cid ~= cid then redis.call('ZREM', p .. 'ix:inc:cls:' .. old_cid, member) end
    redis.call('ZADD', p .. 'ix:inc:cls:' .. cid, 0, member)
    if old_status and old_status ~= status then
      redis.call('ZREM', p .. 'ix:inc:status:' .. old_status, member)
    end
    redis.call('ZADD', p .. 'ix:inc:status:' .. status, 0, member)
    local act = p .. 'inc:active:' .. car
    if status == 'firing' then
      redis.call('SADD', act, id)
      redis.call('ZADD', p .. 'ix:active', tonumber(car), car)
    else
      redis.call('SREM', act, id)
      if redis.call('SCARD', act) == 0 then redis.call('ZREM', p .. 'ix:active', car) end
    end
  end
end
return 1
"""

SERIES_LUA = r"""
-- ARGV[1] = prefix, ARGV[2] = samples kept per car, then pairs: car, sample
local p, keep = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local key = p .. 'series:' .. ARGV[i]
  redis.call('RPUSH', key, ARGV[i + 1])
  redis.call('LTRIM', key, -keep, -1)
end
return 1
"""


BATCH_LUA = r"""
-- ARGV: n, command, its n - 1 arguments, n, command, ... : run them in one atomic step (one slot)
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""
LUA_CHUNK = 1000  # elements per recorded command (Lua's unpack handles a few thousand values)


class _Recorded:
    """The pipeline methods the index moves use, recorded as flat ``BATCH_LUA`` arguments (cluster path);
    variadic commands are split into chunks Lua's ``unpack`` can take."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def _add(self, head: list[Any], items: list[Any], width: int) -> None:
        step = LUA_CHUNK * width
        for i in range(0, len(items), step):
            part = items[i : i + step]
            self.args += [len(head) + len(part), *head, *part]

    def zadd(self, name: str, mapping: Mapping[str, float]) -> None:
        self._add(["ZADD", name], [x for m, score in mapping.items() for x in (score, m)], 2)

    def zrem(self, name: str, *members: str) -> None:
        self._add(["ZREM", name], list(members), 1)

    def hset(self, name: str, key: str | None = None, value: Any = None,
             mapping: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        pairs = [x for kv in (mapping or {}).items() for x in kv]
        if key is not None:
            pairs += [key, value]
        self._add(["HSET", name], pairs, 2)

    def geoadd(self, name: str, values: list[Any]) -> None:
        self._add(["GEOADD", name], values, 3)


class RedisVehicleWriter:
    """``VehicleWriter`` on Redis (layout in ``stores.vehicles.layout``)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "state:",
        *,
        tag_columns: Sequence[str] = TAG_COLUMNS,
        stream_maxlen: int = 5000,
        series: SeriesConfig = DEFAULT_SERIES,
    ) -> None:
        self.client = client
        self.series = series
        self._series_at: dict[int, int] = {}  # car -> event time of its last sample (this process's)
        self.keys = Keys.of(prefix, is_cluster(client))
        self.tag_columns = tuple(tag_columns)
        self.stream_maxlen = stream_maxlen
        self._meta: dict[int, Meta] = {}
        self._loc: dict[int, tuple[float, float] | None] = {}
        self._cids: set[str] = set()
        self._by_row: dict[tuple[Any, ...], tuple[str, Meta, bytes]] = {}  # row attributes -> class, meta
        self._fields = tuple(dict.fromkeys((*self.tag_columns, *FILTER_FIELDS)))
        self._shas: dict[str, str] = {}

    def _script(self, source: str) -> str:
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = str(self.client.script_load(source))
        return sha

    def write_batch(
        self, states: Mapping[int, VehicleStateWrite], outliers: Sequence[bytes | Mapping[str, Any]] = ()
    ) -> None:
        """Write one micro-batch: new state documents (one per car) and outlier events, in one round trip
        (two for cars this writer has not seen before)."""
        if not states and not outliers:
            return
        k = self.keys
        seen: dict[str, int] = {}
        geo_add: list[Any] = []
        geo_del: list[str] = []
        new_meta: dict[int, Meta] = {}
        new_loc: dict[int, tuple[float, float] | None] = {}
        stream: list[tuple[int, int, str]] = []
        classes: dict[str, bytes] = {}
        by_row, row_fields, known_loc = self._by_row, self._fields, self._loc
        series_at, step, wanted = self._series_at, self.series.step_ms, self.series.signals
        series_on = self.series.points > 0
        sampled: list[str] = []
        new_at: dict[int, int] = {}
        for car, w in states.items():
            doc = w.doc if w.doc is not None else orjson.loads(w.body)
            member = str(car)
            last = seen[member] = doc.get("last_seen") or 0
            if (
                series_on
                and last >= series_at.get(car, -step) + step
                and ("values" in doc or "signals" in doc)
            ):
                sampled += (member, series_sample(doc, wanted))
                new_at[car] = last
            row = doc.get("car") or {}
            row_key = tuple([row.get(f) for f in row_fields])
            hit = by_row.get(row_key)
            if hit is None:  # a combination of row attributes not seen before (rare): class and meta once
                tags = tags_of(row, self.tag_columns)
                cid = class_id(tags)
                hit = by_row[row_key] = (cid, meta_of(row, cid), orjson.dumps(tags))
            cid = hit[0]
            if cid not in self._cids:
                classes[cid] = hit[2]
            new_meta[car] = hit[1]
            loc = doc.get("location")
            pos = (loc["lon"], loc["lat"]) if loc else None
            if known_loc.get(car, 0) != pos:
                new_loc[car] = pos
                if pos is not None and abs(pos[1]) <= GEO_MAX_LAT:
                    geo_add.extend((pos[0], pos[1], member))
                else:
                    geo_del.append(member)
            stream.append((car, doc.get("version") or 0, cid))
        unknown = [c for c in new_meta if c not in self._meta]
        if unknown:
            raw: Any = self.client.hmget(k.meta, [str(c) for c in unknown])
            for car, r in zip(unknown, raw, strict=True):
                if r is not None:
                    self._meta[car] = Meta.unpack(r.decode())
        incidents, summaries = self._incident_args(outliers, classes)
        if k.sharded:
            changed = self._send_sharded(states, seen, geo_add, geo_del, classes, new_meta, incidents,
                                         stream, summaries, sampled)  # fmt: skip
        else:
            changed = self._send(
                states, seen, geo_add, geo_del, classes, new_meta, incidents, stream, summaries, sampled
            )
        self._meta.update({c: new_meta[c] for c in changed})
        self._loc.update(new_loc)
        self._cids.update(classes)
        series_at.update(new_at)

    def _send(self, states: Mapping[int, VehicleStateWrite], seen: dict[str, int], geo_add: list[Any],
              geo_del: list[str], classes: dict[str, bytes], new_meta: dict[int, Meta], incidents: list[str],
              stream: list[tuple[int, int, str]], summaries: list[dict[str, Any]],
              sampled: list[str]) -> list[int]:  # fmt: skip
        """One instance: the whole batch in one MULTI/EXEC, one round trip. Returns the cars whose meta
        changed."""
        k = self.keys
        changed: list[int] = []
        docs = {k.car(car): w.body for car, w in states.items()}
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=True)
            if docs:
                pipe.mset(docs)
            changed = self._queue_indexes(pipe, seen, geo_add, geo_del, classes, new_meta)
            if incidents:
                pipe.evalsha(self._script(INCIDENT_LUA), 0, k.prefix, *incidents)
            if sampled:
                pipe.evalsha(self._script(SERIES_LUA), 0, k.prefix, self.series.points, *sampled)
            fields: dict[str, str] = {}
            if stream:
                fields["s"] = pack_states(stream)
            if summaries:
                fields["i"] = orjson.dumps(summaries).decode()
            pipe.xadd(k.changes, fields, maxlen=self.stream_maxlen, approximate=True)  # type: ignore[arg-type]
            try:
                pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                self._shas.clear()  # Redis lost its scripts (restart): load again, replay the batch
                if attempt == 2:
                    raise
        return changed

    def _send_sharded(self, states: Mapping[int, VehicleStateWrite], seen: dict[str, int],
                      geo_add: list[Any], geo_del: list[str], classes: dict[str, bytes],
                      new_meta: dict[int, Meta], incidents: list[str], stream: list[tuple[int, int, str]],
                      summaries: list[dict[str, Any]], sampled: list[str]) -> list[int]:  # fmt: skip
        """Redis Cluster: one MSET per document tag, the index moves (one BATCH_LUA call) and the incident
        script in one pipelined round trip to all masters; then the change entry. Returns the cars whose
        meta changed."""
        k = self.keys
        groups: dict[int, dict[str, bytes]] = {}
        for car, w in states.items():
            groups.setdefault(car % DOC_SHARDS, {})[k.car(car)] = w.body
        rec = _Recorded()
        changed = self._queue_indexes(rec, seen, geo_add, geo_del, classes, new_meta)
        for attempt in (1, 2):
            pipe: Any = self.client.pipeline(transaction=False)  # redis-py's ClusterPipeline
            for group in groups.values():  # (redis-py blocks mset in cluster pipelines; one slot each here)
                pipe.execute_command("MSET", *[x for kv in group.items() for x in kv])
            if rec.args:
                pipe.execute_command("EVALSHA", self._script(BATCH_LUA), 1, k.all, *rec.args)
            if incidents:
                pipe.execute_command("EVALSHA", self._script(INCIDENT_LUA), 1, k.all, k.prefix, *incidents)
            if sampled:  # the series lists live in the index slot too (``Keys.series``)
                pipe.execute_command("EVALSHA", self._script(SERIES_LUA), 1, k.all, k.prefix,
                                     self.series.points, *sampled)  # fmt: skip
            try:
                pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                self._shas.clear()  # a node lost its scripts: load again, replay the batch
                if attempt == 2:
                    raise
        fields: dict[str, str] = {}
        if stream:
            fields["s"] = pack_states(stream)
        if summaries:
            fields["i"] = orjson.dumps(summaries).decode()
        self.client.xadd(k.changes, fields, maxlen=self.stream_maxlen, approximate=True)  # type: ignore[arg-type]
        return changed

    def _queue_indexes(self, pipe: Any, seen: dict[str, int], geo_add: list[Any], geo_del: list[str],
                       classes: dict[str, bytes], new_meta: dict[int, Meta]) -> list[int]:  # fmt: skip
        """Queue the batch's last-seen scores, positions, new tag classes and index moves on ``pipe`` (a
        MULTI pipeline, or ``_Recorded`` on a cluster); return the cars whose meta changed."""
        k = self.keys
        if seen:
            pipe.zadd(k.seen, seen)
        if geo_add:
            pipe.geoadd(k.geo, geo_add)
        if geo_del:
            pipe.zrem(k.geo, *geo_del)
        for cid, tags_json in classes.items():
            pipe.hset(k.classes, cid, tags_json)
        return self._index_moves(pipe, new_meta)

    def _index_moves(self, pipe: Any, new_meta: Mapping[int, Meta]) -> list[int]:
        """Queue the index changes of the cars whose meta changed; return those cars."""
        k = self.keys
        changed = []
        meta_updates: dict[str, str] = {}
        known = self._meta
        for car, meta in new_meta.items():
            old = known.get(car)
            if old is meta or old == meta:
                continue
            changed.append(car)
            member = {str(car): car}
            meta_updates[str(car)] = meta.pack()
            if old is None:
                pipe.zadd(k.all, member)
            if old is None or old.cid != meta.cid:
                if old is not None:
                    pipe.zrem(k.cls(old.cid), str(car))
                pipe.zadd(k.cls(meta.cid), member)
            for name in FILTER_FIELDS:
                was, now = (old.value(name) if old else ""), meta.value(name)
                if old is not None and was == now:
                    continue
                if was:
                    pipe.zrem(k.field(name, was), str(car))
                if now:
                    pipe.zadd(k.field(name, now), member)
        if meta_updates:
            pipe.hset(k.meta, mapping=meta_updates)
        return changed

    def _incident_args(
        self, outliers: Sequence[bytes | Mapping[str, Any]], classes: dict[str, bytes]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        args: list[str] = []
        summaries: list[dict[str, Any]] = []
        for item in outliers:
            event = orjson.loads(item) if isinstance(item, bytes | bytearray) else item
            record = incident_record(event, self.tag_columns)
            cid = class_id(record["tags"])
            if cid not in self._cids:
                classes[cid] = orjson.dumps(record["tags"])
            member = incident_member(int(record["starts_at"]), str(record["incident_id"]))
            args += [
                str(record["incident_id"]),
                str(record["car_id"]),
                str(record["status"]),
                str(record["rule_id"]),
                member,
                cid,
                orjson.dumps(record).decode(),
            ]
            summaries.append(incident_summary(record, cid))
        return args, summaries
