"""The snapshot store in Redis: position-checked writes in one Lua call per batch, merged lookups in one more.

Layout (``prefix`` defaults to ``snap:``):

* ``snap:<table>:<pk>`` hash: ``p`` position, ``r`` row JSON (absent when deleted), ``d`` = 1 on a delete
  tombstone (which expires after the retention window), ``f:<col>`` foreign-key values;
* ``snap:trunc:<table>``: position of the table's last truncate (rows at or before it are gone);
* ``snap:active:<table>:<parent>``: primary key of the parent's active row (e.g. the car's reservation);
* ``snap:changes`` stream: one entry per applied batch, field ``c`` = ``table<TAB>pk<TAB>position`` lines —
  the change feed enrichment workers use to invalidate their caches.

The scripts touch keys they compute themselves, so they need a single Redis instance (or one hash slot);
on Redis Cluster the layout would need hash tags per car — not done yet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis

from enrich.cdc import Change, parent_of
from enrich.snapshot import ApplyResult, Merged, StoredRow, join_plan
from enrich.tables import TableSpec

_FIELDS_PER_CHANGE = 8
_OPS = {"upsert": "u", "delete": "d", "truncate": "t"}
SEP_FIELD = "\x1f"
SEP_ITEM = "\x1e"

APPLY_LUA = r"""
local prefix, ttl, maxlen, n = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local truncs = {}
local function floor_of(t)
  if truncs[t] == nil then truncs[t] = redis.call('GET', prefix .. 'trunc:' .. t) or '' end
  return truncs[t]
end
local flags, feed = {}, {}
for i = 0, n - 1 do
  local b = 5 + i * 8
  local t, pk, op, pos, row, fks, act, per =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7]
  local floor = floor_of(t)
  local ok = false
  if op == 't' then
    if pos > floor then
      redis.call('SET', prefix .. 'trunc:' .. t, pos)
      truncs[t] = pos
      ok = true
    end
  else
    local key = prefix .. t .. ':' .. pk
    local cur = redis.call('HMGET', key, 'p', 'f:' .. per)
    local curpos = cur[1]
    if curpos and curpos <= floor then curpos = false end
    if pos > floor and ((not curpos) or pos > curpos) then
      local args = {key, 'p', pos}
      local newfk = {}
      if fks ~= '' then
        for item in string.gmatch(fks, '[^\30]+') do
          local col, val = string.match(item, '^([^\31]*)\31(.*)$')
          newfk[col] = val
          args[#args + 1] = 'f:' .. col
          args[#args + 1] = val
        end
      end
      redis.call('DEL', key)
      if op == 'u' then
        args[#args + 1] = 'r'
        args[#args + 1] = row
        redis.call('HSET', unpack(args))
      else
        args[#args + 1] = 'd'
        args[#args + 1] = '1'
        redis.call('HSET', unpack(args))
        redis.call('EXPIRE', key, ttl)
      end
      if act ~= '' then
        local parents = {}
        if curpos and cur[2] then parents[#parents + 1] = cur[2] end
        if newfk[per] then parents[#parents + 1] = newfk[per] end
        for _, parent in ipairs(parents) do
          local ak = prefix .. 'active:' .. t .. ':' .. parent
          if redis.call('GET', ak) == pk then redis.call('DEL', ak) end
        end
        if op == 'u' and act == '1' and newfk[per] then
          redis.call('SET', prefix .. 'active:' .. t .. ':' .. newfk[per], pk)
        end
      end
      ok = true
    end
  end
  if ok then
    flags[#flags + 1] = '1'
    feed[#feed + 1] = t .. '\t' .. pk .. '\t' .. pos
  else
    flags[#flags + 1] = '0'
  end
end
if #feed > 0 then
  redis.call('XADD', prefix .. 'changes', 'MAXLEN', '~', maxlen, '*', 'c', table.concat(feed, '\n'))
end
return table.concat(flags)
"""

LOOKUP_LUA = r"""
local prefix, root, plan = ARGV[1], ARGV[2], ARGV[3]
local truncs = {}
local function floor_of(t)
  if truncs[t] == nil then truncs[t] = redis.call('GET', prefix .. 'trunc:' .. t) or '' end
  return truncs[t]
end
local steps = {}
for item in string.gmatch(plan, '[^\30]+') do
  local col, ref, actives = string.match(item, '^([^\31]*)\31([^\31]*)\31(.*)$')
  local acts = {}
  for a in string.gmatch(actives, '[^,]+') do acts[#acts + 1] = a end
  steps[#steps + 1] = {col, ref, acts}
end
local fields = {'p', 'r'}
for _, s in ipairs(steps) do fields[#fields + 1] = 'f:' .. s[1] end
local out = {}
local function push(v, t)
  if v and v[1] and v[2] and v[1] > floor_of(t) then
    out[#out + 1] = v[2]; out[#out + 1] = v[1]
  else
    out[#out + 1] = ''; out[#out + 1] = ''
  end
end
for i = 4, #ARGV do
  local v = redis.call('HMGET', prefix .. root .. ':' .. ARGV[i], unpack(fields))
  local alive = v[1] and v[2] and v[1] > floor_of(root)
  push(v, root)
  for j, s in ipairs(steps) do
    local parent = alive and v[2 + j] or nil
    if parent then
      push(redis.call('HMGET', prefix .. s[2] .. ':' .. parent, 'p', 'r'), s[2])
    else
      push(nil, s[2])
    end
    for _, a in ipairs(s[3]) do
      local apk = parent and redis.call('GET', prefix .. 'active:' .. a .. ':' .. parent) or nil
      if apk then push(redis.call('HMGET', prefix .. a .. ':' .. apk, 'p', 'r'), a) else push(nil, a) end
    end
  end
end
return out
"""


class RedisSnapshotStore:
    """``SnapshotStore`` on Redis (see module docstring for the layout)."""

    def __init__(
        self,
        client: redis.Redis,
        tables: dict[str, TableSpec],
        *,
        prefix: str = "snap:",
        tombstone_ttl_s: int = 7 * 86400,
        feed_maxlen: int = 100_000,
        chunk: int = 2000,
    ) -> None:
        self.client = client
        self.tables = tables
        self.prefix = prefix
        self.tombstone_ttl_s = tombstone_ttl_s
        self.feed_maxlen = feed_maxlen
        self.chunk = chunk
        self._apply = client.register_script(APPLY_LUA)
        self._lookup = client.register_script(LOOKUP_LUA)

    @property
    def feed_key(self) -> str:
        return f"{self.prefix}changes"

    def _args(self, ch: Change) -> list[str]:
        spec = self.tables[ch.table]
        fks = parent_of(spec, ch.row)
        packed = SEP_ITEM.join(f"{c}{SEP_FIELD}{v}" for c, v in fks.items())
        act, per = "", ""
        if spec.active is not None:
            per = spec.active.per
            act = "1" if ch.row is not None and ch.op == "upsert" and spec.active.is_active(ch.row) else "0"
        row = orjson.dumps(ch.row).decode() if ch.op == "upsert" else ""
        return [ch.table, ch.pk, _OPS[ch.op], ch.position, row, packed, act, per]

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        result = ApplyResult()
        for start in range(0, len(changes), self.chunk):
            part = changes[start : start + self.chunk]
            argv: list[Any] = [self.prefix, self.tombstone_ttl_s, self.feed_maxlen, len(part)]
            for ch in part:
                argv.extend(self._args(ch))
            flags = self._apply(args=argv)
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            for ch, flag in zip(part, flags, strict=True):
                if flag == "1":
                    result.applied += 1
                    result.applied_keys.append((ch.table, ch.pk, ch.position))
                else:
                    result.stale += 1
        return result

    def get(self, table: str, pk: str) -> StoredRow | None:
        values: list[bytes | None] = self.client.hmget(f"{self.prefix}{table}:{pk}", "p", "r")  # type: ignore[assignment]
        pos, row = values
        floor: bytes = self.client.get(f"{self.prefix}trunc:{table}") or b""  # type: ignore[assignment]
        if pos is None or pos <= floor:
            return None
        return StoredRow(orjson.loads(row) if row is not None else None, pos.decode())

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        keys = list(self.client.scan_iter(match=f"{self.prefix}{table}:*", count=1000))
        for key in keys:
            pk = key.decode()[len(self.prefix) + len(table) + 1 :]
            stored = self.get(table, pk)
            if stored is not None and stored.row is not None:
                out[pk] = stored.row
        return out

    def lookup(self, table: str, pks: Iterable[str]) -> dict[str, Merged]:
        keys = list(pks)
        if not keys:
            return {}
        plan = join_plan(self.tables, table)
        packed = SEP_ITEM.join(f"{col}{SEP_FIELD}{ref}{SEP_FIELD}{','.join(acts)}" for col, ref, acts in plan)
        order = [table]
        for _col, ref, acts in plan:
            order.append(ref)
            order.extend(acts)
        raw = self._lookup(args=[self.prefix, table, packed, *keys])
        width = 2 * len(order)
        out: dict[str, Merged] = {}
        loads = orjson.loads
        for i, pk in enumerate(keys):
            chunk = raw[i * width : (i + 1) * width]
            rows: dict[str, dict[str, Any] | None] = {}
            positions: dict[str, str | None] = {}
            for j, name in enumerate(order):
                row_b, pos_b = chunk[2 * j], chunk[2 * j + 1]
                rows[name] = loads(row_b) if row_b else None
                positions[name] = pos_b.decode() if pos_b else None
            out[pk] = Merged(rows, positions)
        return out
