"""The snapshot store in Redis: position-checked writes in one Lua call per batch, merged lookups in one more.

Layout (``prefix`` defaults to ``snap:``):

* ``snap:<table>:<pk>`` string ``position US op US fks US row`` (US = 0x1F): ``op`` is ``u`` or ``d`` (a
  delete tombstone, which expires after the retention window), ``fks`` the foreign-key values as
  ``col RS value RS col RS value`` (RS = 0x1E), ``row`` the row JSON (empty on a tombstone). One string per
  row keeps each write to a single GET and SET in the script;
* ``snap:trunc:<table>``: position of the table's last truncate (rows at or before it are gone);
* ``snap:active:<table>:<parent>``: primary key of the parent's active row (e.g. the car's reservation);
* ``snap:changes`` stream: one entry per applied batch, field ``c`` = ``table<TAB>pk<TAB>position<TAB>fks``
  lines (fks = ``col GS value GS ...``, GS = 0x1D) — the change feed enrichment workers use to invalidate
  their caches.

A batch travels as one packed argument (changes separated by RS, fields by US; JSON never contains raw
control characters and the normaliser rejects keys that do). Within a batch only the newest change per
row is sent. The scripts touch keys they compute themselves, so they need a single Redis instance (or one
hash slot); on Redis Cluster the layout would need hash tags per car — not done yet.

Outages: the store makes its client wait through a Redis restart (``stores.redis_client.ensure_retrying``:
unlimited retries with backoff, the calling worker blocks meanwhile); the scripts reload themselves after
``NOSCRIPT``. A batch retried after a lost reply is harmless: every write is position-checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import redis

from enrich.cdc import Change, parent_of
from enrich.snapshot import ApplyResult, Merged, StoredRow, join_plan
from enrich.tables import TableSpec
from stores.redis_client import ensure_retrying

_OPS = {"upsert": "u", "delete": "d", "truncate": "t"}
US = "\x1f"
RS = "\x1e"

_SPLIT_LUA = r"""
local function split(str, sep)
  local out, p = {}, 1
  while true do
    local q = string.find(str, sep, p, true)
    if not q then out[#out + 1] = string.sub(str, p); return out end
    out[#out + 1] = string.sub(str, p, q - 1)
    p = q + 1
  end
end
local function decode(v)
  -- position, op, fks (table col -> value), row
  if not v then return nil end
  local f = split(v, '\31')
  local fks = {}
  if f[3] ~= '' then
    local kv = split(f[3], '\30')
    for i = 1, #kv, 2 do fks[kv[i]] = kv[i + 1] end
  end
  return f[1], f[2], fks, f[4]
end
local truncs = {}
local function floor_of(prefix, t)
  if truncs[t] == nil then truncs[t] = redis.call('GET', prefix .. 'trunc:' .. t) or '' end
  return truncs[t]
end
"""

APPLY_LUA = (
    _SPLIT_LUA
    + r"""
local prefix, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local flags, feed = {}, {}
for _, rec in ipairs(split(ARGV[4], '\30')) do
  local f = split(rec, '\31')
  local t, pk, op, pos, row, fks, act, per = f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
  local floor = floor_of(prefix, t)
  local ok = false
  if op == 't' then
    if pos > floor then
      redis.call('SET', prefix .. 'trunc:' .. t, pos)
      truncs[t] = pos
      ok = true
    end
  else
    local key = prefix .. t .. ':' .. pk
    local curpos, _, curfks = decode(redis.call('GET', key))
    if curpos and curpos <= floor then curpos = nil end
    if pos > floor and ((not curpos) or pos > curpos) then
      local value = pos .. '\31' .. op .. '\31' .. string.gsub(fks, '\29', '\30') .. '\31' .. row
      if op == 'u' then
        redis.call('SET', key, value)
      else
        redis.call('SET', key, value, 'EX', ttl)
      end
      if act ~= '' then
        local newfk = {}
        if fks ~= '' then
          local kv = split(fks, '\29')
          for i = 1, #kv, 2 do newfk[kv[i]] = kv[i + 1] end
        end
        local parents = {}
        if curpos and curfks[per] then parents[#parents + 1] = curfks[per] end
        if newfk[per] and newfk[per] ~= parents[1] then parents[#parents + 1] = newfk[per] end
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
    feed[#feed + 1] = t .. '\t' .. pk .. '\t' .. pos .. '\t' .. fks
  else
    flags[#flags + 1] = '0'
  end
end
if #feed > 0 then
  redis.call('XADD', prefix .. 'changes', 'MAXLEN', '~', maxlen, '*', 'c', table.concat(feed, '\n'))
end
return table.concat(flags)
"""
)

LOOKUP_LUA = (
    _SPLIT_LUA
    + r"""
local prefix, root, plan = ARGV[1], ARGV[2], ARGV[3]
local steps = {}
if plan ~= '' then
  for _, item in ipairs(split(plan, '\30')) do
    local p = split(item, '\31')
    local acts = {}
    if p[3] ~= '' then acts = split(p[3], ',') end
    steps[#steps + 1] = {p[1], p[2], acts}
  end
end
local out = {}
local function live(t, pk)
  -- position, row, fks of a live row, or nil
  if not pk then return nil end
  local pos, op, fks, row = decode(redis.call('GET', prefix .. t .. ':' .. pk))
  if (not pos) or op ~= 'u' or pos <= floor_of(prefix, t) then return nil end
  return pos, row, fks
end
local function push(pos, row)
  out[#out + 1] = row or ''
  out[#out + 1] = pos or ''
end
for i = 4, #ARGV do
  local pos, row, fks = live(root, ARGV[i])
  push(pos, row)
  for _, s in ipairs(steps) do
    local parent = pos and fks[s[1]] or nil
    local rpos, rrow = live(s[2], parent)
    push(rpos, rrow)
    for _, a in ipairs(s[3]) do
      local apk = parent and redis.call('GET', prefix .. 'active:' .. a .. ':' .. parent) or nil
      local apos, arow = live(a, apk or nil)
      push(apos, arow)
    end
  end
end
return out
"""
)


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
        self.client = ensure_retrying(client)
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

    def _pack(self, ch: Change) -> str:
        spec = self.tables[ch.table]
        # Within the record US and RS separate; foreign keys use GS (0x1D) here, RS once stored.
        fks = "\x1d".join(f"{c}\x1d{v}" for c, v in parent_of(spec, ch.row).items())
        act, per = "", ""
        if spec.active is not None:
            per = spec.active.per
            act = "1" if ch.row is not None and ch.op == "upsert" and spec.active.is_active(ch.row) else "0"
        row = orjson.dumps(ch.row).decode() if ch.op == "upsert" else ""
        return US.join((ch.table, ch.pk, _OPS[ch.op], ch.position, row, fks, act, per))

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        result = ApplyResult()
        # Only the newest change per row matters; older ones in the same batch would be ignored anyway.
        newest: dict[tuple[str, str], Change] = {}
        for ch in changes:
            key = (ch.table, ch.pk)
            seen = newest.get(key)
            if seen is None or ch.position > seen.position:
                newest[key] = ch
        result.stale += len(changes) - len(newest)
        todo = list(newest.values())
        for start in range(0, len(todo), self.chunk):
            part = todo[start : start + self.chunk]
            packed = RS.join(self._pack(ch) for ch in part)
            flags = self._apply(args=[self.prefix, self.tombstone_ttl_s, self.feed_maxlen, packed])
            flags = flags.decode() if isinstance(flags, bytes) else str(flags)
            for ch, flag in zip(part, flags, strict=True):
                if flag == "1":
                    result.applied += 1
                    result.applied_keys.append((ch.table, ch.pk, ch.position))
                else:
                    result.stale += 1
        return result

    def get(self, table: str, pk: str) -> StoredRow | None:
        raw: bytes | None = self.client.get(f"{self.prefix}{table}:{pk}")  # type: ignore[assignment]
        floor: bytes = self.client.get(f"{self.prefix}trunc:{table}") or b""  # type: ignore[assignment]
        if raw is None:
            return None
        pos, op, _fks, row = raw.split(b"\x1f", 3)
        if pos <= floor:
            return None
        return StoredRow(orjson.loads(row) if op == b"u" else None, pos.decode())

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
        args, order = lookup_args(self.tables, self.prefix, table, keys)
        return decode_lookup(self._lookup(args=args), keys, order)


def lookup_args(
    tables: dict[str, TableSpec], prefix: str, table: str, keys: list[str]
) -> tuple[list[str], list[str]]:
    """Arguments of the LOOKUP_LUA call for ``keys`` of ``table``, and the tables of its answer in order."""
    plan = join_plan(tables, table)
    packed = RS.join(US.join((col, ref, ",".join(acts))) for col, ref, acts in plan)
    order = [table]
    for _col, ref, acts in plan:
        order.append(ref)
        order.extend(acts)
    return [prefix, table, packed, *keys], order


def decode_lookup(raw: Any, keys: list[str], order: list[str]) -> dict[str, Merged]:
    """The merged rows of a LOOKUP_LUA answer (used by the sync store and the API's async reader)."""
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
