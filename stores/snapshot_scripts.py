"""The snapshot store's Lua scripts, written against ``stores.snapshot_codec.LUA_CODEC`` (keys and values
are built and read only through its functions). Semantics: ``enrich.snapshot``.

``APPLY_LUA`` applies a batch of changes, each as ``CHANGE_FIELDS`` ARGV fields (no packed strings to
split; the version's value comes ready-made): per row one HMGET of the header fields it needs and one HSET
of the new version with its header; pruning, the car's index and the expiry of deleted rows only when they
change. Mode ``all`` (one Redis) also updates the cars' indexes and appends the change feed entry (built by
the caller: a line per change of the batch, applied or not — an extra invalidation is harmless) in the same
atomic call; mode ``rows`` (Redis Cluster: every call stays in one hash slot) leaves the index updates to
``INDEX_LUA`` calls in the cars' slots and returns them, and takes the truncate floors as an argument
instead of reading them.

``LOOKUP_LUA`` (one Redis) gathers everything a device's timeline needs in one call: the device's hash,
per car its versions point at the car's hash and the hashes of the rows in its indexes, and the
truncates. On Redis Cluster the same reads are made as pipelined plain commands, slot by slot
(``stores.redis_snapshot``).
"""

from __future__ import annotations

from enrich.snapshot import PRUNE_EVERY
from stores.snapshot_codec import LUA_CODEC

#: Fields per change in APPLY_LUA's ARGV: table, pk, op (u/d/t), position, commit ms, flags ('l': from an
#: initial load, 'L': a child chosen "latest", both: 'lL'), car (the version's reference, '' for none), until
#: (the row can be chosen until the later of this and its since, '+inf' for good; '' when the car does not
#: index the table), the version's value as valid from the commit time (``codec.version_value``).
CHANGE_FIELDS = 9
APPLY_HEAD = 9  # prefix, ttl, feed maxlen, horizon ms, max versions, car table, mode, floors, feed entry

_INDEX = r"""
local HORIZON = 0
local function apply_index(car_table, car, t, pk, score, latest, since)
  local ik = index_key(car_table, car, t)
  if latest == '1' then
    for _, other in ipairs(redis.call('ZRANGEBYSCORE', ik, '+inf', '+inf')) do
      if other ~= pk then redis.call('ZADD', ik, num(since), other) end
    end
  end
  redis.call('ZADD', ik, score, pk)
  -- a row stops being chosen: forget the ones no time within the horizon needs (amortised, by its time)
  if score ~= '+inf' and since % PRUNE_EVERY == 0 then
    redis.call('ZREMRANGEBYSCORE', ik, '-inf', '(' .. num(since - HORIZON))
  end
end
""".replace("PRUNE_EVERY", str(PRUNE_EVERY))

APPLY_LUA = (
    LUA_CODEC
    + _INDEX
    + r"""
local TTL, MAXLEN, MAXV, CAR_TABLE, MODE = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[5]), ARGV[6], ARGV[7]
HORIZON = tonumber(ARGV[4])
local floors = {}
local given = ARGV[8] ~= ''
if given then
  local parts = {}
  for part in string.gmatch(ARGV[8] .. US, '([^\31]*)\31') do parts[#parts + 1] = part end
  for i = 1, #parts - 1, 2 do floors[parts[i]] = parts[i + 1] end
end
local function floor_of(t)
  local f = floors[t]
  if f == nil then
    f = ''
    if not given then
      local v = redis.call('GET', trunc_key(t))
      if v then f = string.sub(v, 1, string.find(v, US, 1, true) - 1) end
    end
    floors[t] = f
  end
  return f
end

local function prune(key, since)
  -- keep at most MAXV versions, and none that no time within the horizon of `since` needs
  local list = {}
  for _, name in ipairs(redis.call('HKEYS', key)) do
    local b = string.byte(name, 1)
    if b >= 65 and b <= 90 then list[#list + 1] = name end
  end
  table.sort(list)
  local first = math.max(1, #list - MAXV + 1)
  local o = nil
  while first < #list do
    o = version_since(redis.call('HGET', key, list[first + 1]))
    if o > since - HORIZON then break end
    first = first + 1
    o = nil
  end
  if first > 1 then
    local drop = {}
    for i = 1, first - 1 do drop[i] = list[i] end
    redis.call('HDEL', key, unpack(drop))
  end
  redis.call('HSET', key, 'n', #list - first + 1)
  if o then redis.call('HSET', key, 'o', num(o)) else redis.call('HDEL', key, 'o') end
end

local flags, ops = {}, {}
local function index_write(car, t, pk, score, latest, since)
  if MODE == 'rows' then
    ops[#ops + 1] = car; ops[#ops + 1] = t; ops[#ops + 1] = pk
    ops[#ops + 1] = score; ops[#ops + 1] = latest; ops[#ops + 1] = num(since)
  else
    apply_index(CAR_TABLE, car, t, pk, score, latest, since)
  end
end

for i = APPLY_HEAD + 1, #ARGV, CHANGE_FIELDS do
  local t, pk, op, pos = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local car, score = ARGV[i + 6], ARGV[i + 7]
  local ok = false
  if op == 't' then
    local cur = redis.call('GET', trunc_key(t))
    local floor = cur and string.sub(cur, 1, string.find(cur, US, 1, true) - 1) or ''
    if pos > floor then
      redis.call('SET', trunc_key(t), pos .. US .. ARGV[i + 4])
      floors[t] = pos
      ok = true
    end
  elseif pos > floor_of(t) then
    local key = row_key(t, pk)
    -- newest position, its since, versions, since of the second oldest, deleted, car, index score
    local h
    if score == '' then h = redis.call('HMGET', key, 'p', 's', 'n', 'o', 'd')
    else h = redis.call('HMGET', key, 'p', 's', 'n', 'o', 'd', 'f', 'r') end
    if h[1] and pos <= h[1] then
      if MODE == 'rows' and score ~= '' and h[6] then  -- a replay: restate the index entry
        index_write(h[6], t, pk, h[7], '0', tonumber(h[2]))
      end
    else
      ok = true
      local since, s = tonumber(ARGV[i + 4]), ARGV[i + 4]
      if not h[1] then
        local flag = ARGV[i + 5]
        if flag == 'l' or flag == 'lL' then since, s = 0, '0' end
      elseif tonumber(h[2]) > since then
        since, s = tonumber(h[2]), h[2]
      end
      local n = (tonumber(h[3]) or 0) + 1
      local value = ARGV[i + 8]  -- the version as Python built it, valid from the commit time
      if s ~= ARGV[i + 4] then value = version_value(s, car, version_row(value)) end
      local o = h[4]
      if n == 2 then o = s end
      if score ~= '' and score ~= '+inf' then
        local until_ = tonumber(score)
        score = until_ > since and score or s
      end
      local indexed = car ~= '' and score ~= '' and not (h[6] == car and h[7] == score)
      if n ~= 2 and not indexed and op ~= 'd' then  -- the common case
        redis.call('HSET', key, 'p', pos, 's', s, 'n', n, pos, value)
      else
        local args = {'p', pos, 's', s, 'n', n, pos, value}
        if n == 2 then args[#args + 1] = 'o'; args[#args + 1] = s end
        if indexed then
          args[#args + 1] = 'f'; args[#args + 1] = car; args[#args + 1] = 'r'; args[#args + 1] = score
        end
        if op == 'd' then args[#args + 1] = 'd'; args[#args + 1] = '1' end
        redis.call('HSET', key, unpack(args))
      end
      if op == 'd' then
        redis.call('EXPIRE', key, TTL)
      elseif h[5] then
        redis.call('HDEL', key, 'd')
        redis.call('PERSIST', key)
      end
      if n > MAXV or (o and tonumber(o) <= since - HORIZON) then prune(key, since) end
      if score ~= '' then
        local f, r = h[6], h[7]
        local latest = ARGV[i + 5] == 'L' or ARGV[i + 5] == 'lL'
        if car ~= '' then
          if f ~= car or r ~= score or latest then
            index_write(car, t, pk, score, latest and '1' or '0', since)
          end
        elseif f then
          redis.call('HDEL', key, 'f', 'r')
        end
      end
    end
  end
  flags[#flags + 1] = ok and '1' or '0'
end
if MODE == 'rows' then
  table.insert(ops, 1, table.concat(flags))
  return ops
end
if ARGV[9] ~= '' then
  redis.call('XADD', feed_key(), 'MAXLEN', '~', MAXLEN, '*', 'c', ARGV[9])
end
return table.concat(flags)
""".replace("APPLY_HEAD", str(APPLY_HEAD)).replace("CHANGE_FIELDS", str(CHANGE_FIELDS))
)

#: Redis Cluster: index updates of one car (ARGV: prefix, horizon, car table, then 6 fields per update:
#: car, table, pk, score, latest, since) — every key in the car row's hash slot.
INDEX_LUA = (
    LUA_CODEC
    + _INDEX
    + r"""
HORIZON = tonumber(ARGV[2])
for i = 4, #ARGV, 6 do
  apply_index(ARGV[3], ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]))
end
return #ARGV
"""
)

#: One Redis: everything the timelines of some devices need (ARGV: prefix, car table, device table,
#: number of child tables, the child tables in role order, then the device keys). Answer: the truncates
#: (device, car, children), then per device its hash and per car {car pk, car hash, {device pk, hash}...,
#: then per child table {child pk, hash}...}.
LOOKUP_LUA = (
    LUA_CODEC
    + r"""
local CAR, DEV, K = ARGV[2], ARGV[3], tonumber(ARGV[4])
local kids = {}
for i = 1, K do kids[i] = ARGV[4 + i] end
local truncs = {redis.call('GET', trunc_key(DEV)) or '', redis.call('GET', trunc_key(CAR)) or ''}
for i = 1, K do truncs[2 + i] = redis.call('GET', trunc_key(kids[i])) or '' end
local out = {truncs}
for j = 5 + K, #ARGV do
  local pk = ARGV[j]
  local flat = redis.call('HGETALL', row_key(DEV, pk))
  local entry = {flat}
  local seen = {}
  for i = 1, #flat, 2 do
    local b = string.byte(flat[i], 1)
    if b >= 65 and b <= 90 then
      local car, row = version_car(flat[i + 1])
      if car ~= '' and row ~= '' and not seen[car] then
        seen[car] = true
        local c = {car, redis.call('HGETALL', row_key(CAR, car))}
        local devs = {}
        for _, d in ipairs(redis.call('ZRANGE', index_key(CAR, car, DEV), 0, -1)) do
          if d ~= pk then
            devs[#devs + 1] = d
            devs[#devs + 1] = redis.call('HGETALL', row_key(DEV, d))
          end
        end
        c[3] = devs
        for k = 1, K do
          local rows = {}
          for _, r in ipairs(redis.call('ZRANGE', index_key(CAR, car, kids[k]), 0, -1)) do
            rows[#rows + 1] = r
            rows[#rows + 1] = redis.call('HGETALL', row_key(kids[k], r))
          end
          c[3 + k] = rows
        end
        entry[#entry + 1] = c
      end
    end
  end
  out[#out + 1] = entry
end
return out
"""
)
