"""Joins as of event time: the rows of a device's join as they were at any moment, resolved in O(log n).

The snapshot keeps recent **versions** of every row (``Version``: source position, the time it became
valid, the row or None for a delete), in source-position order. ``build_timeline`` turns the versions a
lookup gathered for one device (its own, its cars', the cars' other devices', the cars' children's) into a
``Timeline``: the merged record (``Merged``) of every stretch of time over which the join's answer is
the same. An event at ``t`` joins ``timeline.at(t)`` — a bisection over a handful of start times, no I/O.

Which version is valid at ``t`` (``at``): the newest whose ``since <= t``. ``since`` is the source commit
time, made non-decreasing along positions, so position order (stronger than time order) decides between
changes of one moment. A row's first version from an initial load (Debezium ``r``, DMS ``load``) is
valid since the beginning of time: a snapshot load says "this row exists", not "this row was created
now". A truncate ends every version at or before its position from its own time on.

Rules of the join at ``t``:

* the **device** and its **car** are the versions valid at ``t``; where ``t`` precedes a row's first
  version, that first version answers (a device that reports exists, even if its row's commit time is a
  little later than the device's clock);
* a **child** (reservation, ...) is strict: only a version valid at ``t`` that points at the car and is
  chosen at ``t`` (``enrich.tables.Choice``); of several, the one changed last;
* ``devices``: how many devices point at the car at ``t`` (the device itself and its siblings).

Answers are exact while the versions involved are kept: for event times within the snapshot's history
horizon and the newest ``max_versions`` versions of a row (``ENRICH_SNAPSHOT_HORIZON_S``,
``ENRICH_SNAPSHOT_MAX_VERSIONS``); older times get the oldest kept version.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from enrich.tables import JoinModel

Row = dict[str, Any]
BEGINNING = -(2**62)  # the start of the first stretch of every timeline


class Version(NamedTuple):
    position: str
    since: int  # valid from (epoch ms); non-decreasing along positions
    row: Row | None  # None: deleted
    parent: str | None  # the row's reference to its car, as text (tables the car indexes), else None


History = list[Version]  # one row's versions, oldest first


class Truncate(NamedTuple):
    position: str
    since: int


def at(history: History, t: int, trunc: Truncate | None = None, *, fallback: bool = False) -> Version | None:
    """The version of a row valid at ``t`` (None: none yet, or truncated away at ``t``). With
    ``fallback``, a ``t`` before the first version gets the first version."""
    if not history:
        return None
    if len(history) == 1:
        v = history[0]
        if v.since > t and not fallback:
            return None
    else:
        i = bisect_right([h.since for h in history], t) - 1
        if i < 0:
            if not fallback:
                return None
            i = 0
        v = history[i]
    if trunc is not None and v.position <= trunc.position and t >= trunc.since:
        return None
    return v


class Merged:
    """The join of one device at one moment: a row per role (None where missing), the source position of
    each, and how many devices its car has then.

    Immutable by contract (cached and shared between events); ``cache`` holds what consumers derive from it
    once (e.g. the encoded rows spliced into every enriched event)."""

    __slots__ = ("cache", "devices", "positions", "rows")

    def __init__(
        self, rows: dict[str, Row | None], positions: dict[str, str | None], devices: int = 0
    ) -> None:
        self.rows = rows
        self.positions = positions
        self.devices = devices
        self.cache: Any = None

    def get(self, role: str) -> Row | None:
        return self.rows.get(role)

    @property
    def multi(self) -> bool:
        """The car has more than one device (their events must be merged in event-time order)."""
        return self.devices > 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Merged) and (self.rows, self.positions, self.devices) == (
            other.rows, other.positions, other.devices)  # fmt: skip

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Merged({self.rows!r}, {self.positions!r}, devices={self.devices})"


class Timeline:
    """A device's join over time: ``segments[i]`` holds from ``starts[i]`` until ``starts[i + 1]``."""

    __slots__ = ("segments", "single", "starts")

    def __init__(self, starts: Sequence[int], segments: Sequence[Merged]) -> None:
        # one stretch (the common case): just ``single``; tuples otherwise (ints only: untracked by the GC)
        self.single: Merged | None = segments[0] if len(segments) == 1 else None
        self.starts = tuple(starts) if self.single is None else (BEGINNING,)
        self.segments = tuple(segments) if self.single is None else ()

    def at(self, t: int) -> Merged:
        single = self.single
        if single is not None:
            return single
        i = bisect_right(self.starts, t) - 1
        return self.segments[i if i > 0 else 0]

    @property
    def latest(self) -> Merged:
        return self.single if self.single is not None else self.segments[-1]

    def __repr__(self) -> str:
        if self.single is not None:
            return f"Timeline({self.single!r})"
        return f"Timeline({list(zip(self.starts, self.segments, strict=True))!r})"


@dataclass(slots=True)
class Gathered:
    """What a lookup read for one device: its versions, and per car it pointed at (within the kept
    history): the car's versions, its devices' and its children's (role → child key → versions)."""

    root: History = field(default_factory=list)
    cars: dict[str, History] = field(default_factory=dict)
    devices: dict[str, dict[str, History]] = field(default_factory=dict)
    children: dict[str, dict[str, dict[str, History]]] = field(default_factory=dict)
    truncs: dict[str, Truncate] = field(default_factory=dict)


def parents_of(history: Iterable[Version]) -> list[str]:
    """The cars a row's versions point at, oldest first, each once."""
    return list(dict.fromkeys(v.parent for v in history if v.parent is not None and v.row is not None))


def _breaks(model: JoinModel, g: Gathered) -> list[int]:
    times = {BEGINNING}
    times.update(v.since for v in g.root)
    for h in g.cars.values():
        times.update(v.since for v in h)
    for devs in g.devices.values():
        for h in devs.values():
            times.update(v.since for v in h)
    for car_children in g.children.values():
        for child in model.children:
            for h in car_children.get(child.name, {}).values():
                times.update(v.since for v in h)
                if child.choose.by == "interval":
                    for v in h:
                        if v.row is not None:
                            for bound in child.choose.bounds(v.row):
                                if bound is not None and math.isfinite(bound):
                                    times.add(math.ceil(bound))
    times.update(tr.since for tr in g.truncs.values())
    return sorted(times)


def build_timeline(model: JoinModel, root_pk: str, g: Gathered) -> Timeline:
    """The device's merged record for every stretch of time (see the module docstring for the rules)."""
    truncs = g.truncs
    t_dev, t_car = truncs.get(model.device), truncs.get(model.car)
    roles = model.roles
    starts: list[int] = []
    segments: list[Merged] = []
    last_key: tuple[Any, ...] | None = None
    for t in _breaks(model, g):
        dv = at(g.root, t, t_dev, fallback=True)
        if dv is None or dv.row is None:
            key: tuple[Any, ...] = (None,)
            if key != last_key:
                starts.append(t)
                segments.append(Merged(dict.fromkeys(roles), dict.fromkeys(roles), 0))
                last_key = key
            continue
        car_pk = dv.parent
        rows: dict[str, Row | None] = {"device": dv.row, "car": None}
        positions: dict[str, str | None] = {"device": dv.position, "car": None}
        devices = 1
        chosen: list[str | None] = []
        if car_pk is not None:
            cv = at(g.cars.get(car_pk, []), t, t_car, fallback=True)
            if cv is not None and cv.row is not None:
                rows["car"], positions["car"] = cv.row, cv.position
            for pk, h in g.devices.get(car_pk, {}).items():
                if pk != root_pk:
                    sv = at(h, t, t_dev)
                    if sv is not None and sv.row is not None and sv.parent == car_pk:
                        devices += 1
        car_children = g.children.get(car_pk, {}) if car_pk is not None else {}
        for child in model.children:
            best: Version | None = None
            trunc = truncs.get(child.table)
            for h in car_children.get(child.name, {}).values():
                v = at(h, t, trunc)
                if (
                    v is not None
                    and v.row is not None
                    and v.parent == car_pk
                    and (best is None or v.position > best.position)
                    and child.choose.holds(v.row, t)
                ):
                    best = v
            rows[child.name] = best.row if best is not None else None
            positions[child.name] = best.position if best is not None else None
            chosen.append(positions[child.name])
        key = (dv.position, car_pk, positions["car"], devices, *chosen)
        if key != last_key:
            starts.append(t)
            segments.append(Merged(rows, positions, devices))
            last_key = key
    return Timeline(starts, segments)
