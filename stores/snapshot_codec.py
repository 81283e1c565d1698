"""The snapshot's wire format in Redis — the one place that defines it, for the Lua scripts (``LUA_CODEC``,
spliced into every script) and for the Python readers (the sync store, the per-process cache, the API's
async reader).

Keys (``prefix`` defaults to ``snap:``). Every key a script touches for one row or one car carries that
row's hash tag, so each script call stays in one hash slot (Redis Cluster):

* ``<prefix>{<table>:<pk>}`` — a **row**: a hash of its versions and a header.

  - one field per version, named by its source position (positions start with an upper-case kind
    letter, ``enrich.cdc``): ``<since> US <car> US <row JSON>`` (US = 0x1F; ``car`` is the version's
    reference to its car for tables the car indexes, else empty; the row is empty for a delete);
  - header fields (lower case): ``p`` newest position, ``s`` its since (ms), ``n`` number of versions,
    ``o`` the since of the second oldest (absent with one version: when it falls out of the horizon the
    oldest can go), ``d`` = ``1`` while the newest version is a delete (the key then expires after the
    tombstone TTL), ``f``/``r`` the car the newest version points at and the score written for it there;
* ``<prefix>{<car table>:<car pk>}:i:<table>`` — the car's **index** of ``table`` (its devices, each child
  table): a sorted set of row keys scored by until when the row can be chosen while it stays with the car
  (``+inf``: while it stays so); a row that moved to another car stays until a lookup finds it keeps no
  version pointing at this car. It shares the car row's hash slot;
* ``<prefix>trunc:<table>`` — the table's last truncate: ``<position> US <since>``;
* ``<prefix>changes`` — the change feed (a stream), one entry per applied batch, field ``c`` = lines
  ``<table> TAB <pk> TAB <car>`` joined by newlines (``pk`` empty for a truncate).

Primary keys never contain control characters (the normaliser dead-letters those), so TAB, newline and US
are safe separators.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import orjson

from enrich.asof import History, Truncate, Version

US = "\x1f"
FEED_FIELD = b"c"


def row_key(prefix: str, table: str, pk: str) -> str:
    return f"{prefix}{{{table}:{pk}}}"


def index_key(prefix: str, car_table: str, car: str, table: str) -> str:
    return f"{prefix}{{{car_table}:{car}}}:i:{table}"


def trunc_key(prefix: str, table: str) -> str:
    return f"{prefix}trunc:{table}"


def feed_key(prefix: str) -> str:
    return f"{prefix}changes"


def row_pattern(prefix: str, table: str) -> str:
    """A SCAN pattern matching the row keys of ``table`` (not the indexes)."""
    return f"{prefix}{{{table}:*}}"


def pk_of_row_key(prefix: str, table: str, key: bytes) -> str:
    return key.decode()[len(prefix) + len(table) + 2 : -1]


# The same key shapes and value layout, for the scripts. ``PREFIX`` is set by each script from ARGV[1].
LUA_CODEC = r"""
local PREFIX = ARGV[1]
local US = '\31'
local function row_key(t, pk) return PREFIX .. '{' .. t .. ':' .. pk .. '}' end
local function index_key(car_table, car, t) return PREFIX .. '{' .. car_table .. ':' .. car .. '}:i:' .. t end
local function trunc_key(t) return PREFIX .. 'trunc:' .. t end
local function feed_key() return PREFIX .. 'changes' end
local function version_value(since, car, row) return since .. US .. car .. US .. row end
local function version_row(value)
  local a = string.find(value, US, 1, true)
  return string.sub(value, string.find(value, US, a + 1, true) + 1)
end
local function version_since(value)
  return tonumber(string.sub(value, 1, string.find(value, US, 1, true) - 1))
end
local function version_car(value)
  local a = string.find(value, US, 1, true)
  local b = string.find(value, US, a + 1, true)
  return string.sub(value, a + 1, b - 1), string.sub(value, b + 1)
end
local function num(x) return string.format('%.0f', x) end
"""


# -- Python side ---------------------------------------------------------------------------------------
def text(b: Any) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


def version_value(since: int, car: str, row: bytes) -> bytes:
    """A version as stored: ``<since> US <car> US <row JSON>`` (the row empty for a delete)."""
    return b"%d\x1f%s\x1f%s" % (since, car.encode(), row)


def feed_line(table: str, pk: str, car: str) -> str:
    return f"{table}\t{pk}\t{car}"


def decode_history(flat: Sequence[Any] | dict[Any, Any] | None) -> History:
    """A row's versions from its hash (HGETALL as a flat list or a dict), oldest first."""
    if not flat:
        return []
    pairs: Iterator[tuple[Any, Any]]
    if isinstance(flat, dict):
        pairs = iter(flat.items())
    else:
        it = iter(flat)
        pairs = zip(it, it, strict=True)
    out: list[Version] = []
    loads = orjson.loads
    for name, value in pairs:
        field = name if isinstance(name, bytes) else str(name).encode()
        if not field or not (65 <= field[0] <= 90):  # header fields are lower case
            continue
        raw = value if isinstance(value, bytes) else str(value).encode()
        since, car, row = raw.split(b"\x1f", 2)
        out.append(Version(field.decode(), int(since), loads(row) if row else None, car.decode() or None))
    out.sort(key=lambda v: v.position)
    return out


def decode_trunc(raw: Any) -> Truncate | None:
    if not raw:
        return None
    pos, since = text(raw).split(US, 1)
    return Truncate(pos, int(since))


class FeedLine(NamedTuple):
    table: str
    pk: str  # empty: a truncate of the table
    car: str | None  # the car the new version points at (tables the car indexes)


def decode_feed(fields: dict[bytes, bytes]) -> list[FeedLine]:
    out = []
    for line in fields[FEED_FIELD].decode().split("\n"):
        table, pk, car = line.split("\t", 2)
        out.append(FeedLine(table, pk, car or None))
    return out


def score_arg(score: float) -> str:
    return "+inf" if score == float("inf") else f"{score:.0f}"
